"""Does batching concurrent requests pay on this device? Two ``shaperctl serve`` processes on
127.0.0.1 with one real bundle, one batching text requests (the default) and one not
(``--max-batch 1``); N client threads for D seconds, rounds interleaved: one text per request
to each server, and K texts per request (client-side batches, the bound a server batcher can
reach). Texts/s, request latency p50/p90 and the ratios from one run.

    .venv/bin/python benchmarks/serve_batching.py --bundle runs/minilm-full \\
        --out benchmarks/results/serve_batching_amd_zen4.json
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from served import free_port, start_server

SENTENCE = "Deploying one super network to many devices needs a model for each of them"


def _load(url: str, per_request: int, clients: int, seconds: float) -> dict:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [per_request],
                        "data": [SENTENCE] * per_request}]}
    times: list[float] = []
    failed = [0]
    end = time.perf_counter() + seconds

    def client():
        with requests.Session() as s:
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = s.post(url, json=body, timeout=60)
                if r.status_code == 200:
                    times.append((time.perf_counter() - t) * 1000)
                else:
                    failed[0] += 1
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"texts_per_s": len(times) * per_request / seconds, "requests": len(times),
            "failed": failed[0], "p50_ms": float(np.percentile(times, 50)),
            "p90_ms": float(np.percentile(times, 90))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    log = tempfile.TemporaryFile(mode="w+")
    servers, procs = {}, []
    for kind, extra in (("batching", []), ("unbatched", ["--max-batch", "1"])):
        port = free_port()
        procs.append(start_server(args.bundle, port, log, *extra)[0])
        servers[kind] = port
    url = {k: f"http://127.0.0.1:{p}/v2/models/m/infer" for k, p in servers.items()}
    kinds = {"unbatched": (url["unbatched"], 1), "server_batched": (url["batching"], 1),
             "client_batches": (url["batching"], args.batch)}
    for u, _ in kinds.values():
        _load(u, 1, 1, 2.0)  # warm-up
    rows = {k: [] for k in kinds}
    try:
        for r in range(args.rounds):
            order = list(kinds)[r % 3:] + list(kinds)[:r % 3]
            for kind in order:
                rows[kind].append(_load(*kinds[kind], args.clients, args.seconds))
                print(kind, rows[kind][-1], file=sys.stderr)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    med = {k: float(np.median([x["texts_per_s"] for x in v])) for k, v in rows.items()}
    result = {"benchmark": "serve_batching", "bundle": str(args.bundle),
              "clients": args.clients, "batch": args.batch, "seconds": args.seconds,
              "rounds": rows, "median_texts_per_s": med,
              "server_batched_over_unbatched": med["server_batched"] / med["unbatched"],
              "client_batches_over_unbatched": med["client_batches"] / med["unbatched"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))


if __name__ == "__main__":
    main()
