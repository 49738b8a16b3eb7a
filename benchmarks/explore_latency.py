"""How long the explorer's page waits: round trips to a running ``fastconv explore``.

    python benchmarks/explore_latency.py RUN_DIR [RUN_DIR ...] [--requests 50] [--threads N]

For each run folder this starts ``fastconv explore RUN_DIR --port 0`` in a
child process, waits until its top-images index is built (so that the
background job does not share the cores with the requests), and times, over
HTTP on the loopback interface, each request the page makes as you use it:

* ``activations``: ``GET /api/activations`` for a test image (input -> the
  prediction and every layer's activations);
* ``frame``: ``POST /api/inputs`` with a PNG at the model's input size, what
  the live webcam mode sends for every frame (decode, check, activations);
* ``deconvnet``: ``GET /api/projection`` of a unit of the last convolution
  onto a test image.

Each kind of request runs ``--requests`` times on different images (and
units) after five warm-up requests; the script prints the median and the
90th percentile in milliseconds as rows of the table in benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

WARM_UP = 5


def _start(run_dir: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "fastconv.cli", "explore", run_dir, "--port", "0"]
    if threads is not None:
        command += ["--threads", str(threads)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.stdout is not None
    for line in child.stdout:
        found = re.search(r"at (http://\S+/) \(Ctrl-C stops\)", line)
        if found:
            return child, found.group(1)
        print(line, end="", file=sys.stderr)
    raise SystemExit(f"fastconv explore {run_dir} stopped before serving (exit status {child.wait()})")


def _get(url: str, data: bytes | None = None) -> bytes:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def _timed(calls: list[tuple[str, bytes | None]]) -> list[float]:
    for url, data in calls[:WARM_UP]:
        _get(url, data)
    times = []
    for url, data in calls[WARM_UP:]:
        start = time.perf_counter()
        _get(url, data)
        times.append(1000 * (time.perf_counter() - start))
    return times


def measure(base: str, requests: int) -> dict[str, list[float]]:
    """Milliseconds of each request kind against the server at ``base``."""
    deadline = time.monotonic() + 3600
    while json.loads(_get(base + "api/status"))["state"] not in ("done", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit("the top-images index was not built within an hour")
        time.sleep(0.5)
    info = json.loads(_get(base + "api/info"))
    count = WARM_UP + requests
    tests = info["splits"]["test"]
    inputs = [f"test/{i % tests}" for i in range(count)]
    convolutions = [layer for layer in info["layers"] if layer["type"] == "Conv2d"]
    last = convolutions[-1]

    def url(path: str, **params: object) -> str:
        return f"{base}api/{path}?{urllib.parse.urlencode(params)}"

    frames = [_get(url("image", input=name)) for name in inputs]
    return {
        "activations": _timed([(url("activations", input=name), None) for name in inputs]),
        "frame": _timed([(base + "api/inputs", frame) for frame in frames]),
        "deconvnet": _timed([(url("projection", input=name, layer=last["name"], unit=i % last["units"],
                                  method="deconvnet"), None) for i, name in enumerate(inputs)]),
    }


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--requests", type=int, default=50, help="timed requests of each kind (default 50)")
    parser.add_argument("--threads", type=int, help="threads of the server's kernels (default: the command's, 1)")
    args = parser.parse_args(argv)
    print(f"{datetime.date.today()}, {_processor()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; {args.requests} requests of each kind")
    print("| run | request | median ms | 90th percentile ms |")
    print("|---|---|---|---|")
    for run_dir in args.runs:
        child, base = _start(run_dir, args.threads)
        try:
            results = measure(base, args.requests)
        finally:
            child.send_signal(signal.SIGINT)
            child.wait(30)
        for kind, times in results.items():
            tenth = statistics.quantiles(times, n=10)[-1]
            print(f"| {os.path.basename(os.path.normpath(run_dir))} | {kind} | {statistics.median(times):.1f} | "
                  f"{tenth:.1f} |", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
