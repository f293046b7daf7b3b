"""A device with fewer usable cores than the machine has: one core of it (``taskset -c 0``,
a 1-CPU container or VM), or a CPU quota of one CPU on the cgroup it runs in.

The benchmark pins itself (and so every command it runs) to ``--cores`` where given (else it
runs as started, e.g. inside a cgroup with a CPU quota), then:

1. times the full MiniLM, fp32 and int8, with 1 and with 2 intra-op threads, interleaved turn
   by turn with the profile's protocol (``measure_interleaved``: a pause, the spinning threads
   parked, shuffled order), so the cost of more threads than usable cores is read in one run
   (under a CPU quota in alternating blocks of seconds instead: ``in_blocks``);
2. transfers a profile from ``--from`` with the default threads (one per usable core, since
   2026-12-05) and with ``--threads 2`` (the default before: what a profile made there would
   have timed), exports each at the same absolute budget (``--allow-unreliable`` where the
   profile is not reliable, and recorded) and verifies each bundle in its own process: which
   model the budget buys with and without the fix, its latency and fidelity.

    .venv/bin/python benchmarks/usable_cores.py --supernet runs/minilm-super --from profiles \\
        --cores 0 --budget 20ms --work /tmp/usable-cores \\
        --out benchmarks/results/usable_cores_intel_s36.json
    # a quota of one CPU (cgroup v1 here; v2: echo "100000 100000" > .../cpu.max)
    mkdir /sys/fs/cgroup/cpu/one && echo 100000 > /sys/fs/cgroup/cpu/one/cpu.cfs_quota_us
    echo $$ > /sys/fs/cgroup/cpu/one/cgroup.procs
    .venv/bin/python benchmarks/usable_cores.py --supernet runs/minilm-super --from profiles \\
        --budget 20ms --rounds 10 --work /tmp/usable-cores-quota \\
        --out benchmarks/results/usable_cores_quota_intel_s36.json
    # 1.5 CPUs (150000): --rounds 10 --no-plans --out .../usable_cores_quota15_intel_s36.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shaper_deploy.profiling.fingerprint import device_fingerprint
from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved, summarize
from shaper_deploy.runtime import cgroup_cpu_quota, make_session
from shaper_deploy.serving import Bundle

SHAPERCTL = Path(sys.executable).parent / "shaperctl"


def shaperctl(*args: str, may_fail: bool = False) -> dict:
    """One command, its stderr passed through as it comes (progress), its --json document
    returned; with ``may_fail``, a failure is returned as {"error": its last stderr line}."""
    print("$ shaperctl " + " ".join(args), file=sys.stderr)
    proc = subprocess.Popen([str(SHAPERCTL), *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = ""
    for line in proc.stderr:
        sys.stderr.write(line)
        last = line.strip() or last
    out = proc.stdout.read()
    if proc.wait() not in (0, 3):  # verify: 3 when the budget is not met
        if may_fail:
            return {"error": last}
        sys.exit(f"shaperctl {args[0]} failed ({proc.returncode})")
    return json.loads(out)


def in_blocks(runners: dict, rounds: int, seconds: float, rest: float = 0.3) -> dict:
    """Each runner back to back for ``seconds`` in turn (shuffled order each round), after
    ``rest`` seconds idle: under a CPU quota, sessions interleaved run by run share each
    quota period, so one session's throttling lands on the next one's runs."""
    rng = random.Random(0)
    medians, times = {k: [] for k in runners}, {k: [] for k in runners}
    order = list(runners)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            time.sleep(rest)
            block, stop = [], time.perf_counter() + seconds
            while time.perf_counter() < stop:
                t = time.perf_counter()
                runners[key]()
                block.append((time.perf_counter() - t) * 1000)
            medians[key].append(statistics.median(block))
            times[key].extend(block)
    return {k: summarize(medians[k], times[k]) for k in runners}


def interleaved_threads(folder: Path, seq_len: int, rounds: int, block_s: float) -> dict:
    """The full model's fp32 and int8 files with 1 and 2 threads, interleaved turn by turn
    (the profile's protocol), or in blocks of ``block_s`` seconds where that is > 0."""
    bundle = Bundle.load(folder)
    feeds = bundle.manifest.super_config.dummy_inputs(1, seq_len, padding="none")
    runners = {}
    for precision, file in (("fp32", "model.onnx"), ("int8", "model_quantized.onnx")):
        for threads in (1, 2):
            s = make_session(folder / file, threads=threads)
            names = [o.name for o in s.get_outputs()][:1]
            runners[(precision, threads)] = (lambda s=s, n=names: s.run(n, feeds))
    res = (in_blocks(runners, rounds, block_s) if block_s > 0 else
           measure_interleaved(runners, Protocol(rounds=rounds, park_ms=500.0)))
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
    failed = work / f"{name}-export-error.txt"  # a plan that bought nothing, kept as such
    if not (bundle / "shaper.json").is_file() and not failed.is_file():
        made_now = shaperctl("export", "--supernet", supernet, "--latency", budget,
                             "--seq-len", str(seq_len), "--profile", str(profile), "--out",
                             str(bundle), *(["--allow-unreliable"] if unreliable else []),
                             may_fail=True)
        if "error" in made_now:
            failed.write_text(made_now["error"] + "\n")
    minutes = round(made.header.summary["last_run"]["seconds"] / 60, 2)  # its own record
    head = {"threads": made.header.protocol.threads, "profile_minutes": minutes,
            "held_out_mape": {q: round(made.model.metrics[q]["held_out"]["mape"], 4)
                              for q in made.precisions},
            "trust": made.trust, "planned_with_allow_unreliable": unreliable}
    if failed.is_file():
        return {**head, "export_error": failed.read_text().strip()}
    p = json.loads((bundle / "shaper.json").read_text())["plan"]
    if not p.get("verification"):  # written by verify, in its own process
        shaperctl("verify", str(bundle), "--duration", str(seconds))
    p = json.loads((bundle / "shaper.json").read_text())["plan"]
    keys = ("precision", "shape", "params", "predicted_ms", "measured_ms", "fidelity")
    return {**head, "budget_ms": p["budget_ms"],
            "chosen": {k: p[k] for k in keys},
            "candidates": [{k: c.get(k) for k in keys + ("status",)} for c in p["candidates"]],
            "verification": p["verification"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", required=True)
    ap.add_argument("--from", dest="sources", required=True)
    ap.add_argument("--budget", default="20ms")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--cores", default=None, help="the CPUs to run on, e.g. 0 or 0,1 "
                    "(default: as started)")
    ap.add_argument("--rounds", type=int, default=30, help="interleaved turns per session")
    ap.add_argument("--block-seconds", type=float, default=None,
                    help="time each session back to back for this long in turn instead of "
                         "turn by turn (default: 2 under a CPU quota, else 0: turn by turn)")
    ap.add_argument("--verify-seconds", type=float, default=60.0)
    ap.add_argument("--no-plans", action="store_true",
                    help="only the interleaved threads (step 1), e.g. under other quotas")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    args.work.mkdir(parents=True, exist_ok=True)
    full = args.work / "full"
    if not (full / "shaper.json").is_file():
        shaperctl("export", "--supernet", args.supernet, "--shape", "384x6", "--int8",
                  "--out", str(full))
    quota = cgroup_cpu_quota()
    block_s = args.block_seconds if args.block_seconds is not None else (2.0 if quota else 0.0)
    result = {"machine": device_fingerprint("cpu"), "cores": args.cores,
              "cgroup_cpu_quota": quota, "seq_len": args.seq_len, "budget": args.budget,
              "interleaved_in_blocks_of_s": block_s,
              "interleaved": interleaved_threads(full, args.seq_len, args.rounds, block_s)}
    print(json.dumps(result["interleaved"], indent=1), file=sys.stderr)
    result["plans"] = {} if args.no_plans else {
        str(t or "default"): plan(args.work, args.supernet, args.sources, t, args.budget,
                                  args.seq_len, args.verify_seconds) for t in (None, 2)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v.get("export_error") or {"chosen": v["chosen"],
                                                    "verify": v["verification"]["judged_ms"]}
                      for k, v in result["plans"].items()}, indent=1))


if __name__ == "__main__":
    main()
