"""The training loop: epochs of shuffled mini-batches, validation, history and checkpoints.

``Trainer(model, optimizer, loss, schedule, ...).fit(x_train, y_train, epochs,
x_val, y_val)`` runs the epochs; ``train(...)`` does the same in one call.
Images may be uint8 (then ``normalize`` maps them to floats, or they are
divided by 255) or already floats.

With a ``run_dir`` the trainer writes, each epoch:

``history.json``, ``history.csv``
    One record per epoch: learning rate (of the epoch's last batch),
    training and validation loss and accuracy, seconds, images per second.
``checkpoint-last.npz``, ``checkpoint-best.npz``
    Everything needed to continue: the model's weights and architecture,
    the optimizer's and the schedule's state, the epoch and batch reached,
    the random generators' states and the history. Best is the epoch with
    the highest validation accuracy (training accuracy without validation).
``model.npz``, ``best_model.npz``
    The final and the best model, readable by ``fastconv.load``.

Every file is written to a temporary name in ``run_dir`` and renamed, so an
interrupt (Ctrl-C, kill -9, power loss) never leaves a half-written file.
Ctrl-C stops at the end of the current batch, saves a checkpoint there and
raises ``TrainingInterrupted``; a second Ctrl-C stops at once (the files on
disk stay whole). ``fit(..., resume=True)`` continues from
``checkpoint-last.npz`` and reaches the same weights, bit for bit, as a run
that was never interrupted, for a given seed and thread count.
"""
from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fastconv._files import atomic_write, open_npz
from fastconv.nn.losses import CrossEntropyLoss
from fastconv.train.rundir import (  # noqa: F401 -- HISTORY_COLUMNS: re-exported
    BEST_CHECKPOINT,
    BEST_MODEL,
    FINAL_MODEL,
    HISTORY_COLUMNS,
    LAST_CHECKPOINT,
    TRAINER_FILES,
    TRAINING_FILES,
    RunDir,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Iterator, Mapping
    from types import FrameType

    from numpy.typing import ArrayLike

    import fastconv  # fastconv.Model in annotations: the API reference documents it once, under fastconv
    from fastconv.data.transforms import Augment, Normalize
    from fastconv.nn.losses import NLLLoss
    from fastconv.optim.lookahead import Lookahead
    from fastconv.optim.optimizers import Optimizer
    from fastconv.optim.schedules import CosineAnnealingLR, OneCycleLR, PiecewiseLinearLR, StepLR
    from fastconv.train.distributed import Communicator

__all__ = [
    "Trainer", "train", "evaluate", "confusion_matrix",
    "TrainingInterrupted", "CheckpointError", "TrainingDiverged",
    "save_checkpoint", "load_checkpoint",
    "LAST_CHECKPOINT", "BEST_CHECKPOINT", "FINAL_MODEL", "BEST_MODEL",
]

CHECKPOINT_FORMAT = "fastconv.checkpoint"
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is unreadable or belongs to another model or set-up."""


class TrainingInterrupted(Exception):
    """Training stopped on request (Ctrl-C, SIGTERM or ``request_stop()``);
    ``checkpoint`` is where it can resume from and ``signal`` the signal that
    asked for the stop (None for ``request_stop()``)."""

    def __init__(self, message: str, checkpoint: Path | None = None, epoch: int = 0, batch: int = 0,
                 signal: int | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint
        self.signal = signal
        self.epoch = epoch
        self.batch = batch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------ files


def _pack(obj: Any, arrays: dict[str, np.ndarray]) -> Any:
    """A JSON-able form of obj; arrays go to the dict ``arrays`` under generated keys."""
    if isinstance(obj, np.ndarray):
        key = f"array{len(arrays)}"
        arrays[key] = obj
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_pack(k, arrays), _pack(v, arrays)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, arrays) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint: {obj!r}")


def _unpack(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return arrays[obj["__ndarray__"]]
        if "__tuple__" in obj:
            return tuple(_unpack(v, arrays) for v in obj["__tuple__"])
        return {_unpack(k, arrays): _unpack(v, arrays) for k, v in obj["__dict__"]}
    return obj


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write a dict of arrays, numbers, strings, lists, tuples and dicts to path atomically."""
    arrays: dict[str, np.ndarray] = {}
    payload = json.dumps({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                          "state": _pack(state, arrays)})
    # mypy checks a **dict against savez's keyword allow_pickle too; the keys here are generated array names.
    return atomic_write(path, lambda f: np.savez(f, checkpoint=np.array(payload), **arrays))  # type: ignore[arg-type]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state dict written by save_checkpoint; CheckpointError naming the file if unreadable."""
    path = Path(path)
    try:
        with open_npz(path, "fastconv checkpoint", error=CheckpointError) as archive:
            if "checkpoint" not in archive.files:
                raise ValueError("it has no 'checkpoint' entry")
            header = json.loads(archive["checkpoint"].item())
            if header.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"its format is {header.get('format')!r}")
            if header.get("version") != CHECKPOINT_VERSION:
                raise ValueError(f"format version {header.get('version')!r} is not supported")
            arrays = {k: archive[k] for k in archive.files if k != "checkpoint"}
            return _unpack(header["state"], arrays)
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint at {path}") from None


# ------------------------------------------------------------------ evaluation


def _model_dtype(model: fastconv.Model) -> np.dtype:
    dtype = getattr(model, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.dtype(np.float32)


def _prepare(x: np.ndarray, normalize: Normalize | None, dtype: np.dtype) -> np.ndarray:
    if normalize is not None:
        return normalize(x, dtype=dtype)
    if x.dtype == np.uint8:
        return x.astype(dtype) * dtype.type(1 / 255)
    return x.astype(dtype, copy=False)


def evaluate(model: fastconv.Model, x: np.ndarray, y: ArrayLike, normalize: Normalize | None = None,
             batch_size: int = 256, loss: CrossEntropyLoss | NLLLoss | None = None,
             tta: str = "none", comm: Communicator | None = None) -> dict[str, Any]:
    """Loss, accuracy, logits and predictions of the model (in eval mode) on (x, y).

    ``tta`` is the test-time augmentation: ``"none"``, ``"flip"`` or
    ``"flip-translate"`` (:func:`fastconv.data.transforms.tta_views`);
    the logits are the weighted mean of the model's logits over the views.
    Returns a dict: ``loss`` (mean), ``accuracy``, ``logits`` (N, K),
    ``predictions`` (N,). The model's mode is left as it was.

    With ``comm`` (a :class:`fastconv.train.distributed.Communicator` of
    several ranks) each rank evaluates its share of the batches and every
    rank returns the whole result: the same batches as one process runs,
    so the same logits.
    """
    from fastconv.data.transforms import TTA_MODES, tta_views

    if tta not in TTA_MODES:
        raise ValueError(f"test-time augmentation must be one of {TTA_MODES}, got {tta!r}")
    loss = loss if loss is not None else CrossEntropyLoss()
    y = np.asarray(y, dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise ValueError("nothing to evaluate: no images")
    dtype = _model_dtype(model)
    starts = range(0, len(x), batch_size)
    if comm is not None and comm.size > 1:
        from fastconv.train.distributed import shard

        starts = starts[shard(len(starts), comm)]
    outputs, losses = [], []
    for start in starts:
        xb = _prepare(x[start:start + batch_size], normalize, dtype)
        views = tta_views(xb, tta)
        out = sum(dtype.type(weight) * model.predict(view, batch_size=batch_size) for weight, view in views)
        losses.append(_loss_per_image(loss, float(loss(out, y[start:start + batch_size])), len(xb)) * len(xb))
        outputs.append(out)
    if comm is not None and comm.size > 1:
        gathered = comm.allgather((outputs, losses))
        outputs = [out for part, _ in gathered for out in part]
        losses = [value for _, part in gathered for value in part]
    total = sum(losses, 0.0)
    logits = np.concatenate(outputs)
    predictions = logits.argmax(axis=1)
    return {
        "loss": total / len(x),
        "accuracy": float(np.mean(predictions == y)),
        "logits": logits,
        "predictions": predictions,
    }


def _loss_per_image(loss: object, value: float, count: int) -> float:
    """The mean loss of a batch of ``count`` images whose loss was ``value``,
    summed or averaged as the loss's reduction says: what histories record."""
    return value / count if getattr(loss, "reduction", "mean") == "sum" else value


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, num_classes: int) -> np.ndarray:
    """counts[i, j] = number of items of true class i predicted as class j."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


# ------------------------------------------------------------------ trainer


def _layer_rngs(model: fastconv.Model) -> dict[str, np.random.Generator]:
    """The random generators held by layers (Dropout), by layer name."""
    return {name: rng for name, layer in model.named_layers()
            if isinstance(rng := getattr(layer, "rng", None), np.random.Generator)}


def _architecture(model: fastconv.Model) -> list[dict[str, Any]] | None:
    """The model's layer list (a Sequential's layers, a Graph's nodes) as plain
    JSON values, or None for a model without one."""
    describe = getattr(model, "architecture", None)
    if describe is None:
        return None
    architecture = describe()
    return json.loads(json.dumps(architecture.get("layers", architecture.get("nodes"))))


def _threads() -> int | None:
    try:
        from fastconv import _runtime
        return _runtime.get_num_threads()
    except ImportError:
        return None


class Trainer:
    """Trains a model with any optimizer, loss and learning-rate schedule.

    model, optimizer, loss, schedule
        A ``fastconv.nn.model.Sequential``, a ``fastconv.optim`` optimizer built
        on it, a loss (default ``CrossEntropyLoss()``) and an optional schedule.
    batch_size, seed
        Mini-batch size; the seed of the generator that shuffles the training
        set every epoch and draws the augmentations.
    normalize, augment
        A ``fastconv.data.Normalize`` (its record goes into
        ``model.meta['normalization']``) and a ``fastconv.data.Augment``
        applied to training batches only.
    schedule_interval
        ``'epoch'`` or ``'step'`` (after every batch); default ``'step'`` for
        ``OneCycleLR`` and ``'epoch'`` for the others.
    run_dir, overwrite
        Folder for history, checkpoints and models, a path or a
        ``fastconv.train.RunDir`` (None: write nothing; ``trainer.files`` is
        the RunDir that names them).
        A folder that already holds a run is refused unless ``overwrite`` or
        ``fit(resume=True)``.
    progress
        True/False, or None for a progress bar only when stderr is a terminal.
    log
        Called with a line of text per epoch and on events (None: silent).
    adversarial
        None, or a callable ``adversarial(model, inputs, labels, rng) -> inputs``
        that replaces the normalized inputs of every training batch before
        the forward pass, such as ``fastconv.analysis.AdversarialTraining``
        (adversarial examples mixed into each batch). It draws any random
        numbers from the trainer's generator, so a resumed run repeats them.
    callbacks
        Objects with optional methods ``on_epoch_begin(trainer, epoch)`` (epoch
        from 0, also when a run resumes in the middle of it),
        ``on_batch_end(trainer, epoch, batch, loss)`` and
        ``on_epoch_end(trainer, record)``; ``trainer.request_stop()`` in the
        last two stops training as Ctrl-C does.
    prefetch
        How many batches a background thread prepares ahead (gathered,
        augmented and normalized while the current step runs), 0 for none.
        Each batch's augmentation draws from a generator of its own, seeded
        by (seed, epoch, batch), so a run gives the same batches whether or
        not they are made ahead, and a resumed run the same as one that
        never stopped.
    comm
        A :class:`fastconv.train.distributed.Communicator` of several ranks
        (``distributed.world()`` under ``mpiexec``) for data-parallel
        training, None for one process. Every rank runs the same ``fit``;
        ``batch_size`` stays the global batch, each rank takes its share of
        every batch (:func:`~fastconv.train.distributed.shard`), the
        gradients are averaged over the ranks as backward produces them,
        and the weights stay the same on every rank. Only rank 0 logs and
        writes files. BatchNorm2d uses each rank's batch statistics (its
        running statistics are averaged over the ranks at the end of every
        epoch) unless the model was made with
        :func:`~fastconv.train.distributed.sync_batchnorm`. A rank whose
        batch cannot be made, or whose loss is not finite, raises on every
        rank. Dropout and ``adversarial`` draw from each rank's own
        generator: with them, N ranks do not repeat one process's numbers.
    """

    def __init__(self, model: fastconv.Model, optimizer: Optimizer | Lookahead,
                 loss: CrossEntropyLoss | NLLLoss | None = None,
                 schedule: StepLR | CosineAnnealingLR | OneCycleLR | PiecewiseLinearLR | None = None, *,
                 batch_size: int = 64,
                 seed: int = 0, normalize: Normalize | None = None, augment: Augment | None = None,
                 schedule_interval: str | None = None, run_dir: str | os.PathLike | RunDir | None = None,
                 overwrite: bool = False, eval_batch_size: int = 256, progress: bool | None = None,
                 log: Callable[[str], None] | None = print, callbacks: Iterable[object] = (),
                 adversarial: Callable[[fastconv.Model, np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
                 | None = None, prefetch: int = 2, comm: Communicator | None = None) -> None:
        from fastconv.train.distributed import Communicator

        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if schedule_interval is None:
            schedule_interval = "step" if type(schedule).__name__ == "OneCycleLR" else "epoch"
        if schedule_interval not in ("epoch", "step"):
            raise ValueError(f"schedule_interval must be 'epoch' or 'step', got {schedule_interval!r}")
        self.model = model
        self.optimizer = optimizer
        self.loss = loss if loss is not None else CrossEntropyLoss()
        self.schedule = schedule
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.normalize = normalize
        self.augment = augment
        self.schedule_interval = schedule_interval
        if run_dir is not None and not isinstance(run_dir, RunDir):
            run_dir = RunDir(run_dir)
        self.files = run_dir
        self.run_dir = run_dir.folder if run_dir is not None else None
        self.overwrite = overwrite
        self.eval_batch_size = eval_batch_size
        self.progress = progress
        self.log = log if log is not None else (lambda line: None)
        self.callbacks = list(callbacks)
        self.adversarial = adversarial
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
            raise ValueError(f"prefetch must be a non-negative int, got {prefetch!r}")
        self.prefetch = int(prefetch)
        self.comm = comm if comm is not None else Communicator()
        if not self.comm.is_root:
            self.log = lambda line: None
            self.progress = False
        self.rng = np.random.default_rng(self.seed)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0          # epochs completed
        self.batch = 0          # batches completed in the current epoch
        self.best: dict[str, Any] | None = None  # {"epoch", "metric", "value"}
        self._perm: np.ndarray | None = None
        self._running: dict[str, Any] | None = None
        self._stop_requested = False
        self._stop_signal: int | None = None
        self._averager: Any = None
        self._stop_agreed = False  # with several ranks: whether any asked to stop, as of the last step
        if normalize is not None:
            model.meta["normalization"] = normalize.to_meta()

    # -- state ---------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop at the end of the current batch (saving a checkpoint), as Ctrl-C does."""
        self._stop_requested = True

    def _settings(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "seed": self.seed,
            "schedule_interval": self.schedule_interval,
            "augment": self.augment.config() if self.augment is not None else None,
            "loss": type(self.loss).__name__,
            "optimizer": type(self.optimizer).__name__,
            "schedule": type(self.schedule).__name__ if self.schedule is not None else None,
            "adversarial": (getattr(self.adversarial, "config", lambda: type(self.adversarial).__name__)()
                            if self.adversarial is not None else None),
        }

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint holds, as a dict."""
        return {
            "settings": self._settings(),
            "architecture": _architecture(self.model),
            "model": self.model.state_dict(),
            "meta": dict(self.model.meta),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "epoch": self.epoch,
            "batch": self.batch,
            "perm": self._perm if self.batch else None,
            "running": dict(self._running) if self.batch else None,  # type: ignore[arg-type]  # set while batch > 0
            "rng": self.rng.bit_generator.state,
            "layer_rngs": {name: g.bit_generator.state for name, g in _layer_rngs(self.model).items()},
            "history": self.history,
            "best": self.best,
            "threads": _threads(),
            "ranks": self.comm.size,
        }

    def load_state(self, state: Mapping[str, Any], source: str = "checkpoint") -> None:
        """Restore a state written by ``state()``; CheckpointError if it belongs to another set-up."""
        def mismatch(what: str) -> CheckpointError:
            return CheckpointError(f"{source} {what}")

        architecture = _architecture(self.model)
        if architecture is not None and state.get("architecture") not in (None, architecture):
            their_layers = [f"{layer['name']}:{layer['class']}" for layer in state["architecture"]]
            our_layers = [f"{layer['name']}:{layer['class']}" for layer in architecture]
            detail = "" if their_layers == our_layers else f" ({' '.join(their_layers)} vs {' '.join(our_layers)})"
            raise mismatch(f"was written for another architecture{detail}")
        theirs, ours = state["settings"], self._settings()
        for key in ours:
            if theirs.get(key) != ours[key]:
                raise mismatch(f"was trained with {key}={theirs.get(key)!r}, not {ours[key]!r}")
        try:
            self.model.load_state_dict(state["model"])
        except (ValueError, TypeError) as exc:
            raise mismatch(f"does not fit this model: {exc}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.model.meta.update(state["meta"])
        self.rng.bit_generator.state = state["rng"]
        layer_rngs = _layer_rngs(self.model)
        for name, rng_state in state["layer_rngs"].items():
            if name in layer_rngs:
                layer_rngs[name].bit_generator.state = rng_state
        self.epoch = int(state["epoch"])
        self.batch = int(state["batch"])
        self._perm = state["perm"]
        self._running = state["running"]
        self.history = list(state["history"])
        self.best = state["best"]
        threads = _threads()
        if state.get("ranks", 1) != self.comm.size:
            self.log(f"note: {source} was written by {state.get('ranks', 1)} rank(s), now {self.comm.size}; "
                     f"results may differ in the last bits from an uninterrupted run")
        elif state.get("threads") not in (None, threads):
            self.log(f"note: {source} was written with {state['threads']} threads, now {threads}; "
                     f"results may differ in the last bits from an uninterrupted run")

    def _checkpoint(self, which: str) -> Path | None:
        if self.files is None:
            return None
        if not self.comm.is_root:
            return self.files.checkpoint(which)
        return save_checkpoint(self.files.checkpoint(which), self.state())

    @property
    def _writes(self) -> bool:
        """Whether this process writes the run's files: the only one, or rank 0."""
        return self.files is not None and self.comm.is_root

    # -- interrupts ----------------------------------------------------------
    @contextlib.contextmanager
    def _deferred_interrupts(self) -> Iterator[None]:
        """Turn the first Ctrl-C or SIGTERM (what `kill` and a shutting-down
        system send) into a stop request that saves a checkpoint; a second one
        interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        stop_signals = (signal.SIGINT, signal.SIGTERM)
        previous: dict[int, Any] = {signum: signal.getsignal(signum) for signum in stop_signals}

        def on_interrupt(signum: int, frame: FrameType | None) -> None:
            if self._stop_requested:
                signal.signal(signum, previous[signum] if callable(previous[signum]) else signal.SIG_DFL)
                if signum == signal.SIGTERM and not callable(previous[signum]):
                    signal.raise_signal(signum)
                raise KeyboardInterrupt
            self._stop_requested = True
            self._stop_signal = signum
            how = "Ctrl-C" if signum == signal.SIGINT else "the terminate signal"
            self.log(f"\ninterrupt by {how}: stopping after this batch (again to stop at once)")

        for signum in stop_signals:
            signal.signal(signum, on_interrupt)
        try:
            yield
        finally:
            for stopper, handler in previous.items():
                signal.signal(stopper, handler if handler is not None else signal.SIG_DFL)

    def _stop(self) -> NoReturn:
        self._average_buffers()
        path = self._checkpoint("last")
        if self._writes:
            self.files.write_history(self.history)  # type: ignore[union-attr]  # _writes: files is set
        where = (f"after batch {self.batch} of epoch {self.epoch + 1}" if self.batch
                 else f"at the end of epoch {self.epoch}")
        saved = f"; the state {where} is saved in {path}" if path else ""
        raise TrainingInterrupted(f"training interrupted{saved}", path, self.epoch, self.batch,
                                  signal=self._stop_signal)

    # -- the loop ------------------------------------------------------------
    def _check_data(self, x: np.ndarray, y: ArrayLike, what: str) -> np.ndarray:
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"{what} images must be an (N, C, H, W) array, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        y = np.asarray(y)
        if y.shape != (len(x),):
            raise ValueError(f"{what} labels have shape {y.shape}, expected ({len(x)},)")
        if len(x) == 0:
            raise ValueError(f"{what} set is empty")
        return y.astype(np.int64)

    def _prepare_run_dir(self, resume: bool) -> bool:
        if self.run_dir is None:
            if resume:
                raise CheckpointError("resume needs a run_dir to resume from")
            return False
        assert self.files is not None  # set together with run_dir
        last = self.files.checkpoint("last")
        if self.comm.is_root:
            self.files.remove_stale_temporaries(TRAINING_FILES)
        if resume:
            if not last.is_file():
                raise CheckpointError(f"nothing to resume: {last} does not exist")
            self.load_state(load_checkpoint(last), source=str(last))
            return True
        existing = self.files.describe_existing(TRAINER_FILES)
        if existing and not self.overwrite:
            raise CheckpointError(
                f"{self.run_dir} already holds {existing}; resume it, pass overwrite=True to replace it, "
                "or choose another folder"
            )
        if self.comm.is_root:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (LAST_CHECKPOINT, BEST_CHECKPOINT, BEST_MODEL, FINAL_MODEL):
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / stale).unlink()
        return False

    def fit(self, x_train: np.ndarray, y_train: ArrayLike, epochs: int, x_val: np.ndarray | None = None,
            y_val: ArrayLike | None = None, resume: bool = False) -> list[dict[str, Any]]:
        """Train until ``epochs`` epochs are complete; return the history (one dict per epoch).

        With ``resume=True`` the state is first restored from
        ``run_dir/checkpoint-last.npz``. Raises TrainingInterrupted after
        Ctrl-C (or ``request_stop()``) once the checkpoint is saved.
        """
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        y_train = self._check_data(x_train, y_train, "training")
        if (x_val is None) != (y_val is None):
            raise ValueError("give both x_val and y_val, or neither")
        if x_val is not None and y_val is not None:  # both or neither, checked above
            y_val = self._check_data(x_val, y_val, "validation")
        resumed = self._prepare_run_dir(resume)
        if self._perm is not None and len(self._perm) != len(x_train):
            raise CheckpointError(
                f"the checkpoint was taken on {len(self._perm)} training images, now there are {len(x_train)}"
            )
        if resumed:
            where = (f"epoch {self.epoch + 1} after batch {self.batch}" if self.batch
                     else f"epoch {self.epoch + 1}")
            if self.epoch >= epochs:
                self.log(f"already trained for {self.epoch} epochs: nothing to do")
            else:
                self.log(f"resuming at {where}")
        self._stop_requested = False
        self._stop_signal = None
        if self.comm.size > 1:
            from fastconv.train.distributed import GradientAverager

            self.comm.barrier()  # rank 0 has prepared the folder
            # Every rank starts from rank 0's weights, whatever each one built.
            self.comm.bcast_arrays_(self._shared_arrays())
            self._averager = GradientAverager(self.model, self.comm)
        try:
            with self._deferred_interrupts():
                while self.epoch < epochs:
                    record = self._run_epoch(x_train, y_train, epochs, x_val, y_val)
                    self._end_epoch(record)
                    if self.epoch < epochs and self._agreed_stop(check_in=True):
                        self._stop()
        finally:
            if self._averager is not None:
                self._averager.remove()
                self._averager = None
        if self._writes:
            self.model.save(self.files.folder / FINAL_MODEL)  # type: ignore[union-attr]  # _writes: files is set
            self.files.write_history(self.history)  # type: ignore[union-attr]
        self.comm.barrier()
        return self.history

    def _shared_arrays(self) -> list[np.ndarray]:
        """The parameters and buffers, which every rank holds alike."""
        return [array for _, layer in self.model.named_layers()
                for array in (*layer.params.values(), *layer.buffers.values())]

    def _average_buffers(self) -> None:
        """Make the ranks' running statistics (each measured on its own
        images) the mean of them, so that all ranks evaluate and save the same model."""
        from fastconv.train.distributed import sync_layers

        if self.comm.size == 1 or sync_layers(self.model):
            return
        for _, layer in self.model.named_layers():
            for array in layer.buffers.values():
                total = self.comm.allreduce_(array.astype(np.float64))
                array[...] = total / self.comm.size

    def _batch(self, x: np.ndarray, y: np.ndarray, perm: np.ndarray, epoch: int, batch: int,
               dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        """(inputs, labels) of batch ``batch`` of epoch ``epoch`` (from 0): gathered,
        augmented with the batch's own generator, and normalized."""
        from fastconv.data.transforms import Augment

        idx = perm[batch * self.batch_size:(batch + 1) * self.batch_size]
        mine = slice(None)
        if self.comm.size > 1:
            from fastconv.train.distributed import shard

            mine = shard(len(idx), self.comm)
            if self.augment is None:
                idx, mine = idx[mine], slice(None)
        xb, yb = x[idx], y[idx]
        if self.augment is not None:
            # The whole batch's augmentation, of which each rank keeps its
            # part: the images one process would see.
            rng = np.random.default_rng((self.seed, epoch, batch))
            if isinstance(self.augment, Augment):
                xb = self.augment(xb, rng, indices=idx, epoch=epoch)
            else:
                xb = self.augment(xb, rng)
        return _prepare(xb[mine], self.normalize, dtype), yb[mine]

    def _run_epoch(self, x: np.ndarray, y: np.ndarray, epochs: int, x_val: np.ndarray | None,
                   y_val: ArrayLike | None) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from fastconv.data.loader import Prefetcher

        model, n, bs = self.model, len(x), self.batch_size
        num_batches = math.ceil(n / bs)
        if self.batch == 0:
            self._perm = self.rng.permutation(n)
            self._running = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0, "lr": None}
        running, perm, epoch = self._running, self._perm, self.epoch
        # Set just above, or restored with a checkpoint taken in the middle of the epoch.
        assert perm is not None and running is not None
        for callback in self.callbacks:
            hook = getattr(callback, "on_epoch_begin", None)
            if hook is not None:
                hook(self, epoch)
        dtype = _model_dtype(model)
        model.train()
        bar = tqdm(total=num_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{epochs}",
                   unit="batch", leave=False, dynamic_ncols=True,
                   disable=None if self.progress is None else not self.progress)

        def make(batch: int) -> tuple[np.ndarray, np.ndarray]:
            return self._batch(x, y, perm, epoch, batch, dtype)

        batches = (Prefetcher(make, self.batch, num_batches, self.prefetch) if self.prefetch
                   else (make(b) for b in range(self.batch, num_batches)))
        started = time.perf_counter() - running["seconds"]
        with bar, contextlib.closing(batches):
            for inputs, yb in self._checked(batches):
                running["lr"] = float(self.optimizer.lr)
                if self._averager is not None:
                    loss, correct, seen = self._distributed_step(inputs, yb, len(perm))
                else:
                    if self.adversarial is not None:
                        inputs = self.adversarial(model, inputs, yb, self.rng)
                    logits = model.forward(inputs)
                    loss = float(self.loss(logits, yb))
                    if not math.isfinite(loss):
                        raise self._diverged(loss)
                    dlogits = self.loss.backward()
                    self.optimizer.zero_grad()
                    model.backward(dlogits, input_grad=False)
                    correct, seen = int(np.count_nonzero(logits.argmax(axis=1) == yb)), len(yb)
                self.optimizer.step()
                if self.schedule is not None and self.schedule_interval == "step":
                    self.schedule.step()
                self.batch += 1
                running["loss"] += _loss_per_image(self.loss, loss, seen) * seen
                running["correct"] += correct
                running["seen"] += seen
                running["seconds"] = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{running['loss'] / running['seen']:.4f}",
                                acc=f"{running['correct'] / running['seen']:.4f}",
                                img_s=f"{running['seen'] / max(running['seconds'], 1e-9):.0f}",
                                refresh=False)
                for callback in self.callbacks:
                    hook = getattr(callback, "on_batch_end", None)
                    if hook is not None:
                        hook(self, self.epoch, self.batch, loss)
                if self.batch < num_batches and self._agreed_stop(check_in=False):
                    self._stop()
        record = {
            "epoch": self.epoch + 1,
            "lr": running["lr"],
            "train_loss": running["loss"] / running["seen"],
            "train_accuracy": running["correct"] / running["seen"],
            "val_loss": None,
            "val_accuracy": None,
            "seconds": running["seconds"],
            "images_per_second": running["seen"] / max(running["seconds"], 1e-9),
        }
        self._average_buffers()
        if x_val is not None and y_val is not None:  # both or neither, as fit checks
            result = evaluate(model, x_val, y_val, self.normalize, self.eval_batch_size, self.loss,
                              comm=self.comm)
            record["val_loss"] = result["loss"]
            record["val_accuracy"] = result["accuracy"]
        model.train()
        return record

    def _agreed_stop(self, check_in: bool) -> bool:
        """Whether to stop now: with several ranks, only when they agree, as
        of the last step's sums or (``check_in``) by asking them all now."""
        if self.comm.size == 1:
            return self._stop_requested
        if check_in:
            flag = self.comm.allreduce_(np.array([self._stop_requested], dtype=np.int32))
            self._stop_agreed = bool(flag[0])
        if self._stop_agreed:
            self._stop_requested = True
        return self._stop_agreed

    def _diverged(self, loss: float) -> TrainingDiverged:
        return TrainingDiverged(f"the loss became {loss} at epoch {self.epoch + 1}, batch {self.batch + 1}; "
                                f"try a lower learning rate")

    def _checked(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches; with several ranks, the ranks check in after each is
        made, so that one rank's bad batch raises on all of them."""
        if self.comm.size == 1:
            yield from batches
            return
        iterator = iter(batches)
        while True:
            error: Exception | None = None
            try:
                item = next(iterator)
            except StopIteration:
                return  # every rank makes the same number of batches
            except Exception as exc:  # noqa: BLE001 -- reported on every rank by check()
                error = exc
            self.comm.check(error)
            yield item

    def _distributed_step(self, inputs: np.ndarray, labels: np.ndarray, n: int) -> tuple[float, int, int]:
        """Forward and backward of this rank's part of the batch, the gradients
        averaged over the ranks; returns the loss of the whole batch (per
        image when the loss is a mean), its correct predictions and its size."""
        from fastconv.train.distributed import sync_layers

        averager, model = self._averager, self.model
        batch = min(self.batch_size, n - self.batch * self.batch_size)
        mean = getattr(self.loss, "reduction", "mean") != "sum"
        share = len(labels) / batch if mean else 1.0
        syncs = sync_layers(model)
        for layer in syncs:
            layer.comm_scale = share
        # A rank without images takes part in the batch norms' sums in
        # order, after which the gradient buckets go in the same order everywhere.
        averager.overlap = not syncs or batch >= self.comm.size
        averager.begin(share)
        self.optimizer.zero_grad()
        loss, correct = 0.0, 0
        if len(labels):
            if self.adversarial is not None:
                inputs = self.adversarial(model, inputs, labels, self.rng)
            logits = model.forward(inputs)
            loss = float(self.loss(logits, labels))
            model.backward(self.loss.backward(), input_grad=False)
            correct = int(np.count_nonzero(logits.argmax(axis=1) == labels))
        else:
            for layer in syncs:
                layer.null_pass()
            for layer in reversed(syncs):
                layer.null_backward()
        finite = math.isfinite(loss)
        total, correct_all, seen, diverged, stop = averager.finish(
            [_loss_per_image(self.loss, loss, len(labels)) * len(labels) if finite and len(labels) else 0.0,
             correct, len(labels), not finite, self._stop_requested])
        if diverged:
            raise self._diverged(math.nan)
        self._stop_agreed = bool(stop)
        return (total / seen if mean else total), int(correct_all), int(seen)

    def _end_epoch(self, record: dict[str, Any]) -> None:
        if self.schedule is not None and self.schedule_interval == "epoch":
            self.schedule.step()
        self.epoch += 1
        self.batch = 0
        self._perm = None
        self._running = None
        self.history.append(record)
        metric = "val_accuracy" if record["val_accuracy"] is not None else "train_accuracy"
        improved = self.best is None or record[metric] > self.best["value"]
        if improved:
            self.best = {"epoch": record["epoch"], "metric": metric, "value": record[metric]}
        line = (f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
                f"acc {record['train_accuracy']:.4f}")
        if record["val_accuracy"] is not None:
            line += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f}"
        line += (f" | lr {record['lr']:.3g} | {record['images_per_second']:.0f} img/s, "
                 f"{record['seconds']:.1f} s")
        self.log(line)
        if self._writes:
            self.files.write_history(self.history)  # type: ignore[union-attr]  # _writes: files is set
            # The last checkpoint goes last: a run killed before it resumes from
            # the previous epoch and writes the best files again, whereas one
            # killed between it and the best files would resume believing in a
            # best model that was never written.
            if improved:
                self._checkpoint("best")
                self.model.save(self.files.folder / BEST_MODEL)  # type: ignore[union-attr]
            self._checkpoint("last")
        for callback in self.callbacks:
            hook = getattr(callback, "on_epoch_end", None)
            if hook is not None:
                hook(self, record)


def train(model: fastconv.Model, optimizer: Optimizer, x_train: np.ndarray, y_train: ArrayLike, epochs: int,
          x_val: np.ndarray | None = None, y_val: ArrayLike | None = None, *, resume: bool = False,
          **options: Any) -> list[dict[str, Any]]:
    """``Trainer(model, optimizer, **options).fit(...)`` in one call; returns the history."""
    trainer = Trainer(model, optimizer, **options)
    return trainer.fit(x_train, y_train, epochs, x_val, y_val, resume=resume)
