"""How many profiled shapes does the latency predictor need? Held-out error vs training size.

The profile's own held-out shapes (a quarter, spread over the parameter range) stay fixed;
the predictor is fitted on random subsets of the other shapes, five draws per size.

    .venv/bin/python benchmarks/learning_curve.py profiles/x86_64-2core-avx512-minilm \\
        --out benchmarks/results/learning_curve_minilm.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from shaper_deploy.predictor import LatencyPredictor, fit, held_out_mask, regression_metrics
from shaper_deploy.profiling.profile import normalized_latency, read_header, read_measurements
from shaper_deploy.shape import Shape
from shaper_deploy.supernet import SuperConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10, 20, 40, 80, 120, 160, 225])
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    header = read_header(args.profile)
    space = SuperConfig.from_dict(header["config"]).space
    latency = normalized_latency(read_measurements(args.profile))
    keys = sorted(latency)
    shapes = [Shape(tuple(int(w) for w in k.split(",")), space) for k in keys]
    y = np.array([latency[k] for k in keys])
    params = np.array([s.params() for s in shapes], dtype=float)
    test = held_out_mask(params, 0.25)
    pool = np.flatnonzero(~test)
    p = header["protocol"]
    rows = []
    for size in [s for s in args.sizes if s <= len(pool)]:
        draws = []
        for d in range(args.draws):
            rng = np.random.default_rng(d)
            train = np.zeros(len(keys), bool)
            train[rng.choice(pool, size, replace=False)] = True
            booster, coef = fit(shapes, y, p["seq_len"], p["batch"], train)
            model = LatencyPredictor(booster, {"design_space": space.to_dict(), "protocol": p,
                                               "baseline": {"coef": coef.tolist()},
                                               "features": booster.feature_names})
            draws.append(regression_metrics(y[test], model.predict([s for s, t in zip(shapes, test) if t])))
        rows.append({"train_shapes": size, "draws": args.draws,
                     **{k: statistics.median(m[k] for m in draws)
                        for k in ("r2", "mape", "within_5pct", "within_10pct", "kendall_tau")}})
        print(f"{size:4d} shapes: R^2 {rows[-1]['r2']:.4f}  MAPE {rows[-1]['mape']:.2%}  "
              f"within 5% {rows[-1]['within_5pct']:.0%}  tau {rows[-1]['kendall_tau']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "learning_curve", "profile": str(args.profile),
                                    "held_out_shapes": int(test.sum()), "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
