"""Data-parallel training and evaluation over MPI (mpi4py).

``mpiexec -n N fastconv train ...`` runs the same command on N processes
(ranks). :func:`world` is the one place that finds out whether the process
was started that way: it looks at the variables MPI launchers set
(``OMPI_COMM_WORLD_SIZE``, ``PMI_SIZE``, ``PMIX_RANK``, ...) before it
imports mpi4py, so a plain ``fastconv`` never loads MPI, and under a launcher
without mpi4py it raises :class:`DistributedError` saying how to install it.

What the ranks share:

:class:`Communicator`
    The few collectives training needs (sum in place, gather of arrays,
    broadcast), the same calls with one process, where they do nothing.
:class:`GradientAverager`
    Averages the parameter gradients of a backward pass over the ranks.
    The gradients are grouped in buckets, layers in backward order; as soon
    as ``backward`` has finished every layer of a bucket (a backward hook on
    each layer with parameters tells it), the bucket's non-blocking
    allreduce starts while the layers below compute, and
    :meth:`~GradientAverager.finish` waits for all of them before the
    optimizer's step. Buckets start in the same order on every rank, as MPI
    requires of collectives. Their buffers are made once and reused.
:func:`sync_batchnorm`
    A model whose BatchNorm2d layers normalize with the statistics of the
    whole global batch (summed over the ranks in forward and in backward),
    so that N ranks compute what one process computes on the whole batch.
:func:`shard`
    The part of a batch or of a data set one rank takes: contiguous, the
    parts of all ranks disjoint and together the whole.
:func:`map_shards`, :func:`top_k_order`
    A pass over a data set split among the ranks (each its shard, the
    results gathered on rank 0), and the order that merges per-rank
    top-k candidates into the top-k one process finds.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from fastconv._runtime import allowed_cores
from fastconv.nn.graph import Graph
from fastconv.nn.layers import BatchNorm2d, Layer
from fastconv.nn.model import Sequential

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import fastconv

__all__ = [
    "Communicator", "DistributedError", "RankFailed", "GradientAverager", "SyncBatchNorm2d",
    "world", "launched_under_mpi", "shard", "map_shards", "top_k_order", "sync_batchnorm", "default_threads",
    "abort_on_error",
]

# Variables that MPI launchers put in each process's environment: Open MPI's
# mpiexec, MPICH/Intel MPI's Hydra and PMI-based launchers (srun included).
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_SIZE")
INSTALL_HINT = 'pip install "fastconv[mpi]" (mpi4py and Open MPI)'
DEFAULT_BUCKET_BYTES = 1 << 20
T = TypeVar("T")


class DistributedError(RuntimeError):
    """MPI was asked for and cannot be used (not installed, not launched)."""


class RankFailed(ValueError):
    """Raised on every rank when one rank hit an error (bad data, a diverged
    loss) at a point where all ranks check in together; ``rank`` is the one
    that failed."""

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank = rank


def launched_under_mpi() -> bool:
    """Whether an MPI launcher started this process (read from the environment, without importing MPI)."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


class Communicator:
    """The ranks of a data-parallel job, or the one process of a plain run.

    Built on an mpi4py communicator (``comm``), or on none: then ``size`` is
    1 and every collective returns its input.
    """

    def __init__(self, comm: Any = None) -> None:
        self.comm = comm
        self.rank: int = 0 if comm is None else int(comm.Get_rank())
        self.size: int = 1 if comm is None else int(comm.Get_size())
        self.mpi: Any = None
        if comm is not None:
            from mpi4py import MPI
            self.mpi = MPI

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size})"

    @property
    def is_root(self) -> bool:
        """Rank 0: the rank that prints and writes files."""
        return self.rank == 0

    def allreduce_(self, array: np.ndarray) -> np.ndarray:
        """Sum ``array`` (contiguous) over the ranks, in place; returns it."""
        if self.comm is not None:
            self.comm.Allreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)
        return array

    def iallreduce_(self, array: np.ndarray) -> Any:
        """Start summing ``array`` over the ranks in place; returns the request to wait for (None alone)."""
        if self.comm is None:
            return None
        return self.comm.Iallreduce(self.mpi.IN_PLACE, array, op=self.mpi.SUM)

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order, on every rank."""
        return [value] if self.comm is None else list(self.comm.allgather(value))

    def gather(self, value: Any, root: int = 0) -> list[Any] | None:
        """Every rank's ``value``, in rank order, on ``root``; None on the others."""
        if self.comm is None:
            return [value]
        gathered = self.comm.gather(value, root=root)
        return None if gathered is None else list(gathered)

    def bcast(self, value: Any, root: int = 0) -> Any:
        """``root``'s value on every rank."""
        return value if self.comm is None else self.comm.bcast(value, root=root)

    def bcast_arrays_(self, arrays: Sequence[np.ndarray], root: int = 0) -> None:
        """Overwrite every rank's arrays with root's, in place."""
        if self.comm is not None:
            for array in arrays:
                self.comm.Bcast(array, root=root)

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.Barrier()

    def abort(self, status: int = 1) -> None:
        """End every rank of the job now (MPI_Abort)."""
        if self.comm is not None:
            self.comm.Abort(status)

    def check(self, error: BaseException | None) -> None:
        """A point where every rank checks in: raises :class:`RankFailed` on
        every rank when ``error`` is set on any (naming the first such rank
        and its message), else returns."""
        if self.comm is None:
            if error is not None:
                raise error
            return
        flags = np.zeros(self.size, dtype=np.int32)
        flags[self.rank] = error is not None
        self.allreduce_(flags)
        failed = np.flatnonzero(flags)
        if len(failed) == 0:
            return
        first = int(failed[0])
        message = self.bcast(" ".join(f"{type(error).__name__}: {error}".split()) if self.rank == first else None,
                             root=first)
        raise RankFailed(f"rank {first} of {self.size} failed: {message}", first) from error


_WORLD: Communicator | None = None


def world() -> Communicator:
    """The job's communicator: MPI's world when an MPI launcher started this
    process, else a one-process Communicator (mpi4py is not imported)."""
    global _WORLD
    if _WORLD is None:
        if not launched_under_mpi():
            _WORLD = Communicator()
        else:
            try:
                from mpi4py import MPI
            except ImportError:
                launcher = next(name for name in LAUNCHER_VARIABLES if name in os.environ)
                raise DistributedError(f"started by an MPI launcher ({launcher}={os.environ[launcher]}) but "
                                       f"mpi4py is not installed: {INSTALL_HINT}") from None
            _WORLD = Communicator(MPI.COMM_WORLD)
    return _WORLD


def default_threads(comm: Communicator) -> int:
    """Kernel threads per rank: the cores this process may use divided among
    the ranks on its node, at least 1, so ranks x threads does not exceed
    the cores (a launcher that binds each rank to its cores has already
    divided them)."""
    allowed = allowed_cores()
    cores = os.cpu_count() or allowed
    if allowed < cores:
        return max(1, allowed)
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE") or os.environ.get("MPI_LOCALNRANKS")
    ranks_here = int(local) if local and local.isdigit() else comm.size
    return max(1, cores // max(1, ranks_here))


def shard(count: int, comm: Communicator, start: int = 0) -> slice:
    """This rank's contiguous part of ``count`` items beginning at ``start``:
    the first ``count % size`` ranks take one item more, and the parts of
    all ranks are disjoint and cover every item in order."""
    base, extra = divmod(count, comm.size)
    lo = comm.rank * base + min(comm.rank, extra)
    return slice(start + lo, start + lo + base + (comm.rank < extra))


def map_shards(count: int, comm: Communicator, compute: Callable[[slice], T],
               root: int = 0) -> list[tuple[slice, T]] | None:
    """Run ``compute`` on this rank's :func:`shard` of ``count`` items (a
    rank whose shard is empty skips it) and gather the ``(shard, result)``
    pairs of the ranks that ran it on ``root``, in rank order, hence in the
    items' order; None on the other ranks.

    Every rank checks in before the gather: when ``compute`` raised on any
    rank, every rank raises :class:`RankFailed` naming it (alone, the error
    itself), so no rank is left waiting.
    """
    part = shard(count, comm)
    result: T | None = None
    error: BaseException | None = None
    if part.stop > part.start:
        try:
            result = compute(part)
        except Exception as caught:
            error = caught
    comm.check(error)
    gathered = comm.gather((part, result) if part.stop > part.start else None, root=root)
    if gathered is None:
        return None
    return [entry for entry in gathered if entry is not None]


def top_k_order(values: np.ndarray, indices: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` best candidates: the largest ``values`` first,
    equal values by smaller ``indices`` (each item's index in the whole data
    set). Candidates pooled from every rank's own top k give, in this order,
    the top k of the whole set: ties are broken by the global index, not by
    which rank found them."""
    return np.lexsort((np.asarray(indices), -np.asarray(values, dtype=np.float64)))[:k]


@contextlib.contextmanager
def abort_on_error(comm: Communicator, command: str) -> Iterator[None]:
    """Around a command run on several ranks: an error that only this rank
    raised would leave the others waiting in a collective, so it is printed
    with the rank's number and the whole job ends (MPI_Abort). Errors that
    every rank raises together (:class:`RankFailed`) and interrupts pass."""
    if comm.size == 1:
        yield
        return
    try:
        yield
    except (RankFailed, KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        from fastconv.train.trainer import TrainingInterrupted

        if isinstance(error, TrainingInterrupted):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"fastconv {command}: error on rank {comm.rank} of {comm.size}: {message}", file=sys.stderr,
              flush=True)
        comm.abort(1)
        raise


# ------------------------------------------------------------------ gradients


class _Bucket:
    def __init__(self, layers: list[Layer], dtype: np.dtype) -> None:
        self.layers = layers
        self.entries = [(layer, key) for layer in layers for key in layer.grads]
        self.buffer = np.zeros(sum(layer.grads[key].size for layer, key in self.entries), dtype=dtype)
        self.ready: set[int] = set()
        self.request: Any = None


class GradientAverager:
    """Averages a model's parameter gradients over the ranks, bucket by
    bucket as backward produces them.

    Per step: ``begin(scale)`` before ``backward``, ``finish()`` after it
    (and before the optimizer's step). ``scale`` is this rank's share of the
    global batch's loss: its images over all images for a mean loss, 1 for a
    summed one; the result is then exactly the gradient one process computes
    on the whole batch. A rank without images in a step calls ``begin`` and
    ``finish`` without ``backward`` and contributes zeros. ``overlap=False``
    starts every allreduce in ``finish`` (for measuring what overlapping saves).
    """

    def __init__(self, model: fastconv.Model, comm: Communicator, bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                 overlap: bool = True) -> None:
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.comm = comm
        self.overlap = overlap
        layers = [layer for _, layer in model.named_layers() if layer.params]
        dtype = np.dtype(getattr(model, "dtype", None) or np.float32)
        self.buckets: list[_Bucket] = []
        current: list[Layer] = []
        size = 0
        # Backward reaches the last layers first: they fill the first buckets.
        for layer in reversed(layers):
            current.append(layer)
            size += sum(g.nbytes for g in layer.grads.values())
            if size >= bucket_bytes:
                self.buckets.append(_Bucket(current, dtype))
                current, size = [], 0
        if current:
            self.buckets.append(_Bucket(current, dtype))
        self._bucket_of = {id(layer): i for i, bucket in enumerate(self.buckets) for layer in bucket.layers}
        self._handles = [layer.register_backward_hook(self._on_backward) for layer in layers] if comm.size > 1 else []
        self._next = 0
        self._scale = 1.0
        self._stats = np.zeros(0)
        self._stats_request: Any = None
        self.bytes_per_step = sum(b.buffer.nbytes for b in self.buckets)

    def remove(self) -> None:
        """Unregister the backward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def begin(self, scale: float) -> None:
        self._scale = scale
        self._next = 0
        for bucket in self.buckets:
            bucket.ready.clear()
            bucket.request = None

    def _on_backward(self, layer: Layer, grad_input: np.ndarray | None, grad_output: np.ndarray) -> None:
        index = self._bucket_of.get(id(layer))
        if index is None or not self.overlap:
            return None
        self.buckets[index].ready.add(id(layer))
        while self._next < len(self.buckets) and len(self.buckets[self._next].ready) == len(
                self.buckets[self._next].layers):
            self._start(self.buckets[self._next])
            self._next += 1
        self._progress()
        return None

    def _progress(self) -> None:
        # MPI advances non-blocking collectives inside MPI calls; testing the
        # open requests between layers moves them on while backward computes.
        active = [b.request for b in self.buckets[:self._next] if b.request is not None]
        if active:
            self.comm.mpi.Request.Testall(active)

    def _start(self, bucket: _Bucket) -> None:
        offset = 0
        scale = bucket.buffer.dtype.type(self._scale)
        for layer, key in bucket.entries:
            grad = layer.grads[key]
            np.multiply(grad.reshape(-1), scale, out=bucket.buffer[offset:offset + grad.size])
            offset += grad.size
        bucket.request = self.comm.iallreduce_(bucket.buffer)

    def finish(self, stats: Sequence[float] = ()) -> np.ndarray:
        """Wait for every bucket (starting those backward has not started) and
        write the averaged gradients back; ``stats`` are summed over the
        ranks alongside, in float64, and returned."""
        self._stats = np.array(stats, dtype=np.float64)
        if self.comm.size == 1:
            return self._stats
        self._stats_request = self.comm.iallreduce_(self._stats)
        while self._next < len(self.buckets):
            self._start(self.buckets[self._next])
            self._next += 1
        self.comm.mpi.Request.Waitall([b.request for b in self.buckets] + [self._stats_request])
        for bucket in self.buckets:
            offset = 0
            for layer, key in bucket.entries:
                grad = layer.grads[key]
                grad.reshape(-1)[...] = bucket.buffer[offset:offset + grad.size]
                offset += grad.size
        return self._stats


# ------------------------------------------------------------------ synchronized batch norm


class _SyncRecord:
    def __init__(self, xhat: np.ndarray, inv_std: np.ndarray, count: int) -> None:
        self.xhat = xhat
        self.inv_std = inv_std
        self.count = count


class _SyncKernels:
    """What a BatchNorm2d's training record calls for backward, with the
    per-channel sums of the gradient taken over every rank."""

    def __init__(self, layer: SyncBatchNorm2d) -> None:
        self.layer = layer

    def batchnorm2d_backward(self, dy: np.ndarray, record: _SyncRecord,
                             through_relu: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        layer = self.layer
        dbias = dy.sum(axis=(0, 2, 3), dtype=np.float64)
        dweight = np.einsum("nchw,nchw->c", dy, record.xhat, dtype=np.float64)
        # This rank's dy is the gradient of its own share of the loss; scaled
        # by that share, the sums over ranks are those of the global batch.
        sums = np.concatenate([dbias, dweight]) * layer.comm_scale
        layer.comm.allreduce_(sums)
        c = layer.num_features
        mean_dy = (sums[:c] / record.count).reshape(1, -1, 1, 1)
        mean_dy_xhat = (sums[c:] / record.count).reshape(1, -1, 1, 1)
        share = layer.comm_scale if layer.comm_scale > 0 else 1.0
        weight = layer.params["weight"].astype(np.float64).reshape(1, -1, 1, 1)
        inv_std = record.inv_std.reshape(1, -1, 1, 1)
        dx = weight * inv_std * (dy - (mean_dy + record.xhat * mean_dy_xhat) / share)
        dtype = dy.dtype
        return dx.astype(dtype), dweight.astype(dtype), dbias.astype(dtype)


class SyncBatchNorm2d(BatchNorm2d):
    """A BatchNorm2d that, in training, normalizes with the mean and variance
    of the global batch: the per-channel sums are added over the ranks in
    forward, and the gradient's sums in backward. Evaluation is BatchNorm2d's.

    It shares its parameters, gradients and buffers with the BatchNorm2d it
    was made from, and describes itself as that BatchNorm2d, so that the
    checkpoints and models written while it trains load as plain ones.
    """

    def __init__(self, layer: BatchNorm2d, comm: Communicator) -> None:
        super().__init__(layer.num_features, eps=layer.eps, momentum=layer.momentum,
                         dtype=layer.params["weight"].dtype)
        self.params, self.grads, self.buffers = layer.params, layer.grads, layer.buffers
        self.training = layer.training
        self.comm = comm
        self.comm_scale = 1.0

    def _forward_train(self, kernels: Any, x: np.ndarray, relu_input: bool) -> tuple[np.ndarray, Any]:
        from fastconv.nn.layers import _BatchNormTrainCache

        if relu_input:
            raise RuntimeError("SyncBatchNorm2d does not run a ReLU's pass fused in")
        c = self.num_features
        local = np.empty(2 * c + 1, dtype=np.float64)
        local[:c] = x.sum(axis=(0, 2, 3), dtype=np.float64)
        local[c:2 * c] = np.einsum("nchw,nchw->c", x, x, dtype=np.float64)
        local[2 * c] = x.shape[0] * x.shape[2] * x.shape[3]
        self.comm.allreduce_(local)
        count = int(local[2 * c])
        if count < 2:
            raise ValueError(f"BatchNorm2d in training mode needs more than 1 value per channel over all ranks, "
                             f"got {count}")
        mean = local[:c] / count
        var = np.maximum(local[c:2 * c] / count - mean * mean, 0.0)
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x - mean.reshape(1, -1, 1, 1)) * inv_std.reshape(1, -1, 1, 1)
        weight, bias = self.params["weight"], self.params["bias"]
        y = (xhat * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)).astype(x.dtype)
        running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
        m = self.momentum
        running_mean[...] = (1.0 - m) * running_mean + m * mean
        running_var[...] = (1.0 - m) * running_var + m * var * (count / (count - 1))
        # The record's "kernels" are what its backward calls: here, the synchronized sums.
        return y, _BatchNormTrainCache(_SyncKernels(self), _SyncRecord(xhat, inv_std, count),  # type: ignore[arg-type]
                                       False)

    def null_pass(self) -> None:
        """Take part in this layer's forward and backward sums with nothing:
        what a rank without images in a step does, so the others do not wait."""
        self.comm.allreduce_(np.zeros(2 * self.num_features + 1))

    def null_backward(self) -> None:
        self.comm.allreduce_(np.zeros(2 * self.num_features))


# Saved under the name of the layer it stands for: its files load as a BatchNorm2d.
SyncBatchNorm2d.__name__ = "BatchNorm2d"


def sync_batchnorm(model: fastconv.Model, comm: Communicator) -> fastconv.Model:
    """A model made of the same layers, each BatchNorm2d replaced by a
    :class:`SyncBatchNorm2d` sharing its parameters and statistics (so an
    optimizer built on either model trains both); the model itself when it
    has no BatchNorm2d."""
    def convert(layer: Layer) -> Layer:
        return SyncBatchNorm2d(layer, comm) if type(layer) is BatchNorm2d else layer

    if not any(type(layer) is BatchNorm2d for _, layer in model.named_layers()):
        return model
    clone: fastconv.Model
    if isinstance(model, Graph):
        graph = Graph()
        for name, layer, sources in model.nodes():
            graph.add(name, convert(layer), *sources)
        graph._output = model._output
        clone = graph
    elif isinstance(model, Sequential):
        clone = Sequential([(name, convert(layer)) for name, layer in model.named_layers()])
    else:
        raise TypeError(f"sync_batchnorm takes a Sequential or a Graph, got {type(model).__name__}")
    clone.train(model.training)
    clone.meta = model.meta
    return clone


def sync_layers(model: fastconv.Model) -> list[SyncBatchNorm2d]:
    """The model's SyncBatchNorm2d layers, in the order forward runs them."""
    return [layer for _, layer in model.named_layers() if isinstance(layer, SyncBatchNorm2d)]
