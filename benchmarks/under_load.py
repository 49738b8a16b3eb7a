"""fastconv and PyTorch when another process keeps one of the cores busy.

OpenMP's threads wait for each other at the end of every parallel loop. By
default a waiting thread spins for a while before it sleeps; on a machine
where another process holds one of the cores, a spinning thread stays on
that contended core, and the loop ends only when the scheduler gives it a
turn. A sleeping thread is woken on whichever core is free. So the wait
policy (``OMP_WAIT_POLICY``, read once when the OpenMP runtime starts) and
the thread count decide how much a small batch suffers under load.

For each wait policy (the runtime's default, then ``passive``) this script
starts a fresh process, so that the policy applies to fastconv's and
PyTorch's OpenMP alike, and in it times cifar6 and mnist2 inference and
training steps at batch 1, 16 and 128 (median of repeated calls), first on
the machine as it is, then with a busy loop pinned to core 0:

    python benchmarks/under_load.py --threads 2

prints, per policy, net, batch and mode, each engine's idle and loaded
times and the slowdown (loaded / idle). Needs PyTorch.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

NETS = ("cifar6", "mnist2")
BATCHES = (1, 16, 128)
POLICIES = ("default", "passive")


def _busy(stop):
    os.sched_setaffinity(0, {0})
    while not stop.is_set():
        pass


def median_time(fn, seconds):
    fn()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(threads, seconds):
    """{(net, batch, mode, engine): (idle s, loaded s)} in this process."""
    from fastconv.bench import harness

    harness._set_threads(threads)
    calls = {}
    for net in NETS:
        for batch in BATCHES:
            for training in (False, True):
                for engine in ("fastconv", "torch"):
                    mode = "train step" if training else "inference"
                    calls[(net, batch, mode, engine)] = harness.model_call(net, batch, engine, training).fn
    idle = {key: median_time(fn, seconds) for key, fn in calls.items()}
    stop = multiprocessing.Event()
    busy = multiprocessing.Process(target=_busy, args=(stop,), daemon=True)
    busy.start()
    try:
        time.sleep(0.5)
        loaded = {key: median_time(fn, seconds) for key, fn in calls.items()}
    finally:
        stop.set()
        busy.join()
    return [{"net": k[0], "batch": k[1], "mode": k[2], "engine": k[3], "idle_s": idle[k], "loaded_s": loaded[k]}
            for k in calls]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent on each point (default: 1)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.threads, args.seconds)))
        return
    print(f"threads {args.threads}; a busy loop on core 0 for the loaded times; medians over {args.seconds} s")
    print("| wait policy | net | batch | mode | fastconv idle ms | loaded ms | slowdown "
          "| torch idle ms | loaded ms | slowdown | torch / fastconv loaded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for policy in POLICIES:
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads),
                              "--seconds", str(args.seconds)], env=env, check=True, capture_output=True, text=True)
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        by_key = {(r["net"], r["batch"], r["mode"], r["engine"]): r for r in rows}
        for net in NETS:
            for batch in BATCHES:
                for mode in ("inference", "train step"):
                    ours, theirs = by_key[(net, batch, mode, "fastconv")], by_key[(net, batch, mode, "torch")]
                    print(f"| {policy} | {net} | {batch} | {mode} "
                          f"| {1e3 * ours['idle_s']:.2f} | {1e3 * ours['loaded_s']:.2f} "
                          f"| {ours['loaded_s'] / ours['idle_s']:.2f} "
                          f"| {1e3 * theirs['idle_s']:.2f} | {1e3 * theirs['loaded_s']:.2f} "
                          f"| {theirs['loaded_s'] / theirs['idle_s']:.2f} "
                          f"| {theirs['loaded_s'] / ours['loaded_s']:.2f} |")


if __name__ == "__main__":
    main()
