"""``shaperctl serve`` under load and faults, beside the in-process ``Bundle``.

1-2. One ~128-token text at a time for --seconds blocks of 1 s per route, interleaved: the
   in-process ``Bundle.embed``, and one client against the server, with tritonclient.http
   (binary tensor output: the documented V2 client) and with requests (JSON); the server's
   overhead at p50 per client = its p50 over the in-process p50, from the same periods.
3. --clients clients for --load-seconds, each text's embedding compared with the in-process one
   (max |diff|), while one more thread sends --faults malformed requests: every one must be a
   4xx, no good request lost, the server ready afterwards.
4. kill -9 and restart: seconds until ready again.

    .venv/bin/python benchmarks/serve_load.py --bundle runs/minilm-full \\
        --out benchmarks/results/serve_load_amd_zen4.json
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

WORDS = ("the central bank raised interest rates again while shares in the telecoms group fell "
         "after a profit warning and the striker scored twice in the second half").split()
BAD = [
    {"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
    {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2], "data": ["a", "b"]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [" "]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["ab" * 20000]}]},
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [64], "data": ["a"] * 64}]},
    {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 2], "data": [1, 99999]},
                {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2],
                 "data": [1, 1]}]},
    b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["\xff"]}]}',
    b'{"inputs":',
]


def _text(i: int) -> str:
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(100))  # ~128 tokens


def _pct(times: list[float]) -> dict:
    return {f"p{q}_ms": float(np.percentile(times, q)) for q in (50, 90, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--load-seconds", type=float, default=60.0)
    ap.add_argument("--faults", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from shaper_deploy.serving import Bundle

    texts = [_text(i) for i in range(16)]
    bundle = Bundle.load(args.bundle)
    want = {t: bundle.embed([t], "mean", True)[0] for t in texts}
    tokens = int(bundle.encode([texts[0]]).feeds["input_ids"].shape[1])

    log = tempfile.TemporaryFile(mode="w+")
    port = free_port()
    proc, first_start_s = start_server(args.bundle, port, log)
    url = f"http://127.0.0.1:{port}/v2/models/m/infer"

    def body(t):
        return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [t]}]}

    import tritonclient.http as httpclient

    triton = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    session = requests.Session()

    def one(kind: str, t: str) -> np.ndarray:
        """One text through one route; its embedding."""
        if kind == "in_process":
            return bundle.embed([t], "mean", True)[0]
        if kind == "tritonclient_binary":
            x = httpclient.InferInput("text", [1], "BYTES")
            x.set_data_from_numpy(np.array([t.encode()], dtype=object))
            return triton.infer("m", [x], outputs=[httpclient.InferRequestedOutput(
                "embedding", binary_data=True)]).as_numpy("embedding")[0]
        r = session.post(url, json=body(t), timeout=60)
        r.raise_for_status()
        return np.array(r.json()["outputs"][0]["data"], dtype=np.float32)

    # One request at a time, the routes interleaved in blocks of ~1 s, so every route sees
    # the same periods of this machine (its speed moves by minutes).
    kinds = ("in_process", "tritonclient_binary", "requests_json")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    diffs1: list[float] = []
    blocks = max(3, round(args.seconds))
    k = 0
    for _ in range(blocks):
        for kind in kinds:
            end = time.perf_counter() + 1.0
            while time.perf_counter() < end:
                t = texts[k % 16]
                k += 1
                start = time.perf_counter()
                got = one(kind, t)
                times[kind].append((time.perf_counter() - start) * 1000)
                diffs1.append(float(np.abs(got - want[t]).max()))
            time.sleep(0.05)
    in_process = {"runs": len(times["in_process"]), **_pct(times["in_process"]),
                  "tokens": tokens}
    clients = {kind: {"requests": len(times[kind]), **_pct(times[kind])}
               for kind in kinds[1:]}
    single = {**clients, "blocks": blocks, "max_abs_diff": max(diffs1)}
    print("in-process", in_process, "one client", single, file=sys.stderr)

    def client(seconds, out, diffs, errors, seed):
        end = time.perf_counter() + seconds
        k = seed
        with requests.Session() as s:
            while time.perf_counter() < end:
                t = texts[k % 16]
                k += 1
                start = time.perf_counter()
                try:
                    r = s.post(url, json=body(t), timeout=60)
                except requests.RequestException as exc:
                    errors.append(type(exc).__name__)
                    continue
                out.append((time.perf_counter() - start) * 1000)
                if r.status_code != 200:
                    errors.append(r.status_code)
                    continue
                got = np.array(r.json()["outputs"][0]["data"], dtype=np.float32)
                diffs.append(float(np.abs(got - want[t]).max()))

    lat, diffs, errors = [], [], []
    faults: list[int] = []

    def faulty():
        with requests.Session() as s:
            for n in range(args.faults):
                b = BAD[n % len(BAD)]
                r = (s.post(url, data=b, headers={"Content-Type": "application/json"},
                            timeout=60) if isinstance(b, bytes) else s.post(url, json=b,
                                                                            timeout=60))
                faults.append(r.status_code)
                time.sleep(args.load_seconds / args.faults / 2)

    threads = [threading.Thread(target=client, args=(args.load_seconds, lat, diffs, errors, c))
               for c in range(args.clients)] + [threading.Thread(target=faulty)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ready_after = requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).ok
    load = {"clients": args.clients, "seconds": args.load_seconds, "requests": len(lat),
            "throughput_rps": len(lat) / args.load_seconds, **_pct(lat),
            "errors": len(errors), "max_abs_diff": max(diffs) if diffs else None,
            "faults_sent": len(faults), "faults_4xx": sum(400 <= c < 500 for c in faults),
            "fault_codes": sorted(set(faults)), "ready_after": ready_after}
    print("load", load, file=sys.stderr)

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc, restart_s = start_server(args.bundle, port, log)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    result = {"benchmark": "serve_load", "bundle": str(args.bundle), "in_process": in_process,
              "one_client": single,
              "overhead_p50": {kind: c["p50_ms"] / in_process["p50_ms"] - 1
                               for kind, c in clients.items()},
              "load": load, "first_start_s": first_start_s, "restart_after_kill9_s": restart_s}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
