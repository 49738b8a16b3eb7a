"""Batches prepared ahead, in a background thread, while the current one trains.

``Prefetcher(make, start, stop, depth=2)`` calls ``make(i)`` for i = start,
..., stop - 1 in a thread of its own, keeping at most ``depth`` results
waiting, and hands them out in order when iterated. The compiled kernels
and NumPy's copies release the GIL, so gathering, augmenting and
normalizing the next batch overlaps the step on the current one, and a
batch is never made more than ``depth`` steps before it is used.

An exception raised by ``make`` is raised again by the iteration, at the
batch that raised it. ``close()`` (or leaving the ``with`` block) stops the
thread and discards what it made ahead: a training step interrupted mid-epoch
leaves nothing running behind it.
"""
from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Generic, TypeVar

from fastconv import _checks

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Self

__all__ = ["Prefetcher"]

T = TypeVar("T")


class _Failure:
    """What the thread hands over in place of a result when ``make`` raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """``make(i)`` for i in [start, stop), made up to ``depth`` ahead in a background thread."""

    def __init__(self, make: Callable[[int], T], start: int, stop: int, depth: int = 2) -> None:
        if not callable(make):
            raise TypeError(f"make must be callable, got {make!r}")
        self._next = int(start)
        self._stop = int(stop)
        self._queue: queue.Queue[T | _Failure] = queue.Queue(maxsize=_checks.positive_int(depth, "depth"))
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(make, int(start), int(stop)),
                                        name="fastconv-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, make: Callable[[int], T], start: int, stop: int) -> None:
        for i in range(start, stop):
            if self._closing.is_set():
                return
            try:
                item: T | _Failure = make(i)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, who raises it
                item = _Failure(error)
            while not self._closing.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item, _Failure):
                return

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> T:
        if self._next >= self._stop or self._closing.is_set():
            raise StopIteration
        item = self._queue.get()
        self._next += 1
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the thread and drop the batches it made ahead; iterating then stops."""
        self._closing.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        while not self._queue.empty():
            self._queue.get_nowait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
