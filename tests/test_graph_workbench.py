"""The workbench on a graph model, as a user drives it: train a resnet20 run on a
folder of images, then attribution, attacks and the report page from the command line."""
import json

import numpy as np
import pytest
from browser import headless_chromium
from PIL import Image
from test_report import TINY, _Page

from fastconv import cli
from fastconv.analysis.report import page as R

CLASSES = ("bars", "blobs", "rings")


def _image(kind, rng):
    """A 32x32 RGB image whose class shows in its shape, with noise and a random colour."""
    yy, xx = np.mgrid[:32, :32]
    if kind == "bars":
        mask = (xx // 4 + rng.integers(0, 2)) % 2 == 0
    elif kind == "blobs":
        cy, cx = rng.integers(8, 24, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
    else:
        r = np.hypot(yy - 16, xx - 16)
        mask = (r > 8) & (r < 12)
    colour = rng.integers(120, 256, 3)
    pixels = rng.integers(0, 60, (32, 32, 3)) + mask[..., None] * colour
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """'fastconv train --model resnet20' for one epoch on 90 images of three classes."""
    root = tmp_path_factory.mktemp("resnet")
    data = root / "images"
    rng = np.random.default_rng(0)
    for kind in CLASSES:
        (data / kind).mkdir(parents=True)
        for i in range(30):
            _image(kind, rng).save(data / kind / f"{i}.png")
    run = root / "run"
    status = cli.main(["train", "--dataset", f"folder:{data}", "--model", "resnet20", "--epochs", "1",
                       "--batch-size", "16", "--threads", "1", "--out", str(run)])
    assert status == 0
    return run


def test_the_run_is_a_resnet20_graph(resnet_run):
    architecture = json.loads((resnet_run / "config.json").read_text())
    assert architecture["model"] == "resnet20"
    import fastconv

    model = fastconv.load(resnet_run / "model.npz")
    assert isinstance(model, fastconv.Graph) and model.inputs("layer3.0.add") == ("layer3.0.bn2", "layer3.0.shortcut")


def test_attribution_and_attacks_from_the_command_line(resnet_run, tmp_path, capsys):
    figure = tmp_path / "gradcam.png"
    assert cli.main(["viz", "attribution", str(resnet_run), "--methods", "gradcam", "guided-backprop",
                     "--out", str(figure)]) == 0
    assert figure.stat().st_size > 0
    for method in ("fgsm", "pgd"):
        figure = tmp_path / f"{method}.png"
        assert cli.main(["attack", str(resnet_run), "--method", method, "--eps", "0.05", "--index", "0", "1",
                         "--threads", "1", "--out", str(figure)]) == 0
        record = json.loads(figure.with_suffix(".json").read_text())
        assert record["method"] == method
    capsys.readouterr()


@pytest.mark.slow
def test_the_report_of_a_resnet_run_loads_in_a_browser(resnet_run):
    report = R.write_report(resnet_run, resnet_run / "report.html", settings=TINY, progress=False)
    parsed = _Page(report.html)
    failed = [(s["id"], s["error"]) for s in parsed.sections if s["class"] == "failed"]
    assert failed == []
    driver = headless_chromium()
    try:
        driver.get(report.path.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    assert images and all(complete and width > 0 and height > 0 for complete, width, height in images)
    assert severe == []


def test_the_explorer_serves_a_resnet_run(resnet_run):
    pytest.importorskip("fastapi", reason="the explorer needs its extra (pip install 'fastconv[explore]')")
    from fastapi.testclient import TestClient

    import fastconv
    from fastconv.analysis.explore.explorer import Explorer
    from fastconv.analysis.explore.server import create_app

    explorer = Explorer(resnet_run, max_side=64, top_limit=30, feature_steps=2)
    try:
        with TestClient(create_app(explorer), base_url="http://127.0.0.1") as client:
            info = client.get("/api/info").json()
            names = [layer["name"] for layer in info["layers"]]
            assert "layer3.2" in names and "layer1.0.add" in names
            activations = client.get("/api/activations", params={"input": "test/0"})
            assert activations.status_code == 200
            model = fastconv.load(resnet_run / "model.npz")
            predicted = model.predict(explorer.model_input(explorer.picture("test/0"))).argmax()
            assert activations.json()["top5"][0]["class"] == predicted
            for path, params in (("/api/projection", {"input": "test/0", "layer": "layer3.2", "unit": 5,
                                                      "method": "guided-backprop"}),
                                 ("/api/attribution", {"input": "test/0", "method": "gradcam"})):
                response = client.get(path, params=params)
                assert response.status_code == 200 and response.content.startswith(b"\x89PNG"), path
    finally:
        explorer.close()
