"""A noisy neighbour on this machine: CPU load in periods of seconds to minutes, so that a
quiet host can be measured the way a shared cloud VM behaves (the AMD EPYC Zen 2 VM of
issue #19: 1.7-3x slower for minutes at a time, the rounds of one slow period still 16%
apart, steal time flat). Nothing in the product imports it; benchmarks run beside it.

Calm periods (no load) alternate with slow ones. A slow period keeps 1 or 2 worker
processes busy for a share of every 10 ms (its duty, drawn per period, jittered every 2 s),
so ONNX Runtime's two intra-op threads share the cores with it. Period lengths are
log-uniform: calm 15-120 s, slow 20-240 s. The schedule comes from ``--seed`` alone and is
written as it runs, one JSON line per period (``t0``, ``t1`` in Unix seconds, ``workers``,
``duty``), so an analysis can say which period a measurement met.

    .venv/bin/python benchmarks/noisy_neighbour.py --seed 1 --log runs/n1.jsonl -- \
        .venv/bin/shaperctl profile --device cpu --supernet runs/minilm-super --out runs/noisy-a

runs the command beside the load and stops the load when it exits (its exit status is
this one's); ``--minutes N`` without a command loads the machine for N minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

QUANTUM_S = 0.010  # a worker's busy + idle cycle
JITTER_S = 2.0  # how often a slow period's duty moves
CALM_S = (15.0, 120.0)
SLOW_S = (20.0, 240.0)


def _worker(duty: mp.Value, stop: mp.Event) -> None:
    """Busy for ``duty`` of every ``QUANTUM_S``; asleep while duty is 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not stop.is_set():
        d = duty.value
        if d <= 0:
            time.sleep(0.05)
            continue
        end = time.perf_counter() + d * QUANTUM_S
        x = 0
        while time.perf_counter() < end:
            x += 1
        if d < 1:
            time.sleep((1 - d) * QUANTUM_S)


def _interrupted(*_) -> None:
    raise KeyboardInterrupt


def _log_uniform(rng: random.Random, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return math.exp(rng.uniform(math.log(lo), math.log(hi)))


def schedule(seed: int, seconds: float) -> list[dict]:
    """The periods of ``seconds`` from ``seed``: calm first, then slow and calm in turn."""
    rng, t, out, slow = random.Random(seed), 0.0, [], False
    while t < seconds:
        length = _log_uniform(rng, SLOW_S if slow else CALM_S)
        period = {"start_s": round(t, 1), "seconds": round(length, 1),
                  "workers": rng.choice((1, 2)) if slow else 0,
                  "duty": round(rng.uniform(0.4, 1.0), 2) if slow else 0.0}
        out.append(period)
        t += length
        slow = not slow
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--minutes", type=float, default=None,
                    help="how long to load the machine (default: until the command exits)")
    ap.add_argument("--log", type=Path, required=True, help="JSON lines, one per period")
    ap.add_argument("command", nargs="*", help="run beside the load (after --)")
    args = ap.parse_args()
    if args.minutes is None and not args.command:
        ap.error("give --minutes, a command after --, or both")
    seconds = (args.minutes or 24 * 60) * 60
    periods = schedule(args.seed, seconds)
    try:
        args.log.open("a").close()
        child = subprocess.Popen(args.command) if args.command else None
    except OSError as e:
        ap.error(f"{e.filename or args.command[0]}: {e.strerror}")
    duties = [mp.Value("d", 0.0) for _ in range(2)]
    stop = mp.Event()
    workers = [mp.Process(target=_worker, args=(d, stop), daemon=True) for d in duties]
    for w in workers:
        w.start()
    signal.signal(signal.SIGTERM, _interrupted)
    rng = random.Random(args.seed + 1)
    start = time.time()
    try:
        with args.log.open("a") as log:
            for p in periods:
                t0 = time.time()
                print(f"neighbour: {p['workers']} worker(s) at duty {p['duty']:.2f} for "
                      f"{p['seconds']:.0f} s", file=sys.stderr)
                end = start + min(p["start_s"] + p["seconds"], seconds)
                try:
                    while time.time() < end and (child is None or child.poll() is None):
                        for i, d in enumerate(duties):
                            d.value = (min(1.0, max(0.1, p["duty"] + rng.uniform(-0.15, 0.15)))
                                       if i < p["workers"] else 0.0)
                        time.sleep(max(0.0, min(JITTER_S, end - time.time())))
                finally:  # every period is logged as it ran, one cut short by a stop too
                    log.write(json.dumps({"t0": round(t0, 2), "t1": round(time.time(), 2),
                                          "workers": p["workers"], "duty": p["duty"]}) + "\n")
                    log.flush()
                if child is not None and child.poll() is not None:
                    break
    except KeyboardInterrupt:
        if child is not None and child.poll() is None:
            child.terminate()
    finally:
        stop.set()
        for d in duties:
            d.value = 0.0
        for w in workers:
            w.join(timeout=2)
            if w.is_alive():
                os.kill(w.pid, signal.SIGKILL)
    if child is not None:
        if child.poll() is None:  # --minutes ran out first, or we were stopped
            child.wait()
        # a command ended by a signal exits as a shell reports it (128 + the signal)
        sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


if __name__ == "__main__":
    main()
