"""A transfer's percentile promise, its own tail against one raised to a same-machine
profile's (``transfer.same_machine_tails``), scored on real bundles already timed against it
(no timing; seconds).

The transfer's floor predictions for each real-bundle window of a ``transfer.py live`` result
(``real_bundles.rows``, every run kept) times a p90 factor: the transfer's own, and the larger
of it and each profile given (measured on the same machine class); the share of runs over.

    .venv/bin/python benchmarks/transfer_tail.py \\
        benchmarks/results/transfer_live_amd_zen5_minilm_intel_s23.json \\
        --transfer benchmarks/data/amd-zen5-minilm-transfer-intel-s23 \\
        --same-machine profiles/amd-epyc-zen5-2core-avx512-minilm-calm-looks \\
        profiles/amd-epyc-zen5-2core-avx512-minilm benchmarks/data/amd-zen5-minilm-calm-looks-s23 \\
        --out benchmarks/results/transfer_tail.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.profiling.profile import shape_from_key


def runs_over(transfer: DeviceProfile, tails: list[DeviceProfile], rows: list[dict],
              percentile: float) -> dict:
    total, over = {}, {}
    for r in rows:
        shape = shape_from_key(r["shape"], transfer.space)
        floor = float(transfer.predict([shape], r["precision"], r["batch"], r["seq_len"], None,
                                       [r["dropped"]])[0])
        factor = max(float(p.tail_factor(r["precision"], percentile, floor)) for p in tails)
        times = np.asarray(r["times"])
        total[r["precision"]] = total.get(r["precision"], 0) + len(times)
        over[r["precision"]] = over.get(r["precision"], 0) + int((times > floor * factor).sum())
    return {"runs": sum(total.values()), "runs_over": sum(over.values()) / sum(total.values()),
            "by_precision": {p: over[p] / total[p] for p in sorted(total)}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="a transfer.py live result with real bundles")
    ap.add_argument("--transfer", type=Path, required=True,
                    help="the transfer profile the real bundles were timed against")
    ap.add_argument("--same-machine", type=Path, nargs="+", required=True)
    ap.add_argument("--percentile", type=float, default=90.0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = json.loads(args.result.read_text())["real_bundles"]["rows"]
    transfer = DeviceProfile.load(args.transfer)
    result = {"benchmark": "transfer_tail", "transfer": str(args.transfer),
              "percentile": args.percentile,
              "own tail": runs_over(transfer, [transfer], rows, args.percentile)}
    for path in args.same_machine:
        result[f"raised to {path}"] = runs_over(transfer, [transfer, DeviceProfile.load(path)],
                                                rows, args.percentile)
    for name, r in result.items():
        if isinstance(r, dict):
            print(f"{name}: {r['runs_over']:.1%} of {r['runs']} runs over the p"
                  f"{args.percentile:g} (" + ", ".join(f"{p} {v:.1%}" for p, v in
                                                       r["by_precision"].items()) + ")")
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
