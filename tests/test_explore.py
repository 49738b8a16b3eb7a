"""fastconv explore: the live explorer's API, its refusals and its page.

Every endpoint is called through Starlette's test client and its answer
compared with the analysis tool it stands for, called directly on the same
model (the model's own forward pass, ``top_images``, ``Deconvnet``,
``Saliency``, ``Occlusion``, ``feature_visualization``, ``PGD``): the
server may only move numbers, never change them. Uploads that are not
images, too large or decompression bombs get a 4xx and one sentence; no
request reads a file outside the page's own; two users do not see each
other's images. The page itself is driven in headless Chromium (Selenium,
with Chromium's fake camera for the live mode), which also takes the
screenshots of docs/explore.md.
"""
import base64
import importlib.util
import io
import json
import shutil
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from browser import headless_chromium
from PIL import Image

import fastconv
from fastconv import cli
from fastconv.analysis import _common as C
from fastconv.analysis.explore import Explorer
from fastconv.analysis.explore import images as I
from fastconv.cli import limited
from fastconv.cli.argtypes import MAX_IMAGE_SIDE
from fastconv.data import Normalize, load_dataset
from fastconv.data.transforms import resize_and_crop
from fastconv.models import mnist2
from fastconv.nn.losses import softmax
from fastconv.train.rundir import RunDir

# One kernel and BLAS thread: the server's threads and the background jobs share the cores.
pytestmark = pytest.mark.usefixtures("one_thread_per_module", "explore_extra")

ROOT = Path(__file__).resolve().parent.parent
IMAGES = 300
FEATURE_STEPS = 6
SECRET = "do-not-serve-7f3a"
LOCAL = "http://127.0.0.1"


@pytest.fixture(scope="module")
def explore_extra():
    """The server's packages, or a skip naming them (a failure in CI, which installs them)."""
    pytest.importorskip("fastapi", reason="the explorer needs its extra (pip install 'fastconv[explore]')")
    pytest.importorskip("uvicorn", reason="the explorer needs its extra (pip install 'fastconv[explore]')")
    if importlib.util.find_spec("httpx2") is None and importlib.util.find_spec("httpx") is None:
        pytest.skip("the explorer's API tests use Starlette's test client, which needs httpx2 (or httpx)")


def _app(explorer):
    from fastconv.analysis.explore.server import create_app

    return create_app(explorer)


def _client(app, **options):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url=LOCAL, **options)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fit_briefly):
    """A run folder as 'fastconv train --dataset mnist-sample --limit 300' writes it,
    with a briefly trained mnist2, and a secret file beside it and inside it."""
    root = tmp_path_factory.mktemp("explore")
    folder = root / "run"
    folder.mkdir()
    data = load_dataset("mnist-sample")
    keep = limited(len(data.y_train), 2000)
    x, y = data.x_train[keep], data.y_train[keep]
    normalize = Normalize.fit(x)
    model = fit_briefly(mnist2(seed=0), normalize(x), y, steps=40, lr=2e-3)
    model.meta.update({"model": "mnist2", "dataset": "mnist-sample", "classes": list(data.classes),
                       "input_shape": list(data.input_shape), "normalization": normalize.to_meta()})
    model.save(folder / "model.npz")
    (folder / "config.json").write_text(json.dumps({"dataset": "mnist-sample", "model": "mnist2", "limit": IMAGES,
                                                    "secret": SECRET}))
    (root / "secret.txt").write_text(SECRET)
    return folder


def _wait(job, seconds=60):
    deadline = time.monotonic() + seconds
    while job.state not in ("done", "failed"):
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.02)
    assert job.state == "done", job.error
    return job


@pytest.fixture(scope="module")
def explorer(run_dir):
    explorer = Explorer(run_dir, max_side=MAX_IMAGE_SIDE, top_limit=IMAGES, feature_steps=FEATURE_STEPS)
    _wait(explorer.index_job())
    yield explorer
    explorer.close()


@pytest.fixture(scope="module")
def client(explorer):
    with _client(_app(explorer)) as client:
        yield client


@pytest.fixture(scope="module")
def model(run_dir):
    return fastconv.load(run_dir / "model.npz")


@pytest.fixture(scope="module")
def data(explorer):
    return explorer.data


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _decoded(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _outputs(model, x):
    names = [name for name, layer in model.named_layers() if type(layer).__name__ not in ("Flatten", "Dropout")]
    with C.evaluating(model):
        out, outputs = C.forward_with_outputs(model, x, names)
    return names, softmax(out.astype(np.float64), axis=1)[0], outputs


# ---------------------------------------------------------------- the API, against the tools


def test_info_lists_the_layers_the_model_has(client, model):
    info = client.get("/api/info").json()
    names = [name for name, layer in model.named_layers() if type(layer).__name__ != "Flatten"]
    assert [layer["name"] for layer in info["layers"]] == names
    shape = (1, 1, 28, 28)
    shapes = {}
    for name, layer in model.named_layers():
        shape = layer.output_shape(shape)
        shapes[name] = list(shape[1:])
    assert all(layer["shape"] == shapes[layer["name"]] for layer in info["layers"])
    assert info["classes"] == [str(d) for d in range(10)] and info["input_shape"] == [1, 28, 28]
    assert info["splits"] == {"test": IMAGES, "train": IMAGES} and info["dataset"] == "mnist-sample"


def test_activations_are_the_models_outputs(client, model, data):
    answer = client.get("/api/activations", params={"input": "test/3"}).json()
    names, probabilities, outputs = _outputs(model, model.preprocess(data.x_test[3:4]))
    assert answer["input"] == "test/3" and answer["label"] == int(data.y_test[3])
    order = np.argsort(-probabilities)[:5]
    assert [p["class"] for p in answer["top5"]] == order.tolist()
    np.testing.assert_allclose([p["probability"] for p in answer["top5"]], probabilities[order], atol=1e-5)
    assert [layer["name"] for layer in answer["layers"]] == names
    for layer in answer["layers"]:
        value = outputs[layer["name"]][0].astype(np.float64)
        if layer["kind"] == "vector":
            np.testing.assert_allclose(layer["values"], value, atol=1e-4)
            continue
        np.testing.assert_allclose(layer["max"], value.max(axis=(1, 2)), atol=1e-4)
        np.testing.assert_allclose(layer["mean"], value.mean(axis=(1, 2)), atol=1e-4)
        shown = np.frombuffer(base64.b64decode(layer["bytes"]), np.uint8).reshape(value.shape)
        expected = np.clip(value / max(value.max(), 1e-30) * 255, 0, 255)
        assert np.abs(shown - expected).max() <= 0.51, layer["name"]


def test_images_come_back_as_they_are_in_the_data_set(client, data):
    np.testing.assert_array_equal(_decoded(client.get("/api/image", params={"input": "train/7"})), data.x_train[7, 0])
    crop = _decoded(client.get("/api/image", params={"input": "test/2", "box": "3,4,20,11"}))
    np.testing.assert_array_equal(crop, data.x_test[2, 0, 3:20, 4:11])


def test_browsing_by_class_random_and_misclassified(client, model, data):
    page = client.get("/api/images", params={"split": "test", "label": 4, "count": 500}).json()
    assert page["total"] == int((data.y_test == 4).sum()) == len(page["images"])
    assert all(item["label"] == 4 for item in page["images"])
    first = client.get("/api/images", params={"order": "first", "count": 20}).json()["images"]
    assert [item["input"] for item in first] == [f"test/{i}" for i in range(20)]
    shuffled = [client.get("/api/images", params={"order": "random", "seed": s, "count": 20}).json()["images"]
                for s in (5, 5, 6)]
    assert shuffled[0] == shuffled[1] != shuffled[2] and shuffled[0] != first
    wrong = client.get("/api/images", params={"order": "misclassified", "count": 500}).json()
    predicted = model.classify(data.x_test)
    mistakes = np.flatnonzero(predicted != data.y_test)
    assert [item["input"] for item in wrong["images"]] == [f"test/{i}" for i in mistakes]
    assert all(item["predicted"] == predicted[int(item["input"][5:])] != item["label"] for item in wrong["images"])


def test_an_upload_is_fitted_to_the_model_and_classified(client, model):
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)
    answer = client.post("/api/inputs", content=_png(photo)).json()
    assert answer["input"].startswith("upload/") and answer["label"] is None
    expected = resize_and_crop(np.asarray(Image.fromarray(photo).convert("L")), size=28, resize=28)
    np.testing.assert_array_equal(_decoded(client.get("/api/image", params={"input": answer["input"]})), expected)
    probabilities = softmax(model.predict(model.preprocess(expected[None, None])).astype(np.float64), axis=1)[0]
    assert answer["top5"][0]["class"] == int(probabilities.argmax())
    np.testing.assert_allclose(answer["top5"][0]["probability"], probabilities.max(), atol=1e-4)


@pytest.mark.parametrize("method", ["deconvnet", "guided-backprop"])
def test_projections_are_the_attribution_tools(client, model, data, method):
    from fastconv.analysis.attribution.methods import Deconvnet, GuidedBackprop
    from fastconv.analysis.visualize.receptive_field import geometry

    tool = Deconvnet if method == "deconvnet" else GuidedBackprop
    x = model.preprocess(data.x_test[5:6])
    expected = I.projection_picture(tool(model, "conv2").attribute(x, 6)[0])
    params = {"input": "test/5", "layer": "conv2", "unit": 6, "method": method}
    np.testing.assert_array_equal(_decoded(client.get("/api/projection", params=params)), expected)
    plane = model.forward(x, until="conv2")[0, 6]
    i, j = np.unravel_index(int(plane.argmax()), plane.shape)
    top, left, bottom, right = geometry(model, "conv2").box(int(i), int(j), (28, 28))
    cropped = _decoded(client.get("/api/projection", params={**params, "crop": "true"}))
    np.testing.assert_array_equal(cropped, expected[top:bottom, left:right])
    neuron = _decoded(client.get("/api/projection", params={**params, "layer": "fc1", "unit": 3}))
    np.testing.assert_array_equal(neuron, I.projection_picture(tool(model, "fc1").attribute(x, 3)[0]))


@pytest.mark.parametrize("layer, unit", [("conv1", 5), ("pool2", 17), ("fc1", 42), ("fc2", 3)])
def test_top_images_are_those_top_images_finds(client, model, data, layer, unit):
    from fastconv.analysis.visualize.units import top_images

    answer = client.get("/api/top-images", params={"layer": layer, "unit": unit}).json()
    expected = top_images(model, data.x_train, layer, unit, k=9)
    assert answer["status"]["state"] == "done" and answer["searched"] == IMAGES
    assert [item["input"] for item in answer["images"]] == [f"train/{i}" for i in expected.indices]
    np.testing.assert_allclose([item["value"] for item in answer["images"]], expected.values, atol=1e-4)
    assert [item["box"] for item in answer["images"]] == expected.boxes.tolist()
    assert [item["label"] for item in answer["images"]] == data.y_train[expected.indices].tolist()


def test_the_index_is_kept_in_the_run_folder_for_this_model_only(explorer, run_dir, tmp_path):
    kept = RunDir(run_dir).explore_cache / f"{explorer._index_key}.npz"
    assert kept.is_file()
    again = Explorer(run_dir, max_side=MAX_IMAGE_SIDE, top_limit=IMAGES, feature_steps=FEATURE_STEPS)
    try:
        job = _wait(again.index_job())
        assert job.done == IMAGES and again._index_key == explorer._index_key
        first, second = explorer.top_images("conv2", 3), again.top_images("conv2", 3)
        assert first["images"] == second["images"]
    finally:
        again.close()
    # Another model in a copy of the folder (its cache included) gets an index of its own.
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    model = fastconv.load(other / "model.npz")
    model.layer("fc2").params["bias"][0] += 1.0
    model.save(other / "model.npz")
    third = Explorer(other, max_side=MAX_IMAGE_SIDE, top_limit=IMAGES)
    try:
        _wait(third.index_job())
    finally:
        third.close()
    assert third._index_key != explorer._index_key
    assert (RunDir(other).explore_cache / f"{third._index_key}.npz").is_file()


def test_stopping_the_server_ends_a_running_job(explorer):
    from fastconv.analysis.explore.jobs import Jobs

    jobs = Jobs()
    started = threading.Event()

    def endless(job):
        started.set()
        for step in range(10**9):
            job.progress(step, 10**9)
            time.sleep(0.001)

    job = jobs.submit("endless", "a job that never ends", endless)
    assert started.wait(10)
    jobs.shutdown(wait=True)
    assert job.state == "failed" and "the server stopped" in job.error


def test_feature_visualization_runs_in_the_background_and_is_kept(client, explorer, model):
    from fastconv.analysis.optimize.methods import feature_visualization

    params = {"layer": "conv2", "unit": 9}
    assert client.get("/api/feature-vis.png", params=params).status_code in (200, 404)
    answer = client.get("/api/feature-vis", params=params).json()
    job = _wait(explorer.jobs.get(answer["status"]["key"]))
    assert job.done == job.total == FEATURE_STEPS
    answer = client.get("/api/feature-vis", params=params).json()
    assert answer["status"]["state"] == "done" and answer["url"]
    shown = _decoded(client.get(answer["url"]))
    expected = feature_visualization(model, "conv2", 9, steps=FEATURE_STEPS, seed=0, init="noise", lr=0.05,
                                     jitter=1, blur_every=4, blur_sigma=0.5, progress=False)
    np.testing.assert_array_equal(shown, I.to_display(expected.image))
    kept = list(explorer.cache_dir.glob("feature-*.png"))
    assert len(kept) == 1 and kept[0].read_bytes() == client.get(answer["url"]).content


def test_attributions_are_the_attribution_tools(client, model, data):
    from fastconv.analysis.attribution.methods import Saliency, channel_max
    from fastconv.analysis.attribution.occlusion import Occlusion

    x = model.preprocess(data.x_test[1:2])
    saliency = _decoded(client.get("/api/attribution", params={"input": "test/1", "method": "saliency", "target": 7}))
    np.testing.assert_array_equal(saliency, I.heat_map(channel_max(Saliency(model).attribute(x, 7))[0]))
    occlusion = _decoded(client.get("/api/attribution", params={"input": "test/1", "method": "occlusion", "target": 2}))
    drop = Occlusion(model).attribute(x, 2, patch=7, stride=1, fill=0.0)
    np.testing.assert_array_equal(occlusion, I.signed_map(drop[0, 0]))
    for method in ("gradcam", "integrated-gradients"):
        one, other = (_decoded(client.get("/api/attribution", params={"input": "test/1", "method": method,
                                                                      "target": t})) for t in (1, 8))
        assert one.shape == other.shape == (28, 28, 3) and not np.array_equal(one, other)
    predicted = int(model.predict(x).argmax())
    default = client.get("/api/attribution", params={"input": "test/1", "method": "saliency"}).content
    assert default == client.get("/api/attribution", params={"input": "test/1", "method": "saliency",
                                                             "target": predicted}).content


def test_an_adversarial_example_is_pgds_and_can_be_explored(client, model, data):
    from fastconv.analysis.attacks.methods import PGD

    answer = client.post("/api/adversarial", params={"input": "test/0", "eps": 0.3, "target": 3}).json()
    pixels = (data.x_test[0:1].astype(np.float32) / 255).astype(np.float32)
    expected = PGD(model, eps=0.3, steps=10, seed=0)(pixels, target=3)
    assert answer["succeeded"] == (int(model.predict(model.preprocess(expected)).argmax()) == 3)
    assert answer["linf"] <= 0.3 + 1e-6 and answer["top5"][0]["class"] == 3 and answer["succeeded"]
    stored = _decoded(client.get("/api/image", params={"input": answer["input"]}))
    np.testing.assert_array_equal(stored, I.to_display(expected[0]))
    again = client.get("/api/activations", params={"input": answer["input"]}).json()
    assert again["top5"] == answer["top5"]
    picture = base64.b64decode(answer["perturbation"].partition(",")[2])
    assert np.asarray(Image.open(io.BytesIO(picture))).shape == (28, 28)


# ---------------------------------------------------------------- refusals


def _png_chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _grey_png(width, height, rows=None):
    """A greyscale PNG of zeros, compressed as far as zlib goes; ``rows`` of them only (a truncated file)."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = zlib.compress(b"\0" * ((width + 1) * (height if rows is None else rows)), 9)
    return b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


BAD_UPLOADS = {
    "empty": (b"", 400, "empty"),
    "one byte": (b"x", 415, "not an image"),
    "text": (b"fastconv is not a picture\n" * 40, 415, "not an image"),
    "truncated": (_png(np.random.default_rng(0).integers(0, 256, (40, 40), dtype=np.uint8))[:800], 400,
                  "damaged or truncated"),
    # 7072 x 7072 = 50 megapixels, a 50 kB file.
    "50 megapixels": (_grey_png(7072, 7072), 413, "largest side accepted"),
    # 10^10 pixels declared in 100 bytes: Pillow's own bomb check refuses it first.
    "bomb": (_grey_png(100_000, 100_000, rows=1), 413, "too large"),
    "too many bytes": (b"\x89PNG" + bytes(9 << 20), 413, "largest accepted"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_a_bad_upload_gets_a_4xx_and_a_sentence(client, name):
    data, status, words = BAD_UPLOADS[name]
    response = client.post("/api/inputs", content=data)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert words in message and "\n" not in message and "Traceback" not in message
    assert client.get("/api/info").status_code == 200


@pytest.mark.parametrize("path, params, status", [
    ("/api/activations", {"input": "test/300"}, 404),
    ("/api/activations", {"input": "upload/" + "0" * 32}, 404),
    ("/api/activations", {"input": "valid/1"}, 400),
    ("/api/projection", {"input": "test/1", "layer": "conv9", "unit": 0}, 400),
    ("/api/projection", {"input": "test/1", "layer": "conv2", "unit": 32}, 400),
    ("/api/projection", {"input": "test/1", "layer": "conv2", "unit": -1}, 422),
    ("/api/projection", {"input": "test/1", "layer": "conv2", "unit": 1, "method": "lrp"}, 400),
    ("/api/attribution", {"input": "test/1", "method": "saliency", "target": 10}, 400),
    ("/api/images", {"order": "best"}, 400),
    ("/api/images", {"split": "val"}, 400),
    ("/api/image", {"input": "test/1", "box": "0,0,29,5"}, 400),
    ("/api/image", {"input": "test/1", "box": "a,b"}, 400),
    ("/api/top-images", {"layer": "fc2", "unit": 10}, 400),
])
def test_bad_parameters_are_named_in_the_error(client, path, params, status):
    response = client.get(path, params=params)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert message and "Traceback" not in message
    assert client.post("/api/adversarial", params={"input": "test/1", "eps": 1.5}).status_code == 422


TRAVERSALS = [
    "/static/../config.json", "/static/..%2f..%2fconfig.json", "/static/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/static/..%2F..%2F..%2F..%2Fsecret.txt", "/static//etc/passwd", "/static/%2Fetc%2Fpasswd",
    "/..%2F..%2Fsecret.txt", "//etc/passwd", "/api/image?input=../config.json",
    "/api/image?input=test/1/../../../secret.txt", "/api/image?input=upload/..%2F..%2Fsecret.txt",
    "/api/image?input=%2Fetc%2Fpasswd", "/api/feature-vis.png?layer=../../config&unit=0",
    "/api/top-images?layer=..%2Fsecret.txt&unit=0", "/api/feature-vis?layer=../model.npz&unit=0",
    "/api/projection?input=test/1&layer=..%2F..%2Fsecret&unit=0", "/static/explore.js/../../../config.json",
]


@pytest.mark.parametrize("url", TRAVERSALS)
def test_no_request_reads_a_file_outside_the_page(client, url):
    response = client.get(url)
    assert response.status_code in (400, 404, 422), (url, response.status_code)
    assert SECRET.encode() not in response.content and b"root:" not in response.content
    assert response.headers["content-type"].startswith("application/json")


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"/static/explore.js\">" in page.text
    for name in ("explore.js", "explore.css"):
        assert client.get(f"/static/{name}").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/activations", "/api/inputs", "/api/projection", "/api/top-images", "/api/feature-vis",
            "/api/attribution", "/api/adversarial", "/api/images", "/api/image", "/api/info"} <= set(schema["paths"])


def test_only_loopback_host_names_are_answered(client, explorer):
    assert client.get("/api/info", headers={"host": "attacker.example"}).status_code == 400
    assert client.get("/api/info", headers={"host": "localhost:8000"}).status_code == 200


# ---------------------------------------------------------------- users apart


def test_two_users_see_their_own_images(explorer):
    app = _app(explorer)
    images = [np.full((28, 28), 0, np.uint8), np.tri(28, dtype=np.uint8) * 255]
    with _client(app) as alice, _client(app) as bob:
        mine = alice.post("/api/inputs", content=_png(images[0])).json()
        theirs = bob.post("/api/inputs", content=_png(images[1])).json()
        assert mine["input"] != theirs["input"] and len(mine["input"]) == len("upload/") + 32
        for user, answer, image in ((alice, mine, images[0]), (bob, theirs, images[1])):
            np.testing.assert_array_equal(_decoded(user.get("/api/image", params={"input": answer["input"]})), image)
            assert user.get("/api/activations", params={"input": answer["input"]}).json() == answer


def test_concurrent_requests_get_the_answers_of_sequential_ones(explorer):
    """Four threads share the one model; the lock keeps their passes apart."""
    app = _app(explorer)
    jobs = [("/api/activations", {"input": f"test/{i}"}) for i in range(8)] + \
           [("/api/projection", {"input": f"test/{i}", "layer": "conv2", "unit": i, "method": "guided-backprop"})
            for i in range(8)]
    with _client(app) as sequential:
        expected = [sequential.get(path, params=params).content for path, params in jobs]
    answers = {}
    errors = []

    def work(worker):
        try:
            with _client(app) as user:
                for repeat in range(3):
                    for number in range(worker, len(jobs), 4):
                        path, params = jobs[number]
                        answers[(number, repeat)] = user.get(path, params=params).content
        except Exception as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert all(answers[(number, repeat)] == expected[number] for number in range(len(jobs)) for repeat in range(3))


# ---------------------------------------------------------------- the command


def test_the_command_serves_the_run_and_warns_off_loopback(run_dir, capsys, monkeypatch):
    import uvicorn

    served = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: served.append(sockets[0].getsockname()))
    assert cli.main(["explore", str(run_dir), "--port", "0", "--top-limit", "50"]) == 0
    out = capsys.readouterr().out
    host, port = served[0][:2]
    assert host == "127.0.0.1" and f"at http://127.0.0.1:{port}/" in out and "warning" not in out
    assert cli.main(["explore", str(run_dir), "--port", "0", "--host", "0.0.0.0", "--top-limit", "50"]) == 0
    out = capsys.readouterr().out
    assert served[1][0] == "0.0.0.0" and "warning: listening on 0.0.0.0" in out and "no login" in out


def test_the_command_refuses_a_busy_port_and_a_missing_run(run_dir, tmp_path, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert cli.main(["explore", str(run_dir), "--port", str(port), "--top-limit", "50"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastconv explore: error: cannot listen on 127.0.0.1 port") and len(err.splitlines()) == 1
    assert cli.main(["explore", str(tmp_path / "nothing")]) == 2
    assert "no run folder or model file" in capsys.readouterr().err


def test_loopback_names(monkeypatch):
    from fastconv.cli.explore import is_loopback

    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.5", "example.org"))


# ---------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def server(explorer):
    """The explorer served by uvicorn on a free loopback port, in a thread of this process."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_app(explorer), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with its fake camera, which it lets the page use without asking."""
    driver = headless_chromium("1400,1000", ("--use-fake-device-for-media-stream",
                                             "--use-fake-ui-for-media-stream"))
    driver.set_script_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Where the screenshots go: docs/explore/ of a source checkout (docs/explore.md shows them)."""
    folder = ROOT / "docs" / "explore" if (ROOT / "docs").is_dir() else tmp_path_factory.mktemp("shots")
    folder.mkdir(exist_ok=True)
    return folder


def _until(driver, script, seconds=20, what="the page"):
    deadline = time.monotonic() + seconds
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {script}"
        time.sleep(0.05)


LOADED = """return Array.from(document.querySelectorAll(arguments[0])).filter(i => i.offsetParent !== null)
    .map(i => [i.getAttribute('alt'), i.complete, i.naturalWidth]);"""


def _all_loaded(driver, selector):
    images = driver.execute_script(LOADED, selector)
    return bool(images) and all(complete and width > 0 for _, complete, width in images)


def _severe(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _screenshot(driver, path, height=None):
    total = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": 1400, "height": min(height or total, total), "scale": 0.75}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert Image.open(path).size[0] == 1050


def test_the_page_picks_an_image_selects_a_unit_and_shows_an_upload_error(server, browser, shots, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server)
    _until(driver, "return document.querySelectorAll('#thumbs img').length === 30", what="the thumbnails")
    _until(driver, "return typeof state !== 'undefined' && state.input === 'test/0'", what="the first image")
    driver.find_elements(By.CSS_SELECTOR, "#thumbs img")[4].click()
    _until(driver, "return state.input === 'test/4' && state.acts.input === 'test/4'", what="the picked image")
    assert driver.find_element(By.ID, "current-name").text.startswith("test/4")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#top5 li")) == 5
    # Hover, then click, the unit in the third row and second column of conv2's grid.
    canvas = driver.find_element(By.CSS_SELECTOR, 'canvas[data-layer="conv2"]')
    grid = driver.execute_script("const g = state.grids.conv2; return [g.cols, g.tileW + g.gap, g.canvas.width];")
    cols, step, width = grid
    scale = canvas.size["width"] / width
    offset_x = (1 * step + step / 2) * scale - canvas.size["width"] / 2
    offset_y = (2 * step + step / 2) * scale - canvas.size["height"] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(offset_x), int(offset_y)).perform()
    unit = 2 * cols + 1
    tip = driver.find_element(By.ID, "tip")
    assert tip.is_displayed() and tip.text.startswith(f"conv2 unit {unit}: max ")
    ActionChains(driver).click().perform()
    assert driver.find_element(By.ID, "unit-title").text == f"conv2 unit {unit}"
    _until(driver, "return document.querySelectorAll('#top-images figure').length === 9", what="the top images")
    _until(driver, "return document.getElementById('feature').naturalWidth > 0", what="the feature visualization")
    for selector in ("#unit-panel img", "#attributions img", "#current-image"):
        deadline = time.monotonic() + 20
        while not _all_loaded(driver, selector):
            assert time.monotonic() < deadline, driver.execute_script(LOADED, selector)
            time.sleep(0.05)
    assert len(driver.execute_script(LOADED, "#unit-panel img")) == 3 + 2 * 9
    assert _severe(driver) == []
    _screenshot(driver, shots / "explore-unit.png", height=1000)

    # A file that is not an image: the page says so, and the server's 415 is the only error logged.
    bad = tmp_path / "notes.png"
    bad.write_text("these are notes, not a picture\n")
    driver.find_element(By.CSS_SELECTOR, '[data-tab="upload"]').click()
    driver.find_element(By.ID, "file").send_keys(str(bad))
    _until(driver, "return !document.getElementById('error').hidden", what="the error")
    message = driver.find_element(By.ID, "error-text").text
    assert message.startswith("notes.png: the upload") and "is not an image file" in message
    assert driver.execute_script("return state.input") == "test/4"
    severe = _severe(driver)
    assert len(severe) == 1 and "/api/inputs" in severe[0]["message"] and "415" in severe[0]["message"], severe
    _screenshot(driver, shots / "explore-upload-error.png", height=560)

    # A good file: its prediction replaces the error.
    good = tmp_path / "good.png"
    good.write_bytes(_png(np.tri(40, dtype=np.uint8) * 255))
    driver.find_element(By.ID, "file").send_keys(str(good))
    _until(driver, "return state.input.startsWith('upload/') && document.getElementById('error').hidden",
           what="the upload")
    assert _severe(driver) == []


def test_live_webcam_mode_and_an_adversarial_example(server, browser, shots):
    from selenium.webdriver.common.by import By

    driver = browser
    driver.get(server)
    _until(driver, "return typeof state !== 'undefined' && state.input === 'test/0'", what="the first image")
    driver.find_element(By.ID, "adv-target").send_keys("3: 3")
    driver.find_element(By.ID, "adv-eps").clear()
    driver.find_element(By.ID, "adv-eps").send_keys("0.3")
    driver.find_element(By.ID, "adv-run").click()
    _until(driver, "return !document.getElementById('adv-result').hidden", what="the adversarial example")
    assert _all_loaded(driver, "#adv-result img")
    assert driver.find_element(By.ID, "adv-text").text.startswith("PGD towards 3, eps 0.3, 10 steps: succeeded")
    driver.find_element(By.ID, "adversarial-panel").screenshot(str(shots / "explore-adversarial.png"))
    driver.find_element(By.ID, "adv-explore").click()
    _until(driver, "return state.input.startsWith('upload/') && state.acts.top5[0].class === 3",
           what="the adversarial example explored")

    driver.find_element(By.CSS_SELECTOR, '[data-tab="webcam"]').click()
    driver.find_element(By.ID, "webcam-toggle").click()
    seen = set()
    deadline = time.monotonic() + 20
    while len(seen) < 4:
        assert time.monotonic() < deadline, seen
        if driver.execute_script("return state.live"):
            seen.add(driver.execute_script("return state.input"))
        time.sleep(0.05)
    _until(driver, "return /frames\\/s$/.test(document.getElementById('webcam-rate').textContent)",
           what="the frame rate")
    assert driver.find_element(By.ID, "video").size["width"] > 0
    _screenshot(driver, shots / "explore-webcam.png", height=1000)
    driver.find_element(By.ID, "webcam-toggle").click()
    assert driver.execute_script("return state.live") is False
    # Each frame replaced the image being shown; the last one loads.
    _until(driver, "const i = document.getElementById('current-image'); return i.complete && i.naturalWidth > 0",
           what="the last frame")
    assert _severe(driver) == []


def test_a_failure_inside_the_server_is_one_line_of_json(explorer, monkeypatch):
    def broken(picture):
        raise RuntimeError("the kernels broke")

    monkeypatch.setattr(explorer, "activations", broken)
    with _client(_app(explorer), raise_server_exceptions=False) as client:
        answer = client.get("/api/activations", params={"input": "test/1"})
    assert answer.status_code == 500
    assert answer.json() == {"error": "the server failed: RuntimeError: the kernels broke"}
