"""Long work in the background, one job at a time, with its progress.

The explorer's long work (the top-images index, feature visualizations)
runs in one worker thread, on its own copy of the model, so that the
requests of the page never wait for it. A job asked for twice is the same
job: the second request sees the first one's progress.
"""
from __future__ import annotations

import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Job", "Jobs", "Stopped"]

STATES = ("queued", "running", "done", "failed")


class Stopped(Exception):
    """Raised by :meth:`Job.progress` once the server stops, to end the job's work."""


@dataclass
class Job:
    """One piece of background work: ``state`` is one of queued, running, done
    or failed; ``done`` of ``total`` steps; ``result`` once done, ``error`` (one
    line) once failed."""

    key: str
    title: str
    state: str = "queued"
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, done: int, total: int) -> None:
        """Record that ``done`` of ``total`` steps are done; raises :class:`Stopped`
        once the server stops, so that the work reporting its progress ends."""
        if self._stop.is_set():
            raise Stopped(f"{self.title}: the server stopped")
        with self._lock:
            self.done, self.total = int(done), int(total)

    def status(self) -> dict[str, Any]:
        """What the page shows: the state, the progress and the error, as JSON-able values."""
        with self._lock:
            fraction = self.done / self.total if self.total else (1.0 if self.state == "done" else 0.0)
            seconds = None
            if self.started is not None:
                seconds = round((self.finished or time.monotonic()) - self.started, 2)
            return {"key": self.key, "title": self.title, "state": self.state, "done": self.done,
                    "total": self.total, "fraction": round(fraction, 4), "seconds": seconds, "error": self.error}


class Jobs:
    """A queue of jobs run one after another by one worker thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="explore-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def get(self, key: str) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def submit(self, key: str, title: str, work: Callable[[Job], Any]) -> Job:
        """The job called ``key``: the one already queued, running or done, else a
        new one running ``work(job)`` (a failed one is tried again)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.state != "failed":
                return job
            job = Job(key=key, title=title, _stop=self._stop)
            self._jobs[key] = job
        self._executor.submit(self._run, job, work)
        return job

    @staticmethod
    def _run(job: Job, work: Callable[[Job], Any]) -> None:
        job.started = time.monotonic()
        job.state = "running"
        try:
            result = work(job)
        except Stopped as error:
            job.error = str(error)
            job.state = "failed"
        except Exception as error:  # a failed job reports its error to the page; the server goes on
            job.error = " ".join(f"{type(error).__name__}: {error}".split())
            job.state = "failed"
            traceback.print_exc()
        else:
            job.result = result
            job.state = "done"
        finally:
            job.finished = time.monotonic()

    def shutdown(self, wait: bool = True) -> None:
        """Stop: queued jobs are dropped, the running one ends at its next progress report."""
        self._stop.set()
        self._executor.shutdown(wait=wait, cancel_futures=True)
