"""``fastconv bench``: fastconv's speed on this machine next to its NumPy backend,
PyTorch and, for inference, ONNX Runtime and OpenVINO when installed
(:mod:`fastconv.bench`; benchmarks/README.md explains the columns)."""
from fastconv.cli.argtypes import positive_int as _positive_int

__all__ = ["add_parsers", "cmd_bench"]


def cmd_bench(args):
    import sys

    from fastconv import bench

    # The table comes at the end; say what is happening until then (the
    # progress bar shows only on a terminal).
    print(f"fastconv bench: timing fastconv against its NumPy backend and PyTorch, "
          f"{'every layer shape' if args.full else 'the quick selection'}; the table follows when done",
          file=sys.stderr, flush=True)
    bench.run(threads=args.threads, batch_size=args.batch_size, quick=not args.full)
    return 0


def add_parsers(commands):
    """Add ``bench`` to fastconv's argparse sub-commands."""
    bench = commands.add_parser(
        "bench", help="time the kernels and the seeds' nets against the NumPy backend and PyTorch",
        description="Print fastconv's speed on this machine next to its NumPy backend and, when "
                    "installed, PyTorch, ONNX Runtime and OpenVINO (inference; the bench extra),"
                    " measured in the same run (under a minute; --full for every "
                    "layer shape, a few minutes). benchmarks/README.md explains the columns.")
    bench.add_argument("--threads", type=_positive_int, help="threads (default all cores)")
    bench.add_argument("--batch-size", type=_positive_int, default=128, help="batch size (default 128)")
    bench.add_argument("--full", action="store_true", help="every layer shape and more repeats")
    bench.set_defaults(handler=cmd_bench)
    return bench
