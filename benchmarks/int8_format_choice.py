"""What the probe's choice of int8 format buys on a CPU without VNNI: the same budgets planned
with a profile whose probe chose (``--int8-format auto``, the default) and with one held to
U8U8 (the ISA's default, what every such profile timed before session 37).

For each format setting: a transfer from ``--from`` (the same sources), then every budget of
``--budgets`` (relative to the full fp32 model's p90 on the auto profile; the U8U8 plans get
the same milliseconds) at every ``--seq-len``, exported with ``export --latency`` and verified
in its own process (``verify --duration``). A step whose output is in ``--work`` is not redone.

Run it on the device, e.g. the Intel class's cores with AVX2 only (benchmarks/masked_isa.py):

    .venv/bin/python benchmarks/masked_isa.py --isa avx2 -- .venv/bin/python \\
        benchmarks/int8_format_choice.py --supernet runs/minilm-super --from profiles \\
        --work /tmp/format-choice --out benchmarks/results/int8_format_choice_masked_avx2_s37.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from usable_cores import shaperctl

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.profiling.profile import profile_int8_format


def transfer(work: Path, supernet: str, sources: str, fmt: str, max_tokens: int) -> dict:
    out = work / f"profile-{fmt}"
    if not (out / "predictor.json").is_file():
        shaperctl("profile", "--device", "cpu", "--from", sources, "--supernet", supernet,
                  "--max-tokens", str(max_tokens), "--int8-format", fmt, "--out", str(out))
    made = DeviceProfile.load(out)
    return {"path": str(out), "int8_format": profile_int8_format(made.header),
            "probe_int8_formats_ms": (made.header.probe or {}).get("int8_formats_ms"),
            "minutes": round(made.header.summary["last_run"]["seconds"] / 60, 2),
            "held_out_mape": {q: round(made.model.metrics[q]["held_out"]["mape"], 4)
                              for q in made.precisions},
            "reliable": made.trust["reliable"]}


def planned(work: Path, supernet: str, profile: dict, budget: str, seq_len: int,
            seconds: float) -> dict:
    bundle = work / f"{Path(profile['path']).name}-{budget.replace('%', 'pct')}-{seq_len}"
    failed = bundle.with_suffix(".error.txt")
    if not (bundle / "shaper.json").is_file() and not failed.is_file():
        made = shaperctl("export", "--supernet", supernet, "--latency", budget, "--seq-len",
                         str(seq_len), "--profile", profile["path"], "--out", str(bundle),
                         *([] if profile["reliable"] else ["--allow-unreliable"]),
                         may_fail=True)
        if "error" in made:
            failed.write_text(made["error"] + "\n")
    if failed.is_file():
        return {"budget": budget, "seq_len": seq_len, "export_error": failed.read_text().strip()}
    p = json.loads((bundle / "shaper.json").read_text())["plan"]
    if not p.get("verification"):
        shaperctl("verify", str(bundle), "--duration", str(seconds))
    manifest = json.loads((bundle / "shaper.json").read_text())
    p = manifest["plan"]
    keys = ("precision", "shape", "params", "predicted_ms", "measured_ms", "fidelity")
    return {"budget": budget, "seq_len": seq_len, "budget_ms": p["budget_ms"],
            "chosen": {k: p[k] for k in keys},
            "int8": {k: (manifest.get("quantization") or {}).get(k)
                     for k in ("weight_type", "reduce_range", "format_reason")},
            "candidates": [{k: c.get(k) for k in keys + ("status",)} for c in p["candidates"]],
            "verified_ms": p["verification"]["judged_ms"],
            "within": p["verification"]["judged_ms"] <= p["budget_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--from", dest="sources", required=True)
    ap.add_argument("--budgets", default="60%,80%")
    ap.add_argument("--seq-len", default="128,32")
    ap.add_argument("--verify-seconds", type=float, default=30.0)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lens = [int(s) for s in args.seq_len.split(",")]
    result = {"machine": device_fingerprint("cpu"), "masked_isa": os.environ.get("MASKED_ISA"),
              "profiles": {}, "plans": {"auto": [], "U8U8": []}}
    for fmt in ("auto", "U8U8"):
        result["profiles"][fmt] = transfer(args.work, args.supernet, args.sources, fmt,
                                           max(lens))
    for budget in args.budgets.split(","):
        for seq_len in lens:
            auto = planned(args.work, args.supernet, result["profiles"]["auto"], budget,
                           seq_len, args.verify_seconds)
            result["plans"]["auto"].append(auto)
            same = f"{auto['budget_ms']:.2f}ms" if "budget_ms" in auto else budget
            result["plans"]["U8U8"].append(planned(args.work, args.supernet,
                                                   result["profiles"]["U8U8"], same, seq_len,
                                                   args.verify_seconds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for fmt, rows in result["plans"].items():
        for r in rows:
            c = r.get("chosen") or {}
            print(f"{fmt:5} {r['budget']:>9} 1x{r['seq_len']}: " + (r.get("export_error") or (
                f"{c['precision']} {c['params'] / 1e6:.1f}M, p90 {c['measured_ms']:.2f} ms, "
                f"verified {r['verified_ms']:.2f} within {r['budget_ms']:.2f}: {r['within']}, "
                f"fidelity {c['fidelity']:.4f}")))


if __name__ == "__main__":
    main()
