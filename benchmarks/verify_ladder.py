"""How `verify` judges a planned bundle on a host whose speed moves in periods of minutes: one
window of ``--duration`` seconds (as before session 55) against its ladder (on to 60 s, then
300 s, while the window is over the budget only in the requests just timed), replayed on one
long recording of the bundle.

**Record.** The bundle is timed as ``verify`` times it (``measure_model``: the profile's
protocol at the plan's workload, interleaved with the profile's reference graph) for
``--minutes``, cut into chunks of about ``--chunk`` seconds through its ``extend`` hook. Each
chunk's model and reference runs are appended to ``--recording`` (JSON lines, after a first
line with the plan) as it ends, so an interrupted recording resumes where it stopped (in a
new session).

**Replay.** From every chunk a verify could start at (with ``--longest`` seconds of the
recording after it), three verdicts, each judged by ``DeviceProfile.judge`` on the pooled
runs as ``verify`` judges them:

- one window of ``--duration`` seconds;
- the ladder, as ``verify`` runs now (``predictor.longer_window``, capped at ``--longest``);
- one window of ``--longest`` seconds;

and the whole recording judged at once: the percentile over all its minutes, the verdict a
user who measured that long would get. Budgets: the plan's own, and the whole recording's
judged percentile x 0.95, 1.00, 1.05 and 1.10, where a verdict is close. Per budget and rule:
the share judged OVER, the verdicts that disagree with the whole recording's (OVER where it
is within; within where it is OVER), and the mean seconds a verify spent. Windows from
neighbouring chunks overlap, so they are not independent trials.

    .venv/bin/python benchmarks/verify_ladder.py runs/minilm-budget \\
        --profile runs/profile-this-machine --minutes 20 \\
        --recording runs/verify-ladder.jsonl --out benchmarks/results/verify_ladder.json

A recording kept in ``benchmarks/data/`` (gzipped, beside the profile it was timed against)
replays without the bundle: leave BUNDLE out, and the plan comes from its first line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import numpy as np

from shaper_deploy.bundle import BundleManifest
from shaper_deploy.io import atomic_write_bytes
from shaper_deploy.profiling.predictor import DeviceProfile, longer_window
from shaper_deploy.profiling.profile import FLOOR_LEVEL, measure_model, timed_result

SCALES = (0.95, 1.00, 1.05, 1.10)


PLAN_FIELDS = ("precision", "batch", "seq_len", "percentile", "budget_ms", "predicted_ms")


def read_recording(path: Path) -> tuple[dict | None, list[dict]]:
    """A recording's first line (the bundle and its plan; None when the file is missing) and
    its chunks so far (a kept recording may be gzipped, ``.gz``); a line that is not a chunk
    (a write cut short) ends it there."""
    head, chunks = None, []
    if path.exists():
        text = (gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz"
                else path.read_text())
        lines = text.splitlines()
        head = json.loads(lines[0]) if lines else None
        if not isinstance(head, dict) or set(head) != {"bundle", "plan"}:
            sys.exit(f"verify_ladder: {path} does not start with a recording's first line")
        for line in lines[1:]:
            try:
                c = json.loads(line)
                if {"seconds", "times", "reference_times"} <= set(c):
                    chunks.append(c)
                    continue
            except json.JSONDecodeError:
                pass
            print(f"verify_ladder: {path}: ignoring a cut line and what follows",
                  file=sys.stderr)
            break
    return head, chunks


def record(bundle: Path | None, profile: DeviceProfile, minutes: float, chunk: float,
           path: Path) -> tuple[dict, list[dict]]:
    """Time the bundle until the recording holds ``minutes``; each chunk appended as it ends.
    The plan: the bundle's, or (without one) the recording's."""
    head, chunks = read_recording(path)
    if bundle is not None:
        manifest = BundleManifest.read(bundle)
        plan = {k: manifest.plan[k] for k in PLAN_FIELDS}
        if head is not None and head["plan"] != plan:
            sys.exit(f"verify_ladder: {path} recorded another plan ({head['bundle']})")
        head = {"bundle": str(bundle), "plan": plan}
    elif head is None:
        sys.exit(f"verify_ladder: no BUNDLE and no recording at {path}: pass a planned bundle")
    plan = head["plan"]
    have = sum(c["seconds"] for c in chunks)
    target = minutes * 60
    if have >= target:
        return head, chunks
    if bundle is None or path.suffix == ".gz":
        sys.exit(f"verify_ladder: {path} is a kept recording ({have / 60:.1f} min), replayed "
                 f"only (no BUNDLE to time); --minutes {minutes:g} asks for more")
    workload = (plan["batch"], plan["seq_len"])
    ref_ms = profile.reference_ms(plan["precision"], *workload)
    seen = {"runs": 0, "ref": 0, "seconds": 0.0}
    start = time.time()

    def cut(m: dict) -> float | None:
        nonlocal have
        c = {"t": time.time(), "seconds": round(m["seconds"] - seen["seconds"], 2),
             "times": m["times"][seen["runs"]:],
             "reference_times": m["reference_times"][seen["ref"]:]}
        seen.update(runs=len(m["times"]), ref=len(m["reference_times"]), seconds=m["seconds"])
        with path.open("a") as f:
            f.write(json.dumps(c) + "\n")
        chunks.append(c)
        have += c["seconds"]
        rate = m["seconds"] / max(time.time() - start, 1e-9)
        eta = max(target - have, 0) / max(rate, 1e-9)
        print(f"verify_ladder: {have / 60:.1f} of {minutes:g} min recorded, chunk drift "
              f"x{np.percentile(c['reference_times'], FLOOR_LEVEL) / ref_ms:.2f}, "
              f"ETA {eta / 60:.1f} min", file=sys.stderr)
        return None if have >= target else m["seconds"] + chunk

    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text(json.dumps(head) + "\n")
    model = bundle / BundleManifest.read(bundle).default_model
    print(f"verify_ladder: recording {model} for {(target - have) / 60:.1f} min more "
          f"({have / 60:.1f} recorded)", file=sys.stderr)
    measure_model(model, profile.header, ref_ms, plan["precision"], workload, "cpu",
                  seconds=chunk, extend=cut)
    return head, chunks


def pooled(chunks: list[dict], ref_ms: float, plan: dict) -> dict:
    """Chunks as one ``measure_model`` result: their runs together (the chunks keep no round
    medians, so ``measured_ms`` is the runs' median; ``judge`` passes it through)."""
    times = [t for c in chunks for t in c["times"]]
    return timed_result(times, [t for c in chunks for t in c["reference_times"]], ref_ms,
                        plan["precision"], (plan["batch"], plan["seq_len"]),
                        sum(c["seconds"] for c in chunks), float(np.median(times)))


def upto(chunks: list[dict], i: int, seconds: float) -> int:
    """The end (exclusive) of the fewest chunks from ``i`` that span ``seconds``."""
    total, j = 0.0, i
    while j < len(chunks) and total < seconds * 0.99:
        total += chunks[j]["seconds"]
        j += 1
    return j


def replay(chunks: list[dict], profile: DeviceProfile, plan: dict, budget: float,
           duration: float, longest: float, whole: dict) -> dict:
    """The three rules' verdicts at ``budget`` from every start, against ``whole`` (the whole
    recording judged at once)."""
    ref_ms = profile.reference_ms(plan["precision"], plan["batch"], plan["seq_len"])
    pct = plan["percentile"]

    def judged(i: int, j: int) -> dict:
        return profile.judge(pooled(chunks[i:j], ref_ms, plan), plan["precision"], pct)

    truth = whole["judged_ms"] <= budget
    rules = {"one window": [], "ladder": [], "one long window": []}
    steps = []
    starts = [i for i in range(len(chunks))
              if sum(c["seconds"] for c in chunks[i:]) >= longest * 0.99]
    for i in starts:
        first = judged(i, upto(chunks, i, duration))
        rules["one window"].append((first["judged_ms"] <= budget, first["seconds"]))
        r, n = first, 1
        while (total := longer_window(r, budget, longest)) is not None:
            r, n = judged(i, upto(chunks, i, total)), n + 1
        rules["ladder"].append((r["judged_ms"] <= budget, r["seconds"]))
        steps.append(n)
        long = judged(i, upto(chunks, i, longest))
        rules["one long window"].append((long["judged_ms"] <= budget, long["seconds"]))
    out = {"budget_ms": budget, "whole_judged_ms": whole["judged_ms"],
           "whole_within": truth, "starts": len(starts),
           "ladder_windows": {str(k): steps.count(k) for k in sorted(set(steps))}}
    for name, verdicts in rules.items():
        within = np.array([v for v, _ in verdicts])
        out[name] = {"over": float(np.mean(~within)),
                     "over_where_whole_within": float(np.mean(~within)) if truth else 0.0,
                     "within_where_whole_over": 0.0 if truth else float(np.mean(within)),
                     "mean_seconds": float(np.mean([s for _, s in verdicts]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", type=Path, nargs="?",
                    help="the planned bundle to time (leave out to replay a recording)")
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--chunk", type=float, default=5.0)
    ap.add_argument("--duration", type=float, default=20.0, help="verify's first window (s)")
    ap.add_argument("--longest", type=float, default=300.0)
    ap.add_argument("--recording", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    profile = DeviceProfile.load(args.profile)
    head, chunks = record(args.bundle, profile, args.minutes, args.chunk, args.recording)
    plan = head["plan"]
    ref_ms = profile.reference_ms(plan["precision"], plan["batch"], plan["seq_len"])
    drift = np.array([np.percentile(c["reference_times"], FLOOR_LEVEL) / ref_ms
                      for c in chunks])
    whole = profile.judge(pooled(chunks, ref_ms, plan), plan["precision"], plan["percentile"])
    budgets = {"the plan's": plan["budget_ms"],
               **{f"the whole recording's x{s:.2f}": whole["judged_ms"] * s for s in SCALES}}
    result = {"bundle": head["bundle"], "profile": str(args.profile),
              "recording_file": str(args.recording), "plan": plan,
              "recording": {"minutes": round(sum(c["seconds"] for c in chunks) / 60, 2),
                            "chunks": len(chunks), "runs": sum(len(c["times"]) for c in chunks),
                            "drift": {"median": float(np.median(drift)),
                                      "p90": float(np.percentile(drift, 90)),
                                      "max": float(drift.max()),
                                      "over_1.1": float(np.mean(drift > 1.1))},
                            "priced_slowdown": profile.priced_slowdown(plan["precision"]),
                            "whole": {k: whole[k] for k in ("observed_ms", "estimated_ms",
                                                            "judged_ms", "drift")}},
              "duration": args.duration, "longest": args.longest,
              "budgets": {name: replay(chunks, profile, plan, b, args.duration, args.longest,
                                       whole) for name, b in budgets.items()}}
    atomic_write_bytes(args.out, (json.dumps(result, indent=1) + "\n").encode())
    for name, r in result["budgets"].items():
        print(f"{name} {r['budget_ms']:.2f} ms (whole: {r['whole_judged_ms']:.2f}, "
              f"{'within' if r['whole_within'] else 'OVER'}; {r['starts']} starts): " + "; ".join(
                  f"{k} OVER {r[k]['over']:.0%} ({r[k]['mean_seconds']:.0f} s)"
                  for k in ("one window", "ladder", "one long window")))


if __name__ == "__main__":
    main()
