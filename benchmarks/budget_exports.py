"""Latency budgets end to end: plan, export, measure. Predicted vs measured per budget.

    .venv/bin/python benchmarks/budget_exports.py --supernet runs/minilm-super \\
        --profile profiles/x86_64-2core-avx512-minilm --budgets 5 7 9 11 13 \\
        --out benchmarks/results/budget_exports_minilm.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from shaper_deploy.planner import export_for_budget
from shaper_deploy.supernet import SuperBert


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--budgets", type=float, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    supernet = SuperBert.load(args.supernet)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for budget in args.budgets:
            plan = export_for_budget(supernet, budget, [args.profile], Path(work) / str(budget),
                                     progress=lambda m: print(m, file=sys.stderr))["plan"]
            rows.append({k: plan[k] for k in ("budget_ms", "shape", "params", "predicted_ms",
                                              "predicted_upper_ms", "measured_ms")}
                        | {"exports": len(plan["attempts"])})
            r = rows[-1]
            print(f"budget {budget:5.1f} ms: {','.join(map(str, r['shape']))} "
                  f"({r['params'] / 1e6:.1f}M) predicted {r['predicted_ms']:.2f} "
                  f"(upper {r['predicted_upper_ms']:.2f}) measured {r['measured_ms']:.2f} ms, "
                  f"{r['exports']} export(s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "budget_exports", "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
