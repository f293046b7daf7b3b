"""How a transfer's choice of fit (``transfer.fit_transfer``: direct, or the scaled prior
refitted under a ridge of 1, 3 or 10, by leave-one-shape-out error over the fitted shapes)
compares with each fit's error on the transfer's own held-out shapes (no timing; seconds).

For each finished transfer folder: every candidate forced in turn (the held-out MAPE it would
have had), the leave-one-shape-out MAPE the choice saw, and the candidate chosen. The held-out
shapes never take part in the choice, so this is the check of the choice itself.

    .venv/bin/python benchmarks/transfer_choice.py benchmarks/data/*transfer* \\
        --out benchmarks/results/transfer_choice_s47.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

from shaper_deploy.profiling import transfer
from shaper_deploy.profiling.folder import read_header, read_measurements


def judge(folder: Path) -> dict:
    header, records = read_header(folder), read_measurements(folder)
    held: dict[str, dict[str, float]] = {}
    for candidate in transfer.CANDIDATES:
        with mock.patch.object(transfer, "CANDIDATES", (candidate,)):
            model = transfer.fit_transfer(header, records)
        for precision in model.precisions:
            held.setdefault(precision, {})[f"{candidate:g}"] = (
                model.metrics[precision]["held_out"]["mape"])
    model = transfer.fit_transfer(header, records)
    return {"profile": str(folder), "sources": len(header.transfer["sources"]),
            "precisions": {p: {"held_out_mape": held[p],
                               "loo_mape": model.metrics[p]["transfer"]["loo_mape"],
                               "chosen": f"{model.metrics[p]['transfer']['ridge']:g}",
                               "best_held_out": min(held[p], key=held[p].get)}
                           for p in model.precisions}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("transfers", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = []
    for folder in args.transfers:
        try:
            rows.append(judge(folder))
        except ValueError as exc:  # an older transfer whose sources' features differ
            print(f"{folder}: skipped ({exc})")
            continue
        for precision, r in rows[-1]["precisions"].items():
            print(f"{folder} {precision}: chosen ridge {r['chosen']} (0: direct); held-out "
                  "MAPE " + ", ".join(f"{c}: {v:.2%}" for c, v in r["held_out_mape"].items())
                  + "; leave-one-shape-out " + ", ".join(
                      f"{v:.2%}" for v in r["loo_mape"].values()))
    chosen = [r["precisions"][p] for r in rows for p in r["precisions"]]
    summary = {"decisions": len(chosen),
               "chosen_was_best_held_out": sum(c["chosen"] == c["best_held_out"]
                                               for c in chosen),
               "direct_best_held_out": sum(c["best_held_out"] == "0" for c in chosen),
               "direct_chosen": sum(c["chosen"] == "0" for c in chosen)}
    print(json.dumps(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "transfer_choice", "summary": summary,
                                    "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
