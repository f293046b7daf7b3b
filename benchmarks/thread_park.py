"""Does the previous session's spinning thread pool leak into the next one's latency?

ONNX Runtime's intra-op threads spin after a run for a fixed count of pause instructions, so
for a time that depends on the CPU (onnxruntime PR #27916: about 3 ms on pre-Skylake Intel,
16 on Zen at 4 GHz, 47 on Skylake and later). A profile alternates sessions turn by turn; a
turn that starts while the last session's threads still spin shares the cores with them.
This measures, on this machine and interleaved round by round (the conditions' order
alternates), bundle A's request latency at one workload:

* ``steady``: back to back, one session (what ``shaperctl bench`` does);
* ``alone, pause``: turns of the profile's protocol with a 20 ms pause, A alone;
* ``after B, pause``: the same, each turn after a turn of bundle B (the protocol before
  2026-12-03: a fixed 20 ms pause, ``park_ms`` 0);
* ``after B, park``: the same, waiting until the process is idle (``park_threads``, the
  protocol since: ``park_ms`` 500);

and how long the threads spin after a run here (``park_threads`` after one run, 5 times).

    .venv/bin/python benchmarks/thread_park.py --a runs/minilm-budget --b runs/minilm-full \\
        --out benchmarks/results/thread_park_amd_zen5.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.protocol import Protocol, park_threads
from shaper_deploy.runtime import make_session
from shaper_deploy.serving import Bundle

CONDITIONS = ("steady", "alone, pause", "after B, pause", "after B, park")


def session(folder: Path, threads: int, batch: int, seq_len: int):
    bundle = Bundle.load(folder)
    s = make_session(folder / bundle.model_file, threads=threads)
    names = [o.name for o in s.get_outputs()][:1]
    feeds = bundle.manifest.super_config.dummy_inputs(batch, seq_len, padding="none")
    return lambda: s.run(names, feeds), f"{folder} ({bundle.model_file})"


def turn(run, protocol: Protocol, park_ms: float, times: list[float] | None) -> None:
    """One turn of the protocol: the pause (and park), warm-up runs, timed runs for turn_ms."""
    park_threads(protocol.pause_ms, park_ms)
    for _ in range(protocol.warmup):
        run()
    stop = time.perf_counter() + protocol.turn_ms / 1000
    while True:
        t = time.perf_counter()
        run()
        if times is not None:
            times.append((time.perf_counter() - t) * 1000)
        if time.perf_counter() > stop:
            break


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, type=Path, help="the bundle whose latency is reported")
    ap.add_argument("--b", required=True, type=Path, help="the bundle whose turns come between")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=Protocol.threads)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=3.0, help="per condition and round")
    args = ap.parse_args()
    protocol = Protocol()
    a, a_name = session(args.a, args.threads, args.batch, args.seq_len)
    b, b_name = session(args.b, args.threads, args.batch, args.seq_len)
    spin = []
    for run in (a, b):
        for _ in range(5):
            run()
            spin.append(park_threads(0, protocol.park_ms))
    print(f"after a run the threads spin {statistics.median(spin):.1f} ms (median of "
          f"{len(spin)})", file=sys.stderr)
    times: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    started = time.time()
    for r in range(args.rounds):
        for c in (CONDITIONS if r % 2 == 0 else CONDITIONS[::-1]):
            stop = time.perf_counter() + args.seconds
            park_threads(protocol.pause_ms, protocol.park_ms)
            while time.perf_counter() < stop:
                if c == "steady":
                    t = time.perf_counter()
                    a()
                    times[c].append((time.perf_counter() - t) * 1000)
                    continue
                park = protocol.park_ms if c.endswith("park") else 0.0
                if c.startswith("after B"):
                    turn(b, protocol, park, None)
                turn(a, protocol, park, times[c])
        done = (r + 1) / args.rounds
        print(f"round {r + 1}/{args.rounds}; about {(time.time() - started) * (1 / done - 1):.0f}"
              " s left", file=sys.stderr)
    rows = {}
    for c, v in times.items():
        p = np.percentile(v, [10, 50, 90, 99])
        rows[c] = {"runs": len(v), "p10_ms": round(float(p[0]), 3),
                   "p50_ms": round(float(p[1]), 3), "p90_ms": round(float(p[2]), 3),
                   "p99_ms": round(float(p[3]), 3)}
        print(f"{c:16s} {len(v):5d} runs  p10 {p[0]:6.2f}  p50 {p[1]:6.2f}  p90 {p[2]:6.2f}  "
              f"p99 {p[3]:6.2f} ms", file=sys.stderr)
    base = rows["alone, pause"]["p90_ms"]
    result = {"machine": device_fingerprint("cpu"), "a": a_name, "b": b_name,
              "batch": args.batch, "seq_len": args.seq_len, "threads": args.threads,
              "pause_ms": protocol.pause_ms, "park_ms": protocol.park_ms,
              "spin_ms": {"median": round(statistics.median(spin), 1),
                          "min": round(min(spin), 1), "max": round(max(spin), 1)},
              "rounds": args.rounds, "seconds_per_condition_and_round": args.seconds,
              "conditions": rows,
              "p90_over_alone": {c: round(r["p90_ms"] / base, 3) for c, r in rows.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["p90_over_alone"]))


if __name__ == "__main__":
    main()
