"""``fastconv report RUN_DIR --out report.html [--quick]``: one HTML page about a trained run.

The page (:mod:`fastconv.analysis.report`) holds every figure as an
embedded image, so it can be opened anywhere without the run folder or a
network. The command exits with status 0 once the page is written, even if
some sections failed (they are marked in the page), and says how many did.
"""
from pathlib import Path

from fastconv.train.rundir import REPORT, RunDir


def add_parsers(commands):
    """Add the ``report`` command to an argparse ``subparsers`` object."""
    from fastconv.analysis.report.page import SECTIONS
    from fastconv.cli.argtypes import positive_int as _positive_int

    keys = [s.key for s in SECTIONS]
    p = commands.add_parser(
        "report", help="one self-contained HTML page looking inside a trained model",
        description="Run the analysis tools on a trained run (model summary, training curves, predictions, "
                    "confusion matrix, filters, activations, top images, clusters and t-SNE, occlusion, "
                    "saliency family, attribution sanity checks, class models, inversions, DeepDream, "
                    "adversarial examples and robustness) and write them into one HTML file with every image embedded. "
                    "A section that fails is marked in the page and the others still render.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'fastconv train' (or a model .npz file)")
    p.add_argument("--out", metavar="FILE.html", help=f"where to write the page (default RUN_DIR/{REPORT})")
    p.add_argument("--quick", action="store_true",
                   help="fewer images, fewer optimization steps and a smaller t-SNE sample "
                        "(the page 'fastconv demo' writes)")
    p.add_argument("--sections", nargs="+", choices=keys, metavar="NAME",
                   help=f"only these sections, of: {', '.join(keys)}")
    p.add_argument("--dataset", metavar="NAME",
                   help="data set of the images (default: the one in the model's metadata)")
    p.add_argument("--threads", type=_positive_int, metavar="N",
                   help="threads for the kernels and BLAS (default all cores)")
    p.set_defaults(handler=run)
    return p


def _default_out(run_dir):
    return RunDir.open(run_dir).report_path


def run(args):
    """Write the report the command line asks for; returns the exit status."""
    from fastconv.analysis.report.page import write_report

    if args.threads is not None:
        import fastconv

        fastconv.set_num_threads(args.threads)
    out = Path(args.out) if args.out else _default_out(args.run_dir)
    if args.dataset is not None:
        # A data set the model cannot take would fail every section that shows
        # images: say so once, before any work.
        RunDir.open(args.run_dir).load_dataset(args.dataset, subset=False)
    report = write_report(args.run_dir, out, quick=args.quick, sections=args.sections, dataset=args.dataset)
    _print_outcome(report)
    return 0


def _print_outcome(report):
    failures, skipped = report.failures, report.skipped
    print(f"wrote {report.path}: {len(report.results)} sections in {report.seconds:.0f} s, "
          f"{len(failures)} failed" + (f", {len(skipped)} with nothing to show" if skipped else ""), flush=True)
    for result in failures:
        print(f"  failed: {result.section.title}: {result.error}", flush=True)
    for result in skipped:
        print(f"  nothing to show: {result.section.title}: {result.skipped}", flush=True)


def write_demo_report(run_dir):
    """The quick report of a run written by ``fastconv demo``, in its folder."""
    from fastconv.analysis.report.page import write_report

    report = write_report(run_dir, RunDir(run_dir).report_path, quick=True)
    _print_outcome(report)
    return report
