"""fastconv report: the one-page HTML report of a trained run.

The page is checked as a browser sees it (every image decodes, no console
error) when Chromium and its driver are installed, and as text otherwise:
self-contained, every section present and opened by its sentence, failures
reported in place, numbers that agree with the trainer's own evaluation.
"""
import base64
import dataclasses
import importlib
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
import threadpoolctl
from browser import headless_chromium

import fastconv
from fastconv import cli
from fastconv.analysis.report import page as R
from fastconv.cli import limited
from fastconv.data import Normalize, load_dataset
from fastconv.models import mnist2
from fastconv.train import evaluate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The smallest budgets that still exercise every code path of every section.
TINY = dataclasses.replace(
    R.QUICK, images=2, activation_images=1, max_maps=8, top_units=1, top_k=4, search=150, codes=150,
    clusters=4, per_cluster=4, tsne=50, ig_steps=4, class_model_steps=4, inversion_steps=4, dream_size=40,
    dream_octaves=2, dream_steps=2, attack_images=30, attack_steps=2, eps=(0.0, 0.1, 0.3),
)
TEST_IMAGES = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread for the kernels, BLAS and scikit-learn's OpenMP (t-SNE, k-means),
    whose pool must be loaded before threadpoolctl can limit it."""
    for module in ("sklearn.cluster", "sklearn.manifold"):
        importlib.import_module(module)
    threads = fastconv.get_num_threads()
    fastconv.set_num_threads(1)
    with threadpoolctl.threadpool_limits(1):
        yield
    fastconv.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fit_briefly):
    """A run folder as 'fastconv train --dataset mnist-sample --limit 300' writes it,
    with a briefly trained mnist2."""
    folder = tmp_path_factory.mktemp("run")
    data = load_dataset("mnist-sample")
    keep = limited(len(data.y_train), 2000)
    x, y = data.x_train[keep], data.y_train[keep]
    normalize = Normalize.fit(x)
    model = fit_briefly(mnist2(seed=0), normalize(x), y, steps=40, lr=2e-3)
    model.meta.update({"model": "mnist2", "dataset": "mnist-sample", "classes": list(data.classes),
                       "input_shape": list(data.input_shape), "normalization": normalize.to_meta()})
    model.save(folder / "model.npz")
    config = {"dataset": "mnist-sample", "model": "mnist2", "epochs": 1, "batch_size": 32, "optimizer": "adam",
              "lr": 2e-3, "momentum": 0.0, "weight_decay": 0.0, "schedule": "none", "step_size": None,
              "augment": False, "val_fraction": 0.1, "seed": 0, "limit": TEST_IMAGES, "threads": 1,
              "data_dir": None}
    (folder / "config.json").write_text(json.dumps(config))
    history = [{"epoch": 1, "lr": 2e-3, "train_loss": 1.1, "train_accuracy": 0.7, "val_loss": 0.6,
                "val_accuracy": 0.82, "seconds": 3.0, "images_per_second": 400.0}]
    (folder / "history.json").write_text(json.dumps(history))
    return folder


@pytest.fixture(scope="module")
def page(run_dir):
    """The tiny report of the run, written to run_dir/report.html."""
    report = R.write_report(run_dir, run_dir / "report.html", settings=TINY, progress=False)
    return report


class _Page(HTMLParser):
    """Every tag with its attributes, and the text of each section's parts."""

    def __init__(self, text):
        super().__init__()
        self.tags = []
        self.sections = []
        self._field = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "section":
            self.sections.append({"id": attrs.get("id"), "class": attrs.get("class"), "h2": "", "intro": "",
                                  "error": "", "images": 0})
        elif self.sections and tag == "img":
            self.sections[-1]["images"] += 1
        if self.sections and (tag == "h2" or attrs.get("class") in ("intro", "error")):
            self._field = "h2" if tag == "h2" else attrs["class"]

    def handle_endtag(self, tag):
        if tag in ("h2", "p"):
            self._field = None

    def handle_data(self, data):
        if self._field:
            self.sections[-1][self._field] += data


def test_every_section_renders_with_its_opening_sentence(page):
    assert page.failures == [], [r.error for r in page.failures]
    parsed = _Page(page.html)
    assert [s["id"] for s in parsed.sections] == [f"section-{s.key}" for s in R.SECTIONS]
    for section, spec in zip(parsed.sections, R.SECTIONS):
        assert spec.title in section["h2"]
        intro = section["intro"].strip()
        assert intro == spec.intro and intro.endswith(".") and intro.count(". ") == 0, intro
        if spec.key != "summary":
            assert section["images"] >= 1, spec.key


def test_page_is_self_contained(page):
    parsed = _Page(page.html)
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) >= 13
    for attrs in images:
        kind, _, data = attrs["src"].partition(",")
        assert kind == "data:image/png;base64"
        assert base64.b64decode(data, validate=True).startswith(PNG_SIGNATURE)
        assert attrs.get("alt")
    for tag, attrs in parsed.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for name in ("src", "href", "action", "poster", "srcset"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "ftp:")), (tag, name, value[:80])
        assert "url(" not in (attrs.get("style") or "")
    assert "@import" not in page.html and "url(" not in page.html


def test_numbers_agree_with_the_trainers_evaluation(page, run_dir):
    """The report shows the run on the test images its evaluation used (the --limit subset)."""
    model = fastconv.load(run_dir / "model.npz")
    data = load_dataset("mnist-sample")
    keep = limited(len(data.y_test), TEST_IMAGES)
    result = evaluate(model, data.x_test[keep], data.y_test[keep],
                      Normalize.from_meta(model.meta["normalization"]))
    assert f"Accuracy on all {TEST_IMAGES:,} test images: {result['accuracy']:.2%}." in page.html
    assert f"{model.num_parameters():,}" in page.html


class _Tables(HTMLParser):
    """The rows of every table (header row included) of one section of the page."""

    def __init__(self, text, key):
        super().__init__()
        self.section = f"section-{key}"
        self.tables = []
        self._inside = False
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "section":
            self._inside = dict(attrs).get("id") == self.section
        elif self._inside and tag == "table":
            self.tables.append([])
        elif self._inside and tag == "tr":
            self.tables[-1].append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if self._inside and tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_sanity_section_shows_what_the_metrics_compute(page, run_dir):
    """The table holds the rank correlations and AUCs that metrics computes
    directly for the same images (the report's chosen test images, true classes),
    and the gradient passes the randomization test on the trained model."""
    from fastconv.analysis import attribution as fa
    from fastconv.analysis.attribution import metrics

    (table,) = _Tables(page.html, "sanity").tables
    header, *rows = table
    assert header == ["method", "rank correlation, top layer random", "all layers random", "deletion AUC",
                      "insertion AUC"]
    shown = {row[0]: row[1:] for row in rows}
    assert list(shown) == [*TINY.sanity_methods, "random"]
    run = R.Run(run_dir)
    _, x, labels = run.chosen(TINY.sanity_images)
    targets = labels.tolist()
    assert len(x) == TINY.sanity_images == 8
    model = run.model
    layer = fa.methods.default_gradcam_layer(model)
    builders = {"gradient": fa.Gradient, "guided-backprop": fa.GuidedBackprop,
                "gradcam": lambda m: fa.GradCAM(m, layer)}
    maps = {name: build(model).attribute(x, targets) for name, build in builders.items()}
    maps["random"] = np.random.default_rng(0).normal(size=x.shape).astype(x.dtype)
    means = {}
    for name, values in shown.items():
        deletion = metrics.perturbation_curve(model, x, targets, maps[name], "deletion").auc.mean()
        insertion = metrics.perturbation_curve(model, x, targets, maps[name], "insertion").auc.mean()
        assert values[2:] == [f"{deletion:.3f}", f"{insertion:.3f}"], name
        if name == "random":
            assert values[:2] == ["", ""]
            continue
        check = metrics.cascading_randomization(model, builders[name], x, targets, seed=0)
        assert values[:2] == [f"{check.mean[0]:.3f}", f"{check.mean[-1]:.3f}"], name
        means[name] = check.mean
    # The gradient's maps lose their rank order as the layers go random, more with
    # every layer than with the top one alone; guided backprop keeps far more of its
    # own once the top layer is random (Adebayo et al.).
    assert means["gradient"][-1] < means["gradient"][0] < 0.9
    assert means["guided-backprop"][0] > means["gradient"][0] + 0.2
    sanity = next(s for s in _Page(page.html).sections if s["id"] == "section-sanity")
    assert sanity["images"] == 1


def test_sanity_section_can_be_left_empty_or_fail_on_an_unknown_method(run_dir):
    settings = dataclasses.replace(TINY, sanity_images=0)
    report = R.build_report(run_dir, settings=settings, sections=["sanity"], progress=False)
    assert report.failures == [] and "0 images" in report.skipped[0].skipped
    settings = dataclasses.replace(TINY, sanity_methods=("gradient", "nope"))
    report = R.build_report(run_dir, settings=settings, sections=["sanity"], progress=False)
    assert "unknown attribution method 'nope'" in report.failures[0].error


def test_examples_cover_different_classes_first(run_dir):
    run = R.Run(run_dir)
    raw, x, labels = run.chosen(6)
    assert len(set(labels.tolist())) == 6
    np.testing.assert_allclose(x, run.normalize(raw))


def _failing(run, settings, scratch):
    raise RuntimeError("the tool broke <badly> & loudly")


def test_a_failing_section_is_reported_and_the_rest_renders(run_dir, monkeypatch):
    broken = R.Section("broken", "A broken section", "A section whose tool raises.", _failing)
    summary, training = R.SECTIONS[:2]
    monkeypatch.setattr(R, "SECTIONS", [summary, broken, training])
    report = R.build_report(run_dir, settings=TINY, progress=False)
    assert [r.section.key for r in report.failures] == ["broken"]
    assert report.failures[0].error == "RuntimeError: the tool broke <badly> & loudly"
    parsed = _Page(report.html)
    first, failed, last = parsed.sections
    assert failed["class"] == "failed" and first["class"] is None and last["class"] is None
    assert "RuntimeError: the tool broke <badly> & loudly" in failed["error"]
    assert "the tool broke &lt;badly&gt; &amp; loudly" in report.html  # escaped, not markup
    assert failed["images"] == 0 and last["images"] == 1
    assert "1 failed" in report.html and "(failed)" in report.html


def test_command_exits_0_and_counts_the_failed_sections(run_dir, tmp_path, capsys, monkeypatch):
    """A section that raises is counted and named; a run without history.json
    has training curves with nothing to show, which is not a failure; the page
    is still written."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("model.npz", "config.json"):
        shutil.copy(run_dir / name, partial / name)
    broken = R.Section("broken", "A broken section", "A section whose tool raises.", _failing)
    monkeypatch.setattr(R, "SECTIONS", [*R.SECTIONS, broken])
    out = tmp_path / "out" / "page.html"
    status = cli.main(["report", str(partial), "--out", str(out), "--sections", "summary", "training",
                       "confusion", "broken", "--threads", "1"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"wrote {out}: 4 sections" in captured.out and ", 1 failed, 1 with nothing to show" in captured.out
    assert "failed: A broken section: RuntimeError" in captured.out
    assert "nothing to show: Training curves: model.npz has no training history (history.json)" in captured.out
    sections = _Page(out.read_text()).sections
    assert [s["class"] for s in sections] == [None, None, None, "failed"]


@pytest.mark.parametrize("make, words", [
    (lambda tmp: tmp / "missing", ["no run folder or model file", "missing"]),
    (lambda tmp: tmp, ["holds no model.npz"]),
    (lambda tmp: _write(tmp / "model.npz", b"not a model"), ["model.npz", "not a readable fastconv model"]),
])
def test_bad_run_dir_gives_a_one_line_error(tmp_path, capsys, make, words):
    target = make(tmp_path)
    status = cli.main(["report", str(target), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("fastconv report: error: ")
    for word in words:
        assert word in err, err
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(ValueError):
        R.build_report(target)


def _write(path, data):
    path.write_bytes(data)
    return path


def test_bad_arguments_are_rejected(run_dir):
    with pytest.raises(ValueError, match="unknown report section.*'nope'.*'summary'"):
        R.build_report(run_dir, sections=["nope"])
    with pytest.raises(TypeError, match="ReportSettings"):
        R.build_report(run_dir, settings={"images": 2})
    with pytest.raises(ValueError, match="is a folder"):
        R.write_report(run_dir, run_dir, settings=TINY)


# ---------------------------------------------------------------- in a real browser


def test_page_loads_in_a_browser(page, tmp_path):
    driver = headless_chromium()
    try:
        driver.get(page.path.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        assert len(images) == page.html.count("<img ")
        assert all(complete and width > 0 and height > 0 for complete, width, height in images), images
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        height = driver.execute_script("return document.documentElement.scrollHeight")
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": 1280, "height": min(height, 16000), "scale": 0.5}})
    finally:
        driver.quit()
    path = tmp_path / "report-screenshot.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    print(f"screenshot of the report: {path}")


# ---------------------------------------------------------------- full size


@pytest.mark.slow
def test_quick_report_of_a_trained_run(tmp_path, capsys):
    """As a user runs it: train briefly, then 'fastconv report --quick'; every section renders."""
    run = tmp_path / "run"
    status = cli.main(["train", "--dataset", "mnist-sample", "--limit", "2000", "--epochs", "1", "--threads", "1",
                       "--out", str(run)])
    assert status == 0, capsys.readouterr().err
    status = cli.main(["report", str(run), "--quick", "--out", str(tmp_path / "report.html"), "--threads", "1"])
    out = capsys.readouterr().out
    assert status == 0 and f"{len(R.SECTIONS)} sections" in out and ", 0 failed" in out, out
    parsed = _Page((tmp_path / "report.html").read_text())
    assert [s["class"] for s in parsed.sections] == [None] * len(R.SECTIONS)


@pytest.mark.slow
def test_demo_ends_with_its_report(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    status = cli.main(["demo", "--out", str(out_dir), "--epochs", "1", "--limit", "300", "--threads", "1"])
    out = capsys.readouterr().out
    assert status == 0
    assert f"wrote {out_dir / 'report.html'}: {len(R.SECTIONS)} sections" in out and ", 0 failed" in out
    assert out.strip().splitlines()[-1].startswith("accuracy: ")
    status = cli.main(["demo", "--out", str(out_dir), "--epochs", "1", "--limit", "300", "--threads", "1",
                       "--no-report", "--force"])
    assert status == 0 and "report.html" not in capsys.readouterr().out
    assert not (out_dir / "report.html").exists(), "the page of the replaced model is not kept beside the new one"


def test_a_model_saved_from_python_gets_a_report(tmp_path, capsys):
    """No history, no metadata: the training section says why it has nothing to
    show, the class models take the side the layers fix, the title names the
    model file and the data set."""
    folder = tmp_path / "mine"
    folder.mkdir()
    mnist2(seed=1).save(folder / "model.npz")
    out = tmp_path / "page.html"
    status = cli.main(["report", str(folder / "model.npz"), "--quick", "--dataset", "mnist-sample", "--out",
                       str(out), "--sections", "summary", "training", "class-models", "--threads", "1"])
    printed = capsys.readouterr().out
    assert status == 0
    assert "0 failed, 1 with nothing to show" in printed
    assert "nothing to show: Training curves: model.npz has no training history" in printed
    text = out.read_text()
    assert "<h1>model.npz on mnist-sample</h1>" in text and "class=failed" not in text


@pytest.mark.parametrize("build, side", [(mnist2, 28), (fastconv.models.cifar6, 32)])
def test_class_models_find_the_side_the_layers_fix(build, side):
    from fastconv.analysis.optimize.methods import input_shape

    model = build(seed=0)
    model.meta.pop("input_shape", None)
    assert input_shape(model)[1:] == (side, side)


def test_a_model_that_takes_any_size_asks_for_one():
    from fastconv.analysis.optimize.methods import input_shape
    from fastconv.nn import layers as L

    model = fastconv.Sequential([L.Conv2d(1, 4, 3), L.ReLU(), L.GlobalAvgPool2d(), L.Linear(4, 3)])
    with pytest.raises(ValueError, match="pass size"):
        input_shape(model)
    assert input_shape(model, size=20) == (1, 20, 20)
