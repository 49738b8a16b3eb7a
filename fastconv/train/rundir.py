"""A training run folder: the names of its files, and how they are read and written.

``fastconv train --out RUN`` (the :class:`~fastconv.train.Trainer` and the
command line) fills a folder that every other command reads::

    config.json                the options the run was started with
    recipe.json                the recipe it trains with, when it has one (fastconv.train.recipes)
    history.json, history.csv  one record per epoch
    checkpoint-last.npz        where an interrupted run resumes
    checkpoint-best.npz        the state at the best epoch
    model.npz, best_model.npz  the final and the best model (fastconv.load)
    eval.json                  what 'fastconv evaluate' measured
    train_samples.png, training_curves.png, predictions.png, confusion_matrix.png
    report.html                the page of 'fastconv report'
    explore-cache/             what 'fastconv explore' computes once per model (top images, feature images)

:class:`RunDir` is the only code that knows these names. ``RunDir.open(path)``
takes a run folder or a model ``.npz`` file; its files are read when first
asked for, and written atomically. It also decides where a run's images come
from: :meth:`RunDir.dataset_name` and :meth:`RunDir.load_dataset`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from fastconv._files import atomic_write, write_json

if TYPE_CHECKING:
    import os
    from collections.abc import Collection, Iterable, Mapping, Sequence

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv
    from fastconv.data.datasets import Dataset

__all__ = [
    "RunDir", "NotARunError",
    "CONFIG", "RECIPE", "HISTORY_JSON", "HISTORY_CSV", "HISTORY_COLUMNS", "LAST_CHECKPOINT", "BEST_CHECKPOINT",
    "FINAL_MODEL", "BEST_MODEL", "EVAL", "REPORT", "EXPLORE_CACHE", "FIGURES", "TRAINER_FILES", "TRAINING_FILES",
    "RUN_FILES",
]

CONFIG = "config.json"
RECIPE = "recipe.json"
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"
HISTORY_COLUMNS = [
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "seconds", "images_per_second",
]
LAST_CHECKPOINT = "checkpoint-last.npz"
BEST_CHECKPOINT = "checkpoint-best.npz"
FINAL_MODEL = "model.npz"
BEST_MODEL = "best_model.npz"
EVAL = "eval.json"
REPORT = "report.html"
# A folder, not a file: its entries name the model they were computed for, so
# a run trained again over this one never reads another model's results.
EXPLORE_CACHE = "explore-cache"
FIGURES = {
    "samples": "train_samples.png",
    "history": "training_curves.png",
    "predictions": "predictions.png",
    "confusion": "confusion_matrix.png",
}
MODELS = {"final": FINAL_MODEL, "best": BEST_MODEL}
CHECKPOINTS = {"last": LAST_CHECKPOINT, "best": BEST_CHECKPOINT}
# What the trainer itself writes: a folder holding any of them holds a run.
TRAINER_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, FINAL_MODEL, BEST_MODEL, HISTORY_JSON, HISTORY_CSV)
# What a training run writes (the trainer, and the command line around it: the
# configuration and the figures), and so whose leftover temporary files the
# trainer removes.
TRAINING_FILES = (*TRAINER_FILES, CONFIG, RECIPE, FIGURES["samples"], FIGURES["history"])
# Every file a run writes: none of them is replaced unless the user asks for it.
RUN_FILES = (CONFIG, RECIPE, *TRAINER_FILES, EVAL, REPORT, *FIGURES.values())
DATASET_CHOICES = "mnist-sample, mnist, fashion-mnist, cifar10 or folder:PATH"


class NotARunError(ValueError):
    """A path is not a run folder or model file, a run lacks a file that is
    needed, or one of its files cannot be read."""


_UNREAD = object()


class RunDir:
    """A run folder, or the folder of a model file.

    ``RunDir(folder)`` checks nothing: the folder may not exist yet (a run
    about to be trained) and ``config`` is then the run's configuration until
    config.json is written. ``model_path`` is a model file to use as the
    run's final model instead of ``folder/model.npz``. :meth:`open` is the
    checked way in.
    """

    def __init__(self, folder: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 model_path: str | os.PathLike | None = None) -> None:
        self.folder = Path(folder)
        self._model_file = Path(model_path) if model_path is not None else None
        self.model_path = self._model_file if self._model_file is not None else self.folder / FINAL_MODEL
        self._config = dict(config) if config is not None else None
        self._config_given = config is not None
        self._history: Any = _UNREAD  # until history.json is read; then what it holds (None without the file)
        self._model: fastconv.Model | None = None

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """The run at ``path``: a run folder holding model.npz, or a model file (its
        folder is the run's). NotARunError if there is no model."""
        path = Path(path)
        if not path.exists():
            raise NotARunError(f"no run folder or model file at {path}")
        run = cls(path.parent, model_path=path) if path.is_file() else cls(path)
        run.model_file("final")
        return run

    def __repr__(self) -> str:
        where = self._model_file if self._model_file is not None else self.folder
        return f"RunDir({str(where)!r})"

    # -- names -----------------------------------------------------------------
    @property
    def label(self) -> str:
        """The run's short name: its folder's name, or the stem of the model file it was opened on."""
        return self._model_file.stem if self._model_file is not None else self.folder.name

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG

    def history_path(self, kind: str = "json") -> Path:
        """The path of the history as ``'json'`` (every field) or ``'csv'`` (a table)."""
        return self.folder / {"json": HISTORY_JSON, "csv": HISTORY_CSV}[_choice(kind, ("json", "csv"), "history")]

    @property
    def best_model_path(self) -> Path:
        return self.folder / BEST_MODEL

    @property
    def eval_path(self) -> Path:
        return self.folder / EVAL

    @property
    def report_path(self) -> Path:
        return self.folder / REPORT

    @property
    def explore_cache(self) -> Path:
        """The folder where 'fastconv explore' keeps what it computes once (it may not exist yet)."""
        return self.folder / EXPLORE_CACHE

    def existing_files(self, names: Sequence[str] = RUN_FILES) -> list[str]:
        """Which of ``names`` (by default every file a run writes) the folder
        already holds, in that order: empty for a new or unrelated folder."""
        return [name for name in names if (self.folder / name).exists()]

    def describe_existing(self, names: Sequence[str] = RUN_FILES) -> str | None:
        """What of ``names`` the folder already holds, in words for an error message, or None."""
        existing = self.existing_files(names)
        if not existing:
            return None
        has = set(existing).__contains__
        if has(LAST_CHECKPOINT) and not has(FINAL_MODEL):
            what = "an interrupted training run"
        elif has(CONFIG) and has(FINAL_MODEL):
            what = "a finished training run"
        elif has(CONFIG) or has(LAST_CHECKPOINT):
            what = "a training run"
        elif has(FINAL_MODEL) or has(BEST_MODEL):
            what = "a model"
        else:
            what = "files of a run"
        shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
        return f"{what} ({shown})"

    def remove_run_files(self) -> None:
        """Delete the files a run writes (and only those), before a run replaces this one."""
        for name in self.existing_files():
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()

    def checkpoint(self, which: str = "last") -> Path:
        """The path of the ``'last'`` or ``'best'`` checkpoint."""
        return self.folder / CHECKPOINTS[_choice(which, CHECKPOINTS, "checkpoint")]

    def figure(self, key: str) -> Path:
        """The path of a figure: ``'samples'``, ``'history'``, ``'predictions'`` or ``'confusion'``."""
        return self.folder / FIGURES[_choice(key, FIGURES, "figure")]

    # -- the model -------------------------------------------------------------
    def model_file(self, which: str = "final") -> Path:
        """The path of the ``'final'`` (model.npz, or the file opened) or ``'best'``
        model; NotARunError if the run has none."""
        path = self.model_path if _choice(which, MODELS, "model") == "final" else self.best_model_path
        if not path.is_file():
            if self.checkpoint("last").is_file():
                why = (f"its training has not finished "
                       f"(resume with: fastconv train --out {self.folder} --resume)")
            else:
                why = ("it is not a finished fastconv run folder "
                       "(a folder written by 'fastconv train' or 'fastconv demo')")
            raise NotARunError(f"{self.folder} holds no {path.name}: {why}")
        return path

    def load_model(self, which: str = "final") -> fastconv.Model:
        """The ``'final'`` or ``'best'`` model, read from its file (ValueError naming a damaged one)."""
        from fastconv.nn.model import load

        return load(self.model_file(which))

    @property
    def model(self) -> fastconv.Model:
        """The final model, loaded once."""
        if self._model is None:
            self._model = self.load_model("final")
        return self._model

    # -- configuration and history ---------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """A copy of the run's configuration (config.json), {} if it has none."""
        if self._config is None:
            self._config = self._read_json(self.config_path, {})
            if not isinstance(self._config, dict):
                self._config = None
                raise NotARunError(f"{self.config_path} is not a fastconv run configuration")
        return dict(self._config)

    def require_config(self) -> dict[str, Any]:
        """The configuration of a run written by 'fastconv train'; NotARunError if it has none."""
        if not self._config_given and not self.config_path.is_file():
            raise NotARunError(f"{self.folder} is not a fastconv run folder: it has no {CONFIG}")
        config = self.config
        if "dataset" not in config or "model" not in config:
            raise NotARunError(f"{self.config_path} is not a fastconv run configuration")
        return config

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write config.json (atomically); returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = write_json(self.config_path, config)
        self._config = dict(config)
        return path

    @property
    def recipe_path(self) -> Path:
        return self.folder / RECIPE

    def read_recipe(self) -> dict[str, Any] | None:
        """The recipe the run trains with (recipe.json, as ``Recipe.to_dict()``
        wrote it), None for a run without one."""
        recipe = self._read_json(self.recipe_path, None)
        if recipe is not None and not isinstance(recipe, dict):
            raise NotARunError(f"{self.recipe_path} is not a fastconv recipe")
        return recipe

    def write_recipe(self, recipe: Mapping[str, Any]) -> Path:
        """Write recipe.json (atomically); returns its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return write_json(self.recipe_path, recipe)

    @property
    def history(self) -> list[dict[str, Any]] | None:
        """The records of history.json (one dict per epoch), None if the run has none."""
        if self._history is _UNREAD:
            self._history = self._read_json(self.history_path("json"), None)
        return self._history

    def write_history(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Write history.json and history.csv (atomically)."""
        atomic_write(self.history_path("json"), lambda f: f.write(json.dumps(history, indent=1).encode()))

        def write_csv(f: IO[bytes]) -> None:
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            for record in history:
                writer.writerow({k: ("" if record.get(k) is None else record[k]) for k in HISTORY_COLUMNS})
            f.write(text.getvalue().encode())

        atomic_write(self.history_path("csv"), write_csv)
        self._history = list(history)

    def write_json(self, name: str, data: Any) -> Path:
        """Write data as JSON to the file ``name`` of the run folder (atomically); returns its path."""
        return write_json(self.folder / name, data)

    def remove_stale_temporaries(self, names: Iterable[str] = TRAINING_FILES) -> None:
        """Delete the temporary files that a killed process left behind while writing
        one of ``names`` (atomic_write names them .<file>.<random>.tmp)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.glob(".*.tmp"):
            if any(path.name.startswith(f".{name}.") for name in names):
                try:
                    path.unlink()
                except OSError:
                    pass

    @staticmethod
    def _read_json(path: Path, default: Any) -> Any:
        if not path.is_file():
            return default
        try:
            return json.loads(path.read_text())
        except (ValueError, OSError) as error:
            raise NotARunError(f"{path} is unreadable: {error}") from None

    # -- data ------------------------------------------------------------------
    def dataset_name(self, override: str | None = None) -> str | None:
        """The data set of the run: ``override`` (a --dataset option) if given, else
        the one in the model's metadata, else the one in config.json; None if none names one."""
        if override:
            return override
        if self._model is not None or self.model_path.is_file():
            name = self.model.meta.get("dataset")
            if name:
                return name
        return self.config.get("dataset") or None

    def data_dir(self, override: str | os.PathLike | None = None) -> str | os.PathLike | None:
        """Where the data sets are: ``override`` (a --data-dir option) if given, else the
        run's (config.json), else None (the default locations)."""
        return override if override is not None else self.config.get("data_dir")

    def subset_limit(self, override: str | None = None) -> int | None:
        """The run's --limit, which applies to its own data set only: None for another one."""
        if override is not None and override != self.config.get("dataset"):
            return None
        return self.config.get("limit") or None

    def _folder_options(self, name: str) -> dict[str, Any]:
        """How a ``folder:`` data set is brought to the model: the run's
        ``--image-size`` (else the side of the model's input, when it is known),
        ``--skip-bad-images`` and ``--test-fraction``."""
        if not name.startswith("folder:"):
            return {}
        image_size = self.config.get("image_size")
        if image_size is None and self.model_path is not None and self.model_path.is_file():
            image_size = _model_side(self.model.meta)
        options = {"image_size": image_size, "skip_bad_images": bool(self.config.get("skip_bad_images"))}
        if self.config.get("test_fraction") is not None:
            options["test_fraction"] = self.config["test_fraction"]
        return options

    def load_dataset(self, override_name: str | None = None, data_dir: str | os.PathLike | None = None,
                     subset: bool = True) -> Dataset:
        """The run's data set (:meth:`dataset_name`), from :meth:`data_dir`.

        With ``subset`` a run trained with --limit N gets the same N training and
        N test images it was trained and evaluated on (its own data set only);
        without, the whole splits. ValueError if nothing names a data set,
        DataError if it cannot be loaded.
        """
        from fastconv.data.datasets import limited, load_dataset

        name = self.dataset_name(override_name)
        if not name:
            raise ValueError(f"the model's metadata names no data set; pass --dataset NAME ({DATASET_CHOICES})")
        dataset = load_dataset(name, data_dir=self.data_dir(data_dir), **self._folder_options(name))
        limit = self.subset_limit(override_name) if subset else None
        if limit:
            keep = limited(len(dataset.y_train), limit)
            dataset.x_train, dataset.y_train = dataset.x_train[keep], dataset.y_train[keep]
            keep = limited(len(dataset.y_test), limit)
            dataset.x_test, dataset.y_test = dataset.x_test[keep], dataset.y_test[keep]
        if self.model_path.is_file():
            self.check_fits(dataset)
        return dataset

    def check_fits(self, dataset: Dataset, meta: Mapping[str, Any] | None = None) -> None:
        """ValueError, in the user's words, when the run's model (described by
        ``meta``, by default its final model's metadata) cannot take
        ``dataset``'s images or labels: another size, channel count or number
        of classes."""
        meta = self.model.meta if meta is None else meta
        shape = tuple(meta.get("input_shape") or dataset.input_shape)
        classes = len(meta.get("classes") or dataset.classes)
        if shape != tuple(dataset.input_shape) or classes != dataset.num_classes:
            raise ValueError(
                f"the model in {self.label} takes {_shape_words(shape)} images in {classes} classes, "
                f"but {dataset.name} has {_shape_words(dataset.input_shape)} images in {dataset.num_classes} classes"
            )


def _shape_words(shape: Sequence[int]) -> str:
    """(1, 28, 28) -> '28x28 grey'; (3, 32, 32) -> '32x32 colour'; else 'C-channel HxW'."""
    channels, height, width = shape
    kind = {1: "grey", 3: "colour"}.get(channels, f"{channels}-channel")
    return f"{height}x{width} {kind}"


def _model_side(meta: Mapping[str, Any] | None) -> int | None:
    """The square side of a model's input from its metadata, or None."""
    shape = (meta or {}).get("input_shape")
    if shape and len(shape) == 3 and shape[1] == shape[2]:
        return int(shape[1])
    return None


def _choice(value: str, choices: Collection[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value
