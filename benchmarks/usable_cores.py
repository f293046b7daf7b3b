"""A device with fewer usable cores than the machine has: one core of it (``taskset -c 0``,
a 1-CPU container or VM).

The benchmark pins itself (and so every command it runs) to ``--cores``, then:

1. times the full MiniLM, fp32 and int8, with 1 and with 2 intra-op threads, interleaved turn
   by turn with the profile's protocol (``measure_interleaved``: a pause, the spinning threads
   parked, shuffled order), so the cost of more threads than usable cores is read in one run;
2. transfers a profile from ``--from`` with the default threads (one per usable core, since
   2026-12-05) and with ``--threads 2`` (the default before: what a profile made there would
   have timed), exports each at the same absolute budget (``--allow-unreliable`` where the
   profile is not reliable, and recorded) and verifies each bundle in its own process: which
   model the budget buys with and without the fix, its latency and fidelity.

    .venv/bin/python benchmarks/usable_cores.py --supernet runs/minilm-super --from profiles \\
        --budget 20ms --work /tmp/usable-cores --out benchmarks/results/usable_cores_intel.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.serving import Bundle

SHAPERCTL = Path(sys.executable).parent / "shaperctl"


def shaperctl(*args: str) -> dict:
    """One command, its stderr passed through (progress), its --json document returned."""
    print("$ shaperctl " + " ".join(args), file=sys.stderr)
    out = subprocess.run([str(SHAPERCTL), *args, "--json"], stdout=subprocess.PIPE, text=True)
    if out.returncode not in (0, 3):  # verify: 3 when the budget is not met
        sys.exit(f"shaperctl {args[0]} failed ({out.returncode})")
    return json.loads(out.stdout)


def interleaved_threads(folder: Path, seq_len: int, rounds: int) -> dict:
    """The full model's fp32 and int8 files with 1 and 2 threads, interleaved."""
    bundle = Bundle.load(folder)
    feeds = bundle.manifest.super_config.dummy_inputs(1, seq_len, padding="none")
    runners = {}
    for precision, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        for threads in (1, 2):
            s = make_session(folder / file, threads=threads)
            names = [o.name for o in s.get_outputs()][:1]
            runners[(precision, threads)] = (lambda s=s, n=names: s.run(n, feeds))
    res = measure_interleaved(runners, Protocol(rounds=rounds, park_ms=500.0))
    rows = {f"{p} {t} thread(s)": {"median_ms": round(r["median_ms"], 3),
                                   "p90_ms": round(r["run_ms"]["90"], 3), "runs": r["runs"],
                                   "round_cv": round(r["cv"], 4)}
            for (p, t), r in res.items()}
    for p in ("fp32", "int8"):
        rows[f"{p} 2 over 1 thread"] = {
            "median": round(res[(p, 2)]["median_ms"] / res[(p, 1)]["median_ms"], 3),
            "p90": round(res[(p, 2)]["run_ms"]["90"] / res[(p, 1)]["run_ms"]["90"], 3)}
    return rows


def plan(work: Path, supernet: str, sources: str, threads: int | None, budget: str,
         seq_len: int, seconds: float) -> dict:
    """Transfer, export at the budget, verify; a step whose output is there is not redone."""
    name = f"threads-{threads or 'default'}"
    profile, bundle = work / f"{name}-profile", work / f"{name}-bundle"
    if not (profile / "predictor.json").is_file():
        shaperctl("profile", "--device", "cpu", "--from", sources, "--supernet", supernet,
                  "--out", str(profile), *(["--threads", str(threads)] if threads else []))
    made = DeviceProfile.load(profile)
    unreliable = not made.trust["reliable"]  # planned anyway, to see what it would buy
    if not (bundle / "shaper.json").is_file():
        shaperctl("export", "--supernet", supernet, "--latency", budget, "--seq-len",
                  str(seq_len), "--profile", str(profile), "--out", str(bundle),
                  *(["--allow-unreliable"] if unreliable else []))
    p = json.loads((bundle / "shaper.json").read_text())["plan"]
    if not p.get("verification"):  # written by verify, in its own process
        shaperctl("verify", str(bundle), "--duration", str(seconds))
    p = json.loads((bundle / "shaper.json").read_text())["plan"]
    keys = ("precision", "shape", "params", "predicted_ms", "measured_ms", "fidelity")
    minutes = round(made.header.summary["last_run"]["seconds"] / 60, 2)  # its own record
    return {"threads": made.header.protocol.threads, "profile_minutes": minutes,
            "held_out_mape": {q: round(made.model.metrics[q]["held_out"]["mape"], 4)
                              for q in made.precisions},
            "trust": made.trust, "planned_with_allow_unreliable": unreliable,
            "budget_ms": p["budget_ms"],
            "chosen": {k: p[k] for k in keys},
            "candidates": [{k: c.get(k) for k in keys + ("status",)} for c in p["candidates"]],
            "verification": p["verification"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--from", dest="sources", required=True)
    ap.add_argument("--budget", default="20ms")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--cores", default="0", help="the CPUs to run on, e.g. 0 or 0,1")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved turns per session")
    ap.add_argument("--verify-seconds", type=float, default=60.0)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    args.work.mkdir(parents=True, exist_ok=True)
    full = args.work / "full"
    if not (full / "shaper.json").is_file():
        shaperctl("export", "--supernet", args.supernet, "--shape", "384x6", "--int8",
                  "--out", str(full))
    result = {"machine": device_fingerprint("cpu"), "cores": args.cores,
              "seq_len": args.seq_len, "budget": args.budget,
              "interleaved": interleaved_threads(full, args.seq_len, args.rounds)}
    print(json.dumps(result["interleaved"], indent=1), file=sys.stderr)
    result["plans"] = {str(t or "default"): plan(args.work, args.supernet, args.sources, t,
                                                 args.budget, args.seq_len,
                                                 args.verify_seconds)
                       for t in (None, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {"chosen": v["chosen"], "verify": v["verification"]["judged_ms"]}
                      for k, v in result["plans"].items()}, indent=1))


if __name__ == "__main__":
    main()
