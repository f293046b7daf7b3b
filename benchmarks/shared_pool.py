"""Could a profile skip waiting for idle threads? One process-wide thread pool vs a pool per
session.

A profile's turns alternate sessions, each with its own intra-op pool, and every turn first
waits until the previous session's threads stop spinning (``park_threads``, about 40 ms on
the AMD EPYC Zen 4 class: a fifth of a transfer's time). ONNX Runtime can instead run every
session of a process on one global pool (``set_global_thread_pool_sizes``, sessions with
``use_per_session_threads`` off), whose threads the next session uses while they still spin,
so nothing is waited for. This times the same random-weight graphs (the space's smallest,
largest and one mixed shape, fp32 and int8 in the ISA's default format) both ways, each way in
its own process (a global pool is the whole process's): ``own`` pools with the profile's
pause, park and warm-up before each turn, ``shared`` with the warm-up only. Blocks of one turn
per graph alternate between the processes in random order, the idle one parked.

    .venv/bin/python benchmarks/shared_pool.py --supernet runs/minilm-super --rounds 24 \\
        --out benchmarks/results/shared_pool_amd_zen4_s40.json
    .venv/bin/python benchmarks/shared_pool.py --rounds 12 \\
        --out benchmarks/results/shared_pool_bert_base_amd_zen4_s40.json   # BERT-base
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = [(1, 16), (1, 64), (1, 128), (4, 64)]
MIXED = {6: (240, 120, 240, 240, 384, 384),  # MiniLM
         12: (540, 240, 480, 120, 120, 480, 360, 360, 240, 360, 480, 240)}  # BERT-base


def load_config(supernet: str | None):
    """The super network's config, or BERT-base's (random weights need no checkpoint)."""
    from shaper_deploy.supernet import SuperConfig, read_checkpoint_header

    return read_checkpoint_header(supernet)["config"] if supernet else SuperConfig()


def worker(variant: str, supernet: str | None, files: dict[str, str], threads: int,
           conn) -> None:
    """Holds one session per graph (``shared``: all on the process's global pool) and times a
    block of turns, one per graph in shuffled order, for each size it is sent."""
    from shaper_deploy.profiling.protocol import Protocol, inputs_for, park_threads
    from shaper_deploy.runtime import make_session, share_one_pool

    if variant == "shared":
        share_one_pool(threads)
    protocol = Protocol()
    config = load_config(supernet)
    sessions = {key: make_session(path, "cpu", threads=threads) for key, path in files.items()}
    rng = random.Random(variant)
    conn.send("ready")
    while (size := conn.recv()) is not None:
        feeds = inputs_for(tuple(size), config)
        times, parked, start = {}, 0.0, time.perf_counter()
        for key in rng.sample(list(sessions), len(sessions)):
            session = sessions[key]
            names = [o.name for o in session.get_outputs()][:1]
            if variant == "own":
                parked += park_threads(protocol.pause_ms, protocol.park_ms)
            one = 0.0
            for _ in range(protocol.warmup):
                t = time.perf_counter()
                session.run(names, feeds)
                one = (time.perf_counter() - t) * 1000
            runs = max(1, min(protocol.timed, math.ceil(protocol.turn_ms / one)))
            times[key] = []
            for _ in range(runs):
                t = time.perf_counter()
                session.run(names, feeds)
                times[key].append((time.perf_counter() - t) * 1000)
        seconds = time.perf_counter() - start
        park_threads(protocol.pause_ms, protocol.park_ms)  # quiet for the other process
        conn.send({"times": times, "seconds": seconds, "parked_seconds": parked / 1000})


def build_graphs(supernet: str | None, work: Path) -> dict[str, str]:
    import onnx

    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.profiling.graph import RandomWeightFile, build_deploy_graph
    from shaper_deploy.quantize import quantize_int8
    from shaper_deploy.runtime import int8_formats
    from shaper_deploy.shape import Shape

    config = load_config(supernet)
    space = config.space
    fmt = int8_formats(device_fingerprint("cpu")["isa"])[0]
    random_weights = RandomWeightFile(work)
    files = {}
    for name, shape in (("smallest", space.smallest), ("largest", space.largest),
                        ("mixed", Shape(MIXED[space.num_layers], space))):
        fp32, int8 = work / f"{name}.onnx", work / f"{name}-int8.onnx"
        onnx.save(build_deploy_graph(config, shape, random=random_weights), str(fp32))
        quantize_int8(fp32, int8, fmt)
        files[f"{name} fp32"], files[f"{name} int8"] = str(fp32), str(int8)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", default=None,
                    help="A super network checkpoint (default: BERT-base, random weights)")
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from shaper_deploy.profiling.fingerprint import device_fingerprint

    with tempfile.TemporaryDirectory(prefix="shared-pool-") as tmp:
        files = build_graphs(args.supernet, Path(tmp))
        ctx = mp.get_context("spawn")
        procs, conns = {}, {}
        for variant in ("own", "shared"):
            ours, theirs = ctx.Pipe()
            procs[variant] = ctx.Process(target=worker, args=(variant, args.supernet, files,
                                                              args.threads, theirs))
            procs[variant].start()
            conns[variant] = ours
            assert ours.recv() == "ready"
        times = {(v, k, w): [] for v in procs for k in files for w in SIZES}
        seconds = {v: 0.0 for v in procs}
        parked = {v: 0.0 for v in procs}
        rng, start = random.Random(0), time.perf_counter()
        for r in range(args.rounds):
            for w in SIZES:
                for variant in rng.sample(list(procs), 2):
                    conns[variant].send(list(w))
                    got = conns[variant].recv()
                    seconds[variant] += got["seconds"]
                    parked[variant] += got["parked_seconds"]
                    for key, ts in got["times"].items():
                        times[(variant, key, w)] += ts
            done = time.perf_counter() - start
            print(f"round {r + 1}/{args.rounds}: {done:.0f} s, about "
                  f"{done / (r + 1) * (args.rounds - r - 1):.0f} s left", file=sys.stderr)
        for variant in procs:
            conns[variant].send(None)
            procs[variant].join()
    rows = []
    for key in files:
        for w in SIZES:
            own, shared = (np.array(times[(v, key, w)]) for v in ("own", "shared"))
            row = {"graph": key, "batch": w[0], "seq_len": w[1],
                   "own_ms": {q: round(float(np.percentile(own, q)), 4) for q in (10, 50, 90)},
                   "shared_ms": {q: round(float(np.percentile(shared, q)), 4)
                                 for q in (10, 50, 90)},
                   "runs": [len(own), len(shared)]}
            row["shared_over_own"] = {q: round(row["shared_ms"][q] / row["own_ms"][q], 4)
                                      for q in (10, 50, 90)}
            rows.append(row)
            print(f"{key:14s} {w[0]}x{w[1]:<4d} own p10 {row['own_ms'][10]:8.3f} p50 "
                  f"{row['own_ms'][50]:8.3f} p90 {row['own_ms'][90]:8.3f} | shared/own "
                  + " ".join(f"p{q} {row['shared_over_own'][q]:.3f}" for q in (10, 50, 90)))
    summary = {f"p{q}": {"median": round(statistics.median(r["shared_over_own"][q]
                                                          for r in rows), 4),
                         "min": min(r["shared_over_own"][q] for r in rows),
                         "max": max(r["shared_over_own"][q] for r in rows)}
               for q in (10, 50, 90)}
    summary["block_seconds"] = {v: round(s, 1) for v, s in seconds.items()}
    summary["parked_seconds"] = {v: round(s, 1) for v, s in parked.items()}
    print(json.dumps(summary), file=sys.stderr)
    Path(args.out).write_text(json.dumps({
        "benchmark": "shared_pool", "command": " ".join(sys.argv),
        "fingerprint": device_fingerprint("cpu"), "rounds": args.rounds,
        "threads": args.threads, "summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
