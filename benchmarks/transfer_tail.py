"""A transfer's percentile promise, its own tail against one raised to a same-machine
profile's (``transfer.same_machine_tails``), scored on real bundles already timed against it
(no timing; seconds).

The transfer's floor predictions for each real-bundle window of a ``transfer.py live`` result
(``real_bundles.rows``, every run kept) times a p90 factor: the transfer's own, and the larger
of it and each profile given (measured on the same machine class), then of all of them; the
share of runs over. And each window judged as ``verify`` judges it, against that prediction:
with the slowdown the transfer's own 2 minutes price (``predictor.priced_drift``), and with
the larger one the raising profile's tail prices (``TailModel.priced_slowdown``, what a
transfer raised to it records now).

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

from shaper_deploy.profiling.predictor import DeviceProfile, priced_drift
from shaper_deploy.profiling.folder import shape_from_key
from verify_rule import score


def promise(transfer: DeviceProfile, tails: list[DeviceProfile], rows: list[dict],
            percentile: float, slowdown: float | None) -> dict:
    """The share of runs over the predicted percentile, and each window judged as ``verify``
    judges it (``DeviceProfile.measure``: the floor now taken back by the slowdown the tail
    prices, up to ``slowdown``, times the tail, or the percentile observed if larger) against
    that prediction."""
    total, over, judged, predicted = {}, {}, [], []
    ratios: dict[str, list[float]] = {}  # workload -> predicted / observed percentile
    for r in rows:
        shape = shape_from_key(r["shape"], transfer.space)
        floor = float(transfer.predict([shape], r["precision"], r["batch"], r["seq_len"], None,
                                       [r["dropped"]])[0])

        def factor(ms: float) -> float:
            return max(float(p.tail_factor(r["precision"], percentile, ms)) for p in tails)

        times = np.asarray(r["times"])
        total[r["precision"]] = total.get(r["precision"], 0) + len(times)
        over[r["precision"]] = over.get(r["precision"], 0) + int(
            (times > floor * factor(floor)).sum())
        now = r["floor_ms"] / priced_drift(r["drift"], slowdown)
        judged.append(max(now * factor(now), float(np.percentile(times, percentile))))
        predicted.append(floor * factor(floor))
        ratios.setdefault(f"{r['batch']}x{r['seq_len']}", []).append(
            predicted[-1] / float(np.percentile(times, percentile)))
    return {"runs": sum(total.values()), "runs_over": sum(over.values()) / sum(total.values()),
            "by_precision": {p: over[p] / total[p] for p in sorted(total)},
            "predicted_over_observed_by_workload": {w: float(np.median(v))
                                                    for w, v in ratios.items()},
            "slowdown_priced": slowdown,
            "judged": score(np.array(judged), np.array(predicted))}


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
    own = transfer.machine_speed()["p90"]
    result = {"benchmark": "transfer_tail", "transfer": str(args.transfer),
              "percentile": args.percentile,
              "own tail": promise(transfer, [transfer], rows, args.percentile, own)}
    others = [DeviceProfile.load(path) for path in args.same_machine]
    for path, other in zip(args.same_machine, others):
        for slowdown in (own, max(own, other.machine_speed()["p90"])):
            name = f"raised to {path}" + (", its slowdown priced" if slowdown != own else "")
            result[name] = promise(transfer, [transfer, other], rows, args.percentile,
                                   slowdown)
    every = max([own] + [o.machine_speed()["p90"] for o in others])
    result["raised to all, their slowdown priced"] = promise(
        transfer, [transfer, *others], rows, args.percentile, every)
    for name, r in result.items():
        if isinstance(r, dict):
            j = r["judged"]
            print(f"{name}: {r['runs_over']:.1%} of {r['runs']} runs over the p"
                  f"{args.percentile:g} (" + ", ".join(f"{p} {v:.1%}" for p, v in
                                                       r["by_precision"].items())
                  + f"); judged as verify does, slowdown priced to {r['slowdown_priced']:.2f}x: "
                  f"{j['median_abs_error']:.1%} median |error|, {j['within_10pct']:.0%} within "
                  f"+-10%, {j['over_5pct']:.0%} over +5%; predicted / observed p"
                  f"{args.percentile:g}, median per workload: " + ", ".join(
                      f"{w} {v:.2f}" for w, v in r["predicted_over_observed_by_workload"].items()))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
