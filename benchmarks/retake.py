"""``shaperctl profiles retake``, measured: a profile before and after its retake, side by
side, each scored on the floors of other profiles of this machine.

Copies PROFILE to WORK/retaken and runs ``shaperctl profiles retake`` on the copy in a process
of its own (``--minutes`` passed on), or takes a retake already made (``--retaken DIR``, with
its retake's ``--json`` output as ``--report``); then writes, for the profile before and
after: its trust, and per precision its floors timed slow, held-out MAPE and noise floor, and
its error on each ``--yardstick`` profile's measured floors (every shape the yardstick
measured, at the sizes both profiles cover: another profile of this machine, made at another
time, as ``benchmarks/transfer.py`` scores a transfer on a direct profile's shapes).

    .venv/bin/python benchmarks/retake.py benchmarks/data/amd-zen4-bert-base-direct-s52 \\
        --yardstick profiles/amd-epyc-zen4-2core-avx512-bert-base-calm-looks \\
        --work runs/retake-bert --out benchmarks/results/retake_amd_zen4_bert_base_s53.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from shaper_deploy.io import atomic_write_bytes
from shaper_deploy.profiling.folder import read_measurements
from shaper_deploy.profiling.predictor import DeviceProfile, noise_of, slow_floors_of
from transfer import score_by_precision


def figures(profile: DeviceProfile, yardsticks: list[DeviceProfile]) -> dict:
    """What judges a profile: trust, and per precision its floors timed slow, held-out error,
    noise floor and error on each yardstick's floors."""
    scored = {}
    for other in yardsticks:
        records = read_measurements(other.path)
        keys = sorted({r["shape_key"] for r in records if r["phase"] == "main"})
        scored[str(other.path)] = score_by_precision(profile.model, other, records, keys)
    return {"trust": profile.trust, "precisions": {
        p: {"slow_floors": slow_floors_of(profile.header, p),
            "held_out": profile.model.metrics[p]["held_out"],
            "noise_floor": noise_of(profile.header, p),
            "on": {y: s[p] for y, s in scored.items() if p in s}}
        for p in profile.precisions}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--yardstick", type=Path, action="append", default=[])
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--work", type=Path, default=Path("runs/retake"))
    ap.add_argument("--retaken", type=Path, default=None,
                    help="a retake already made of PROFILE (a copy, retaken)")
    ap.add_argument("--report", type=Path, default=None,
                    help="with --retaken: its `profiles retake --json` output")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    yardsticks = [DeviceProfile.load(y) for y in args.yardstick]
    before = DeviceProfile.load(args.profile)
    if args.retaken is None:
        retaken = args.work / "retaken"
        if retaken.exists():
            shutil.rmtree(retaken)
        shutil.copytree(args.profile, retaken)
        command = [str(Path(sys.executable).with_name("shaperctl")), "profiles", "retake",
                   str(retaken), "--json"] + (["--minutes", str(args.minutes)]
                                              if args.minutes else [])
        started = time.perf_counter()
        done = subprocess.run(command, stdout=subprocess.PIPE, check=True)
        report = json.loads(done.stdout)["retake"]
        report["wall_s"] = round(time.perf_counter() - started, 1)
    else:
        retaken = args.retaken
        report = json.loads(args.report.read_text())["retake"] if args.report else None
    out = {"profile": str(args.profile), "retaken": str(retaken), "retake": report,
           "yardsticks": [str(y) for y in args.yardstick],
           "before": figures(before, yardsticks),
           "after": figures(DeviceProfile.load(retaken), yardsticks)}
    atomic_write_bytes(args.out, (json.dumps(out, indent=2) + "\n").encode())
    for when in ("before", "after"):
        f = out[when]
        print(when, "reliable" if f["trust"]["reliable"] else "UNRELIABLE", "; ".join(
            f"{p}: slow {v['slow_floors']['slow']}/{v['slow_floors']['points']}, MAPE "
            f"{v['held_out']['mape']:.2%}, noise {v['noise_floor']:.1%}, " + ", ".join(
                f"on {Path(y).name} {s['mape']:.2%} ({s['within_10pct']:.0%})"
                for y, s in v["on"].items())
            for p, v in f["precisions"].items()))


if __name__ == "__main__":
    main()
