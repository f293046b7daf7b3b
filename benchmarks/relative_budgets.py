"""Device-relative budgets end to end: ``export --latency X%`` at 1 x S tokens, then
``verify`` in a separate process for 60 s; latency at the promised percentile beside
fidelity to the full fp32 model.

    .venv/bin/python benchmarks/relative_budgets.py --profile profiles/amd-epyc-zen4-2core-avx512-minilm \\
        --supernet runs/minilm-super --out benchmarks/results/relative_budgets_amd_zen4.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--budgets", nargs="*", default=["60%", "80%", "95%"])
    ap.add_argument("--seq-lens", nargs="*", type=int, default=[32, 128])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--allow-unreliable", action="store_true")
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    shaperctl = str(Path(sys.executable).with_name("shaperctl"))
    rows = []
    for seq in args.seq_lens:
        for budget in args.budgets:
            out = args.runs / f"budget-{budget.rstrip('%')}-{seq}"
            cmd = [shaperctl, "export", "--supernet", str(args.supernet), "--latency", budget,
                   "--seq-len", str(seq), "--profile", str(args.profile), "--out", str(out),
                   "--force", "--json"] + (["--allow-unreliable"] if args.allow_unreliable else [])
            plan = subprocess.run(cmd, capture_output=True, text=True)
            row = {"budget": budget, "batch": 1, "seq_len": seq}
            if plan.returncode != 0:
                rows.append({**row, "refused": plan.stderr.strip().splitlines()[-1]})
                print(f"{budget} @ {seq}: {rows[-1]['refused']}", file=sys.stderr)
                continue
            p = json.loads(plan.stdout)["plan"]
            check = subprocess.run([shaperctl, "verify", str(out), "--duration",
                                    str(args.duration), "--json"], capture_output=True, text=True)
            v = json.loads(check.stdout)["verification"]
            rows.append({**row, "budget_ms": p["budget_ms"], "percentile": p["percentile"],
                         "precision": p["precision"], "shape": p["shape"], "params": p["params"],
                         "predicted_ms": p["predicted_ms"], "measured_at_export_ms": p["measured_ms"],
                         "verified_ms": v["estimated_ms"], "observed_ms": v["observed_ms"],
                         "judged_ms": v["judged_ms"],
                         "within_budget": v["within_budget"],
                         "observed_within_budget": v["observed_within_budget"],
                         "drift": v["drift"], "runs": v["runs"], "fidelity": p["fidelity"],
                         "candidates": p["candidates"]})
            print(f"{budget} @ {seq}: {p['precision']} {p['shape']} verified p{p['percentile']:g} "
                  f"{v['judged_ms']:.2f} (observed {v['observed_ms']:.2f}) / {p['budget_ms']:.2f} "
                  f"ms, fidelity {p['fidelity']:.4f}",
                  file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "relative_budgets", "profile": str(args.profile),
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
