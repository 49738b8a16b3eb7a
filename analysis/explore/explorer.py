"""What the live explorer computes, without the web server around it.

An :class:`Explorer` holds one trained run (its model, normalization,
classes and data set, opened as ``fastconv report`` opens them) and answers
the questions the page asks about an input: every layer's activations, a
unit's deconvnet or guided-backprop projection, the attributions of a class,
an adversarial example; and about a unit: its top images (from an index of
every unit computed once per model in the background and kept on disk in
the run folder) and its feature visualization (computed on demand, also
kept).

Inputs are named by strings, so that no request holds any state on the
server but the images it uploaded: ``test/12`` and ``train/5`` are images of
the data set's splits, ``upload/<token>`` an uploaded image (or a webcam
frame, or an adversarial example), where the token is random and known only
to the page that uploaded it. Nothing in a request names a file.

A model runs one pass at a time: the requests share the run's model under a
lock, and the background jobs work on copies of it.
"""
from __future__ import annotations

import base64
import collections
import copy
import hashlib
import re
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fastconv.analysis import _common as C
from fastconv.analysis.explore import images as I
from fastconv.analysis.explore.index import UnitIndex, build_index, load_index, save_index
from fastconv.analysis.explore.jobs import Job, Jobs
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax

if TYPE_CHECKING:
    import os
    from pathlib import Path

__all__ = ["Explorer", "ExploreError", "Picture", "ATTRIBUTIONS", "PROJECTIONS", "ORDERS", "SPLITS"]

SPLITS = ("test", "train")
ORDERS = ("first", "random", "misclassified")
PROJECTIONS = ("deconvnet", "guided-backprop")
ATTRIBUTIONS = ("occlusion", "saliency", "gradcam", "integrated-gradients")
# Layers whose output repeats the one before it in another shape, or that do
# nothing in evaluation mode: not shown.
HIDDEN_LAYERS = (L.Flatten, L.Dropout)
_INPUT = re.compile(r"(test|train)/(\d{1,9})|upload/([0-9a-f]{32})")


class ExploreError(ValueError):
    """A request the explorer cannot answer: ``status`` is the HTTP status (a 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Picture:
    """One input: its name, pixels in [0, 1] (C, H, W), float32; the raw uint8
    image and the label when it comes from the data set."""

    name: str
    pixels: np.ndarray
    raw: np.ndarray | None = None
    label: int | None = None


class _Uploads:
    """The uploaded images, under random tokens; the oldest are forgotten past ``size``."""

    def __init__(self, size: int) -> None:
        self._images: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def add(self, pixels: np.ndarray) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._images[token] = pixels
            while len(self._images) > self._size:
                self._images.popitem(last=False)
        return token

    def get(self, token: str) -> np.ndarray | None:
        with self._lock:
            pixels = self._images.get(token)
            if pixels is not None:
                self._images.move_to_end(token)
            return pixels


def _digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _top5(probabilities: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    order = np.argsort(-probabilities, kind="stable")[:5]
    return [{"class": int(k), "name": classes[k], "probability": round(float(probabilities[k]), 5)} for k in order]


class Explorer:
    """The run at ``run_dir`` (a run folder or a model file) and what the page asks about it.

    ``dataset`` names another data set than the run's (an error at once if
    it cannot be loaded; without it, a run whose data set cannot be found
    is still explored on uploads and the webcam). ``max_side`` is the
    largest width or height of an uploaded image, ``max_upload_bytes`` the
    largest upload. The top-images index keeps ``top_k`` images per unit
    out of the first ``top_limit`` images of the ``top_split`` split;
    feature visualizations run ``feature_steps`` steps. ``start_index``
    starts the index in the background at once (else on the first request
    that needs it); ``cache`` keeps the index and the feature
    visualizations in the run folder.
    """

    def __init__(self, run_dir: str | os.PathLike, dataset: str | None = None, *, max_side: int,
                 max_upload_bytes: int = 8 << 20, top_k: int = 9, top_limit: int = 5000, top_split: str = "train",
                 feature_steps: int = 128, start_index: bool = True, cache: bool = True,
                 uploads: int = 4096) -> None:
        from fastconv.analysis.report.page import Run

        if top_split not in SPLITS:
            raise ValueError(f"top_split must be one of {SPLITS}, got {top_split!r}")
        self.run = Run(run_dir, dataset)
        self.model = self.run.model
        self.model.eval()
        self.normalize = self.run.normalize
        self.dtype = C.model_dtype(self.model)
        self.max_side = int(max_side)
        self.max_upload_bytes = int(max_upload_bytes)
        self.top_k, self.top_limit, self.top_split = int(top_k), int(top_limit), top_split
        self.feature_steps = int(feature_steps)
        self.lock = threading.Lock()
        self.jobs = Jobs()
        self._uploads = _Uploads(uploads)
        self._predictions: dict[str, np.ndarray] = {}
        self._predictions_lock = threading.Lock()
        self.dataset_error: str | None = None
        try:
            self.data = self.run.dataset
        except Exception as error:  # noqa: BLE001 - uploads and the webcam still work without the data set
            if dataset is not None:
                raise
            self.data = None
            self.dataset_error = " ".join(str(error).split()) or type(error).__name__
        self.input_shape = self._input_shape()
        self.layer_names = [name for name, layer in self.model.named_layers() if not isinstance(layer, HIDDEN_LAYERS)]
        self.shapes = self._layer_shapes()
        self.classes = self._classes()
        self.cache_dir: Path | None = self.run.files.explore_cache if cache else None
        self.model_digest = _digest(self.run.files.model_path)[:24]
        self._index_key = self._settings_key("top-images", {
            "dataset": self.data.name if self.data is not None else None, "split": self.top_split,
            "limit": self.top_limit, "k": self.top_k, "layers": self.layer_names,
            "images": self._split_size(self.top_split)})
        self._index: UnitIndex | None = None
        if start_index and self.data is not None:
            self.index_job()

    # -- what the page is told first -----------------------------------------------
    def _input_shape(self) -> tuple[int, int, int]:
        from fastconv.analysis.optimize.methods import input_shape

        if self.model.meta.get("input_shape") is None and self.data is not None:
            return tuple(int(v) for v in self.data.input_shape)  # type: ignore[return-value]
        return input_shape(self.model)

    def _layer_shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = self.model.output_shapes((1, *self.input_shape))
        return {name: shape[1:] for name, shape in shapes.items()}

    def _classes(self) -> list[str]:
        output = getattr(self.model, "output", None) or self.model.named_layers()[-1][0]  # a Graph names its output
        count = self.shapes[output][0]
        names = C.meta_classes(self.model)
        if names is None and self.data is not None:
            names = [str(c) for c in self.data.classes]
        if names is None or len(names) != count:
            names = [str(k) for k in range(count)]
        return names

    def _split_size(self, split: str) -> int:
        if self.data is None:
            return 0
        return len(self.data.x_test if split == "test" else self.data.x_train)

    def info(self) -> dict[str, Any]:
        """The run, its classes, layers and data set, and the limits of the server."""
        layers = []
        for name, layer in self.model.named_layers():
            if name in self.layer_names:
                shape = self.shapes[name]
                layers.append({"name": name, "type": type(layer).__name__, "shape": list(shape), "units": shape[0],
                               "kind": "maps" if len(shape) == 3 else "vector"})
        channels = self.input_shape[0]
        return {
            "title": self.run.name, "run": self.run.files.label, "input_shape": list(self.input_shape),
            "classes": self.classes, "layers": layers,
            "dataset": self.data.name if self.data is not None else None, "dataset_error": self.dataset_error,
            "splits": {split: self._split_size(split) for split in SPLITS},
            "labels": {split: self._label_counts(split) for split in SPLITS},
            "top_k": self.top_k, "top_split": self.top_split,
            "max_upload_bytes": self.max_upload_bytes, "max_side": self.max_side,
            "projections": list(PROJECTIONS), "attributions": list(ATTRIBUTIONS),
            "eps": 0.1 if channels == 1 else 8 / 255,
        }

    def _label_counts(self, split: str) -> list[int]:
        if self.data is None:
            return []
        labels = self.data.y_test if split == "test" else self.data.y_train
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    # -- inputs -----------------------------------------------------------------------
    def picture(self, name: str) -> Picture:
        """The input called ``name`` (``test/12``, ``train/5`` or ``upload/<token>``)."""
        match = _INPUT.fullmatch(name) if isinstance(name, str) else None
        if match is None:
            raise ExploreError(f"input must be test/N, train/N or upload/TOKEN, got {name!r}")
        split, number, token = match.groups()
        if token is not None:
            pixels = self._uploads.get(token)
            if pixels is None:
                raise ExploreError(f"no uploaded image {name!r} (the server keeps the most recent ones)", 404)
            return Picture(name, pixels)
        if self.data is None:
            raise ExploreError(f"the run's data set is not available: {self.dataset_error}", 404)
        raw_images, labels = (self.data.x_test, self.data.y_test) if split == "test" else \
            (self.data.x_train, self.data.y_train)
        index = int(number)
        if index >= len(raw_images):
            raise ExploreError(f"{name}: the {split} split has {len(raw_images)} images (0 to {len(raw_images) - 1})",
                               404)
        raw = raw_images[index]
        pixels = (raw.astype(np.float32) / np.float32(self.normalize.scale)).astype(np.float32)
        return Picture(name, pixels, raw=raw, label=int(labels[index]))

    def upload(self, data: bytes) -> Picture:
        """An uploaded image file, checked and brought to the model's input; kept under a new token."""
        if len(data) > self.max_upload_bytes:
            raise I.UploadError(f"the upload is {len(data):,} bytes; the largest accepted is "
                                f"{self.max_upload_bytes:,} bytes", 413)
        pixels = I.decode_upload(data, self.input_shape[0], self.input_shape[1:], self.max_side)
        return self.keep(pixels)

    def keep(self, pixels: np.ndarray) -> Picture:
        """Pixels in [0, 1] (C, H, W) of the model's input size, kept as a new upload."""
        pixels = np.ascontiguousarray(np.clip(pixels, 0, 1), dtype=np.float32)
        if pixels.shape != self.input_shape:
            raise ExploreError(f"an input must be {self.input_shape}, got {pixels.shape}")
        return Picture(f"upload/{self._uploads.add(pixels)}", pixels)

    def model_input(self, picture: Picture) -> np.ndarray:
        """The picture as the model's normalized input (1, C, H, W)."""
        if picture.raw is not None:
            return self.model.preprocess(picture.raw[None])
        return self.model.preprocess(picture.pixels[None].astype(self.dtype))

    def image_png(self, picture: Picture, box: tuple[int, int, int, int] | None = None) -> bytes:
        """The picture as PNG, or the part of it inside ``box`` (top, left, bottom, right)."""
        shown = I.to_display(picture.pixels)
        if box is not None:
            top, left, bottom, right = self._check_box(box)
            shown = shown[top:bottom, left:right]
        return I.png_bytes(shown)

    def _check_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        top, left, bottom, right = box
        h, w = self.input_shape[1:]
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ExploreError(f"box {list(box)} is not inside the {h}x{w} image (top, left, bottom, right)")
        return top, left, bottom, right

    # -- the data set -----------------------------------------------------------------
    def predictions(self, split: str) -> np.ndarray:
        """The model's classes for every image of ``split``, computed once, a batch at a
        time so that other requests run in between."""
        self._check_split(split)
        with self._predictions_lock:
            if split not in self._predictions:
                assert self.data is not None
                raw = self.data.x_test if split == "test" else self.data.x_train
                parts = []
                for start, stop in C.batches(len(raw), 256):
                    with self.lock:
                        parts.append(self.model.predict(raw[start:stop]).argmax(axis=1))
                self._predictions[split] = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            return self._predictions[split]

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ExploreError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if self.data is None:
            raise ExploreError(f"the run's data set is not available: {self.dataset_error}", 404)

    def browse(self, split: str = "test", label: int | None = None, order: str = "first", offset: int = 0,
               count: int = 30, seed: int = 0) -> dict[str, Any]:
        """A page of the split's images: of one class (``label``) or all, in order,
        shuffled by ``seed``, or only those the model gets wrong."""
        self._check_split(split)
        if order not in ORDERS:
            raise ExploreError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if label is not None and not 0 <= label < len(self.classes):
            raise ExploreError(f"label {label} is out of range for {len(self.classes)} classes")
        if offset < 0 or not 1 <= count <= 500:
            raise ExploreError(f"offset must be >= 0 and count from 1 to 500, got {offset} and {count}")
        assert self.data is not None
        labels = self.data.y_test if split == "test" else self.data.y_train
        chosen = np.arange(len(labels))
        predicted = None
        if order == "misclassified":
            predicted = self.predictions(split)
            chosen = chosen[predicted != labels]
        if label is not None:
            chosen = chosen[labels[chosen] == label]
        if order == "random":
            chosen = np.random.default_rng(seed).permutation(chosen)
        page = chosen[offset:offset + count]
        items = []
        for i in page.tolist():
            item = {"input": f"{split}/{i}", "label": int(labels[i]), "name": self.classes[int(labels[i])]}
            if predicted is not None:
                item["predicted"] = int(predicted[i])
            items.append(item)
        return {"split": split, "total": len(chosen), "offset": offset, "images": items}

    # -- activations ------------------------------------------------------------------
    def activations(self, picture: Picture) -> dict[str, Any]:
        """The prediction (top 5) and every shown layer's output for the picture.

        A layer of maps (C, h, w) comes as bytes, one per value, scaled so that
        255 is the layer's largest value (negative values are 0), with each
        unit's largest and mean value; a layer of D values comes as the values.
        """
        x = self.model_input(picture)
        with self.lock, C.evaluating(self.model):
            out, outputs = C.forward_with_outputs(self.model, x, self.layer_names)
        probabilities = softmax(out.astype(np.float64), axis=1)[0]
        layers = []
        for name in self.layer_names:
            value = outputs[name][0]
            if value.ndim == 3:
                peak = float(max(value.max(), 0.0))
                scaled = np.clip(value * (255.0 / peak), 0, 255) if peak > 0 else np.zeros_like(value)
                layers.append({
                    "name": name, "kind": "maps", "shape": list(value.shape), "peak": peak,
                    "bytes": base64.b64encode(np.rint(scaled).astype(np.uint8).tobytes()).decode("ascii"),
                    "max": np.round(value.max(axis=(1, 2)).astype(np.float64), 4).tolist(),
                    "mean": np.round(value.mean(axis=(1, 2)).astype(np.float64), 4).tolist(),
                })
            else:
                layers.append({"name": name, "kind": "vector", "shape": list(value.shape),
                               "values": np.round(value.astype(np.float64), 4).tolist()})
        return {"input": picture.name, "label": picture.label, "top5": _top5(probabilities, self.classes),
                "layers": layers}

    def _check_unit(self, layer: str, unit: int) -> None:
        if layer not in self.layer_names:
            raise ExploreError(f"unknown layer {layer!r}; the layers are {', '.join(self.layer_names)}")
        units = self.shapes[layer][0]
        if not 0 <= unit < units:
            raise ExploreError(f"unit {unit} is out of range for layer {layer!r} with {units} units (0 to {units - 1})")

    # -- a unit -----------------------------------------------------------------------
    def projection(self, picture: Picture, layer: str, unit: int, method: str = "deconvnet",
                   crop: bool = False) -> bytes:
        """The unit's deconvnet or guided-backprop projection onto the picture's
        pixels (from its strongest position, for a channel of maps), as PNG; with
        ``crop``, only its receptive field there."""
        from fastconv.analysis.attribution.methods import Deconvnet, GuidedBackprop
        from fastconv.analysis.visualize.receptive_field import geometry

        self._check_unit(layer, unit)
        if method not in PROJECTIONS:
            raise ExploreError(f"method must be one of {', '.join(PROJECTIONS)}, got {method!r}")
        x = self.model_input(picture)
        tool = Deconvnet if method == "deconvnet" else GuidedBackprop
        with self.lock:
            projection = tool(self.model, layer).attribute(x, unit)[0]
            if crop and len(self.shapes[layer]) == 3:
                with C.evaluating(self.model):
                    plane = self.model.forward(x, until=layer)[0, unit]
        shown = I.projection_picture(projection)
        if crop and len(self.shapes[layer]) == 3:
            i, j = np.unravel_index(int(np.argmax(plane)), plane.shape)
            top, left, bottom, right = geometry(self.model, layer).box(int(i), int(j), self.input_shape[1:])
            shown = shown[top:bottom, left:right]
        return I.png_bytes(shown)

    def _settings_key(self, what: str, settings: dict[str, Any]) -> str:
        text = repr(sorted(settings.items()))
        return f"{what}-{hashlib.sha256((self.model_digest + text).encode()).hexdigest()[:24]}"

    def _cache_path(self, name: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / name

    def index_job(self) -> Job:
        """The job that builds (or reads from the run folder) the top-images index."""
        return self.jobs.submit("top-images", "top images of every unit", self._build_index)

    def _build_index(self, job: Job) -> UnitIndex:
        path = self._cache_path(f"{self._index_key}.npz")
        if path is not None and path.is_file():
            try:
                self._index = load_index(path)
                job.progress(self._index.count, self._index.count)
                return self._index
            except ValueError:
                pass  # a damaged file is computed again and replaced
        assert self.data is not None
        raw = self.data.x_test if self.top_split == "test" else self.data.x_train
        model = copy.deepcopy(self.model)
        index = build_index(model, raw[:self.top_limit], self.layer_names, self.top_k, self.normalize,
                            progress=job.progress)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                save_index(index, path)
            except OSError as error:
                print(f"fastconv explore: the top-images index is not kept ({error}); it is computed again "
                      "next time", flush=True)
        self._index = index
        return index

    def top_images(self, layer: str, unit: int) -> dict[str, Any]:
        """The unit's top images with their receptive-field boxes, once the index is
        built; until then the index job's progress."""
        from fastconv.analysis.visualize.receptive_field import geometry

        self._check_unit(layer, unit)
        if self.data is None:
            raise ExploreError(f"the run's data set is not available: {self.dataset_error}", 404)
        job = self.index_job()
        answer: dict[str, Any] = {"layer": layer, "unit": unit, "status": job.status(), "images": []}
        index = self._index if job.state == "done" else None
        if index is None:
            return answer
        geo = geometry(self.model, layer)
        labels = self.data.y_test if self.top_split == "test" else self.data.y_train
        positions = index.positions[layer]
        for rank, image in enumerate(index.indices[layer][unit].tolist()):
            if image < 0:
                break
            h, w = self.input_shape[1:]
            box: tuple[int, int, int, int] = (0, 0, h, w)
            if positions is not None:
                i, j = positions[unit, rank]
                box = geo.box(int(i), int(j), (h, w))
            answer["images"].append({
                "input": f"{self.top_split}/{image}", "value": round(float(index.values[layer][unit, rank]), 4),
                "label": int(labels[image]), "name": self.classes[int(labels[image])], "box": list(box)})
        answer["searched"] = index.count
        return answer

    def feature_job(self, layer: str, unit: int) -> tuple[Job, Path | None]:
        """The job computing the unit's feature visualization, and the PNG it writes."""
        self._check_unit(layer, unit)
        key = self._settings_key("feature", {"layer": layer, "unit": unit, "steps": self.feature_steps,
                                             "shape": self.input_shape})
        path = self._cache_path(f"{key}.png")
        job = self.jobs.get(key)
        if job is None and path is not None and path.is_file():
            job = Job(key=key, title=f"feature visualization of {layer} unit {unit}", state="done", result=path)
            return job, path
        return self.jobs.submit(key, f"feature visualization of {layer} unit {unit}",
                                lambda job: self._feature(job, layer, unit, path)), path

    def _feature(self, job: Job, layer: str, unit: int, path: Path | None) -> bytes:
        from fastconv._files import atomic_write
        from fastconv.analysis.optimize.methods import feature_visualization

        model = copy.deepcopy(self.model)
        steps = self.feature_steps
        passes = [0]

        def count(name: str, _layer: L.Layer, _output: np.ndarray) -> None:
            if name == layer:
                passes[0] += 1
                job.progress(min(passes[0], steps), steps)

        handle = model.register_forward_hook(count)
        side = max(self.input_shape[1:])
        try:
            result = feature_visualization(model, layer, unit, steps=steps, seed=0, init="noise", lr=0.05,
                                           jitter=max(1, side // 16), blur_every=4, blur_sigma=0.5,
                                           progress=False)
        finally:
            handle.remove()
        picture = I.png_bytes(I.to_display(result.image))
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda f: f.write(picture))
            except OSError as error:
                print(f"fastconv explore: a feature visualization is not kept ({error})", flush=True)
        return picture

    def feature_png(self, layer: str, unit: int) -> bytes | None:
        """The unit's feature visualization as PNG, None until it is computed."""
        job, path = self.feature_job(layer, unit)
        if job.state != "done":
            return None
        if isinstance(job.result, bytes):
            return job.result
        assert path is not None
        return path.read_bytes()

    # -- the input as a whole ---------------------------------------------------------
    def _check_class(self, target: int, what: str = "target") -> int:
        if not 0 <= target < len(self.classes):
            raise ExploreError(f"{what} {target} is out of range for {len(self.classes)} classes "
                               f"(0 to {len(self.classes) - 1})")
        return int(target)

    def attribution(self, picture: Picture, method: str, target: int | None = None) -> bytes:
        """Which pixels make the model say ``target`` (default: the class it
        predicts), by ``method`` (occlusion, saliency, gradcam or
        integrated-gradients), as a PNG heat map."""
        from fastconv.analysis.attribution.methods import GradCAM, IntegratedGradients, Saliency, channel_max
        from fastconv.analysis.attribution.occlusion import Occlusion

        if method not in ATTRIBUTIONS:
            raise ExploreError(f"method must be one of {', '.join(ATTRIBUTIONS)}, got {method!r}")
        x = self.model_input(picture)
        with self.lock:
            if target is None:
                target = int(self.model.predict(x).argmax(axis=1)[0])
            target = self._check_class(target)
            if method == "saliency":
                shown = I.heat_map(channel_max(Saliency(self.model).attribute(x, target))[0])
            elif method == "gradcam":
                cam = GradCAM(self.model).attribute(x, target)[0, 0]
                shown = I.overlay(picture.pixels, I.heat_map(cam), 0.6)
            elif method == "integrated-gradients":
                shown = I.signed_map(IntegratedGradients(self.model).attribute(x, target, steps=32)[0].sum(axis=0))
            else:
                side = min(self.input_shape[1:])
                patch, stride = max(2, side // 4), max(1, side // 16)
                drop = Occlusion(self.model).attribute(x, target, patch=patch, stride=stride, fill=0.0)
                shown = I.signed_map(drop[0, 0])
        return I.png_bytes(shown)

    def adversarial(self, picture: Picture, eps: float, target: int | None = None, steps: int = 10) -> dict[str, Any]:
        """PGD with L-infinity size ``eps`` (pixel units): towards ``target``, or away
        from the predicted class without one. The perturbed image is kept as a new
        input, so that the page can explore it."""
        from fastconv.analysis.attacks.methods import PGD, predict_pixels

        if not (isinstance(eps, float) and 0 < eps <= 1):
            raise ExploreError(f"eps must be a number in (0, 1] (pixel units), got {eps!r}")
        if not 1 <= steps <= 200:
            raise ExploreError(f"steps must be from 1 to 200, got {steps}")
        if target is not None:
            target = self._check_class(target)
        pixels = picture.pixels[None].astype(self.dtype)
        with self.lock:
            before = softmax(predict_pixels(self.model, pixels).astype(np.float64), axis=1)[0]
            adversarial = PGD(self.model, eps=eps, steps=steps, seed=0)(pixels, target=target)
            after = softmax(predict_pixels(self.model, adversarial).astype(np.float64), axis=1)[0]
        kept = self.keep(adversarial[0])
        delta = adversarial[0].astype(np.float64) - pixels[0]
        predicted = int(after.argmax())
        succeeded = predicted == target if target is not None else predicted != int(before.argmax())
        return {
            "input": kept.name, "eps": eps, "target": target, "steps": steps, "succeeded": bool(succeeded),
            "linf": round(float(np.abs(delta).max()), 5),
            "image": I.data_url(I.to_display(kept.pixels)),
            "perturbation": I.data_url(I.to_display(np.clip(0.5 + 0.5 * delta / eps, 0, 1))),
            "before": _top5(before, self.classes), "top5": _top5(after, self.classes),
        }

    def close(self) -> None:
        """Stop the background jobs."""
        self.jobs.shutdown()
