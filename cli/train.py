"""``shaperctl train supernet``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable

import click

from shaper_deploy.training.config import (DEVICES, OBJECTIVES, ORDERS, PRECISIONS,
                                           QUALITY_METRICS, TaskConfig, TrainConfig)

from .common import (ShaperGroup, emit, exports_drop, json_option, percentile_option,
                     predicted_by, profile_here, progress, resumable, table, widths_option)

_DEFAULT = TrainConfig()
_TASK = TaskConfig()


def _checkpoint_kept(out: Path) -> str:
    return (f"the last checkpoint in {out / 'checkpoint'} is kept: run the same command again "
            "to resume from it")


@click.group(cls=ShaperGroup)
def train() -> None:
    """Train super networks."""


@train.command("supernet")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="The super network to start from (for distill, also the teacher).")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="A .txt file or a folder of them; one text per line.")
@click.option("--objective", type=click.Choice(OBJECTIVES), default="distill",
              show_default=True, help="Masked-LM, or match the source's hidden states.")
@click.option("--steps", required=True, type=int, help="Optimizer steps.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Training folder: checkpoint/ (resumed automatically), supernet/, train.json.")
@click.option("--batch-size", default=_DEFAULT.batch_size, show_default=True, type=int,
              help="Blocks per process per micro-batch.")
@click.option("--accumulate", default=_DEFAULT.accumulate, show_default=True, type=int,
              help="Micro-batches per optimizer step (gradient accumulation).")
@click.option("--seq-len", default=_DEFAULT.seq_len, show_default=True, type=int,
              help="Tokens per block.")
@click.option("--random-shapes", default=_DEFAULT.random_shapes, show_default=True, type=int,
              help="Random shapes per step besides the largest and the smallest.")
@click.option("--lr", default=_DEFAULT.lr, show_default=True, type=float,
              help="Peak learning rate.")
@click.option("--warmup-steps", default=-1, show_default="5% of --steps", type=int,
              help="Linear warm-up steps, then linear decay to 0.")
@click.option("--layer-loss", default=_DEFAULT.layer_loss, show_default=True, type=float,
              help="distill: weight of every layer's output as a target beside the final "
                   "hidden state (0: final only).")
@click.option("--order", default=_DEFAULT.order, show_default=True, type=click.Choice(ORDERS),
              help="Put features in order of importance before the first step, so slices "
                   "keep the ones that matter (the full shape is unchanged).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES),
              help="auto: cuda when a GPU is usable; under torchrun each process takes "
                   "cuda:LOCAL_RANK.")
@click.option("--precision", default="auto", show_default=True,
              type=click.Choice(PRECISIONS),
              help="auto: bf16 autocast where the device computes bf16 natively (GPUs that "
                   "support it, CPUs with AVX-512 BF16 or AMX), else fp32.")
@click.option("--checkpoint-every", default=_DEFAULT.checkpoint_every, show_default=True,
              type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--stop-after", default=None, type=click.IntRange(1),
              help="Checkpoint after this step of the schedule and stop (time-limited jobs); "
                   "run the command again without it to continue.")
@widths_option
@json_option
def supernet(supernet_path: Path, data_path: Path, objective: str, steps: int, out: Path,
             batch_size: int, accumulate: int, seq_len: int, random_shapes: int, lr: float,
             warmup_steps: int, layer_loss: float, order: str, device: str, precision: str,
             checkpoint_every: int, seed: int, stop_after: int | None, supershaper_widths,
             as_json: bool) -> None:
    """Sandwich-rule training: each step the largest, smallest and random shapes.

    On many processes or GPUs, launch the same command with torchrun; an interrupted run
    resumes from --out/checkpoint with the same data order and shape draws (Ctrl-C finishes
    the running step and checkpoints it).

    \b
    Examples:
      shaperctl train supernet --supernet ./super --data texts/ --steps 500 --out runs/t
      torchrun --nproc-per-node 4 -m shaper_deploy.cli.main train supernet \\
          --supernet ./super --data texts/ --steps 500 --out runs/t
    """
    from shaper_deploy.io import check_output_dir, output_lock
    from shaper_deploy.supernet import read_checkpoint_header
    from shaper_deploy.training.data import read_texts, tokenize
    from shaper_deploy.training.sandwich import train_supernet, training_device

    config = TrainConfig(objective=objective, steps=steps, batch_size=batch_size,
                         accumulate=accumulate, seq_len=seq_len, random_shapes=random_shapes,
                         lr=lr, warmup_steps=warmup_steps,
                         layer_loss=layer_loss,
                         order=order, device=device, precision=precision,
                         checkpoint_every=checkpoint_every, seed=seed)
    training_device(config)  # a GPU that is not there fails here, before any long work
    header = read_checkpoint_header(supernet_path, supershaper_widths)
    # --out is a resumable folder: one that exists is fine, a file or a read-only place is
    # not; checked before any long work (it used to fail at the first checkpoint).
    check_output_dir(out, force=True, inputs={"--supernet": supernet_path, "--data": data_path})
    if out.is_dir() and not os.access(out, os.W_OK | os.X_OK):
        raise click.ClickException(f"cannot write to {out}: it is not writable")
    tokenizer = Path(supernet_path) / "tokenizer.json"
    if not tokenizer.is_file():
        raise click.ClickException(f"super network {supernet_path} has no tokenizer.json, "
                                   "which training needs to read text")
    corpus = tokenize(read_texts(data_path), tokenizer.read_bytes(), seq_len,
                      config.val_fraction, header["config"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one report for all ranks
        progress(f"{len(corpus.train)} training and {len(corpus.val)} validation blocks of "
                 f"{seq_len} tokens")
    # One writer per --out; under torchrun the ranks share it and rank 0 holds the lock.
    lock = output_lock(out) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with lock, resumable(_checkpoint_kept(out)):
        summary = train_supernet(supernet_path, corpus, config, out, progress,
                                 supershaper_widths, stop_after)
    if os.environ.get("RANK", "0") != "0":  # under torchrun rank 0 reports
        return
    summary = {k: v for k, v in summary.items() if k != "history"}
    if "stopped_at" in summary:
        return emit({"out": str(out), **summary}, as_json, lambda d: table([
            ("stopped", f"after step {d['stopped_at']} of {d['steps']} (--stop-after); run "
                        "the same command without it to continue"),
            ("checkpoint", str(Path(d["out"]) / "checkpoint"))]))
    emit({"out": str(out), **summary}, as_json, lambda d: table([
        ("trained", f"{d['steps']} steps, {d['objective']}, {d['world_size']} process(es)"),
        ("validation", ", ".join(f"{k} {v['loss']:.4f}" for k, v in d["validation"].items())),
        ("super network", str(Path(d["out"]) / "supernet"))]))



@train.command("quality")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="The (trained) super network whose shapes to measure.")
@click.option("--data", "data_path", required=True, type=click.Path(path_type=Path),
              help="Held-out text: a .txt file or a folder of them; with --metric task, "
                   "labelled data (.csv, .tsv, .jsonl) with the task network's columns.")
@click.option("--metric", type=click.Choice(list(QUALITY_METRICS)), default="cosine",
              show_default=True,
              help="Embedding cosine to the full network, masked-LM perplexity, or a task "
                   "network's own metric on labelled --data (accuracy; Pearson for a "
                   "regression), as export --eval screens shapes.")
@click.option("--samples", default=200, show_default=True, type=int,
              help="Shapes to measure, spread over the parameter range.")
@click.option("--seq-len", default=128, show_default=True, type=int)
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for quality.ubj, quality.json and the measured shapes.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@widths_option
@json_option
def quality(supernet_path: Path, data_path: Path, metric: str, samples: int, seq_len: int,
            out: Path, force: bool, supershaper_widths, as_json: bool) -> None:
    """Measure shapes' quality on held-out text and fit an XGBoost quality predictor.

    \b
    Example:
      shaperctl train quality --supernet runs/t/supernet --data val/ --out runs/quality
    """
    from shaper_deploy.io import check_output_dir, output_lock

    check_output_dir(out, force, inputs={"--supernet": supernet_path, "--data": data_path})
    with output_lock(out):
        _quality(supernet_path, data_path, metric, samples, seq_len, out, force,
                 supershaper_widths, as_json)


def _quality(supernet_path, data_path, metric, samples, seq_len, out, force, widths,
             as_json) -> None:
    import json

    from shaper_deploy.io import atomic_dir, atomic_write_bytes
    from shaper_deploy.supernet import load_supernet
    from shaper_deploy.training.data import read_texts, tokenize
    from shaper_deploy.training.quality import (MAX_BLOCKS, QUALITY_PLOT, draw_quality,
                                                fit_quality, quality_dataset)

    model = load_supernet(supernet_path, widths)
    if "tokenizer.json" not in model.tokenizer_files:
        raise click.ClickException(f"super network {supernet_path} has no tokenizer.json")
    corpus, judge, measured_on = None, None, None
    if metric == "task":
        from shaper_deploy.judge import make_judge
        from shaper_deploy.taskdata import read_task_data

        head = model.config.task_head
        if head is None:
            raise click.ClickException(f"--metric task needs a task super network (shaperctl "
                                       f"train task); {supernet_path} has no task head")
        data = read_task_data(data_path, head.text_column, head.label_column,
                              head.pair_column or None, head.problem == "regression",
                              trained_on=f"task network {supernet_path}")
        judge = make_judge(model, "text-classification", None, seq_len, data, option="--data")
        measured_on = (f"{judge.metric}, the first {judge.screened_rows} of "
                       f"{judge.rows} rows at {seq_len} tokens, PyTorch fp32")
    else:
        corpus = tokenize(read_texts(data_path), model.tokenizer_files["tokenizer.json"],
                          seq_len, 0.5, model.config)
        measured_on = (("mean cosine of mean-pooled embeddings to the full network" if
                        metric == "cosine" else "masked-LM perplexity")
                       + f", {min(MAX_BLOCKS, len(corpus.val))} blocks of {seq_len} tokens of "
                         f"{data_path}, PyTorch fp32")
    shapes, values = quality_dataset(model, corpus, metric, samples, progress=progress,
                                     judge=judge)
    predictor = fit_quality(shapes, values, metric, measured_on=measured_on)
    with atomic_dir(out, force) as tmp:  # the folder appears whole, or not at all
        predictor.save(tmp)
        atomic_write_bytes(tmp / "measurements.json", (json.dumps(
            [{"shape": list(s.widths), "params": s.params(), metric: v}
             for s, v in zip(shapes, values)], indent=1) + "\n").encode())
        draw_quality(tmp, shapes, values, predictor)
    h = predictor.meta["held_out"]
    emit({"out": str(out), **predictor.meta}, as_json, lambda d: table([
        ("predictor", f"{out} ({d.get('measured_on', metric)}; {d['trained_on']} shapes "
                      "fitted)"),
        ("held out", f"R^2 {h['r2']:.4f}, Spearman {h['spearman']:.4f} ({h['n']} shapes)"),
        ("plot", str(out / QUALITY_PLOT))]))


@train.command("task")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="The super network to fine-tune (made by supernet init or train supernet).")
@click.option("--train", "train_path", required=True, type=click.Path(path_type=Path),
              help="Labelled training data: .csv, .tsv (with a header row) or .jsonl.")
@click.option("--validation", "validation_path", type=click.Path(path_type=Path), default=None,
              help="Labelled validation data, same columns: the task metric per shape.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--pair-column", default=None, help="Second text of a pair (text-pair tasks).")
@click.option("--label-column", default="label", show_default=True)
@click.option("--regression", is_flag=True, help="Numeric labels: learn a score (e.g. STS-B).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Training folder: checkpoint/ (resumed automatically), teacher/ (the full "
                   "shape fine-tuned), supernet/ (every shape), train.json.")
@click.option("--full-steps", default=_TASK.full_steps, show_default=True, type=int,
              help="Phase 1: steps fine-tuning the full shape alone (the teacher).")
@click.option("--steps", default=_TASK.steps, show_default=True, type=int,
              help="Phase 2: sandwich steps, every shape distilling the teacher.")
@click.option("--batch-size", default=_TASK.batch_size, show_default=True, type=int)
@click.option("--seq-len", default=_TASK.seq_len, show_default=True, type=int,
              help="Tokens per text (pair); longer ones are cut.")
@click.option("--lr", default=_TASK.lr, show_default=True, type=float)
@click.option("--sandwich-lr", default=None, type=float,
              help="Phase 2's peak learning rate, on the same linear decay (default: 4 x --lr, "
                   "at most 2e-4, never below --lr).")
@click.option("--random-shapes", default=_TASK.random_shapes, show_default=True, type=int)
@click.option("--temperature", default=_TASK.temperature, show_default=True, type=float,
              help="Softening of the distilled class distributions.")
@click.option("--layer-loss", default=_TASK.layer_loss, show_default=True, type=float,
              help="Weight of the teacher's layer outputs in what every shape distils "
                   "(DynaBERT's hidden-state loss; 0 = the teacher's outputs only).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(DEVICES))
@click.option("--checkpoint-every", default=_TASK.checkpoint_every, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--shape", "shape_text", default=None,
              help="Fine-tune this one shape alone for --full-steps (--steps 0): "
                   "'360,240,...', '240x6', or a plan's BUNDLE/shaper.json.")
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), default=None,
              help="With --shape: the shape also distils this task network's full shape "
                   "(a train task run's teacher/ of the same data).")
@click.option("--order", default=_TASK.order, show_default=True, type=click.Choice(ORDERS),
              help="Put features in order of importance on the first 256 training texts "
                   "before the first step (DynaBERT's rewiring; kept as it is when the super "
                   "network is ordered already; not with --shape). Off by default: measured "
                   "no gain after fine-tuning (docs/classifiers.md).")
@click.option("--stop-after", default=None, type=click.IntRange(1),
              help="Checkpoint after this step and stop; run again without it to continue.")
@json_option
def task(supernet_path: Path, train_path: Path, validation_path: Path | None, text_column: str,
         pair_column: str | None, label_column: str, regression: bool, out: Path,
         full_steps: int, steps: int, batch_size: int, seq_len: int, lr: float,
         sandwich_lr: float | None, random_shapes: int, temperature: float, layer_loss: float,
         device: str, checkpoint_every: int, seed: int, shape_text: str | None,
         teacher_path: Path | None, order: str, stop_after: int | None, as_json: bool) -> None:
    """Fine-tune a super network on labelled text: every shape becomes a classifier.

    The full shape is fine-tuned first (the teacher), then every shape learns it with the
    sandwich rule, distilling its outputs (DynaBERT's recipe). Export the result with
    --task text-classification; plan it with export --latency --eval FILE. On many processes
    or GPUs, launch the same command with torchrun (each takes --batch-size texts); an
    interrupted run resumes from --out/checkpoint.

    \b
    Example:
      shaperctl train task --supernet runs/super --train train.csv --validation val.csv \\
          --text-column review --label-column sentiment --out runs/task
    """
    from shaper_deploy.io import check_output_dir, output_lock
    from shaper_deploy.shape import parse_shape
    from shaper_deploy.supernet import read_checkpoint_header
    from shaper_deploy.taskdata import read_task_data
    from shaper_deploy.training.task import train_task

    shape = None
    if shape_text is not None:
        space = read_checkpoint_header(supernet_path)["config"].space
        shape = parse_shape(shape_text, space).widths
    config = TaskConfig(full_steps=full_steps, steps=steps, batch_size=batch_size,
                        seq_len=seq_len, lr=lr, sandwich_lr=sandwich_lr,
                        random_shapes=random_shapes, temperature=temperature,
                        layer_loss=layer_loss, seed=seed, checkpoint_every=checkpoint_every,
                        device=device, shape=shape, order=order,
                        teacher=None if teacher_path is None else str(teacher_path))
    config.device_settings()  # a device this machine lacks fails before any work
    check_output_dir(out, force=True, inputs={"--supernet": supernet_path, "--train": train_path,
                                              "--validation": validation_path,
                                              "--teacher": teacher_path})
    columns = dict(text_column=text_column, label_column=label_column, pair_column=pair_column,
                   regression=regression)
    train_data = read_task_data(train_path, **columns)
    val_data = read_task_data(validation_path, **columns) if validation_path else None
    # one writer per --out; under torchrun the ranks share it and rank 0 holds the lock
    rank0 = os.environ.get("RANK", "0") == "0"
    with output_lock(out) if rank0 else contextlib.nullcontext(), \
            resumable(_checkpoint_kept(out)):
        summary = train_task(supernet_path, train_data, config, out, val_data,
                             (text_column, pair_column or "", label_column), progress,
                             stop_after)
    if not rank0:  # under torchrun rank 0 reports
        return
    emit({"out": str(out), **{k: v for k, v in summary.items() if k != "history"}}, as_json,
         _task_text)


def _task_text(d: dict) -> str:
    if "stopped_at" in d:
        return f"stopped after step {d['stopped_at']} of {d['steps']}; run again to continue"
    rows = [("super network", f"{d['out']}/supernet ({d['head']['problem']}, labels "
                              f"{', '.join(d['head']['labels']) or 'a score'})"),
            ("trained on", f"{d['train_texts']} texts, {d['steps']} steps, "
                           f"{d['seconds']:.0f} s")]
    for name, metrics in d["validation"].items():
        rows.append((f"validation {name}", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())))
    return table(rows)


@click.command("search")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="Super network whose design space to search.")
@click.option("--quality-predictor", "quality_path", required=True,
              type=click.Path(path_type=Path), help="Folder written by shaperctl train quality.")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Latency profile for --latency (and latency in the results); with "
                   "--latency and without it, this machine's profile in ./profiles, the one "
                   "profiles list marks.")
@click.option("--latency", "latency_text", default=None,
              help="Latency limit: 20ms, or 80% of the full fp32 model's latency on the "
                   "profile at the workload (as export --latency means it).")
@percentile_option("Percentile of request latency the limit is for.")
@click.option("--batch", default=None, type=click.IntRange(1),
              help="Batch size of the latency limit (default: the profile's reference size).")
@click.option("--seq-len", default=None, type=click.IntRange(1),
              help="Sequence length of the latency limit (default: the profile's reference "
                   "size).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32",
              show_default=True, help="The precision whose latency the limit is for.")
@click.option("--for-device", is_flag=True, help="Accept a profile of another machine.")
@click.option("--allow-unreliable", is_flag=True, help="Accept a profile marked unreliable.")
@click.option("--params", "params_text", default=None, help="Parameter limit, e.g. 60M.")
@click.option("--iterations", default=300, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int)
@widths_option
@json_option
def search(supernet_path: Path, quality_path: Path, profile_path: Path | None,
           latency_text: str | None, percentile: float, batch: int | None,
           seq_len: int | None, precision: str, for_device: bool,
           allow_unreliable: bool, params_text: str | None, iterations: int, seed: int,
           supershaper_widths, as_json: bool) -> None:
    """Evolutionary search for the best shape under parameter and latency limits.

    \b
    Example:
      shaperctl search --supernet ./super --quality-predictor runs/quality \\
          --profile profiles/mine --latency 20ms --params 60M
    """
    from shaper_deploy.heuristics import parse_count
    from shaper_deploy.promise import parse_budget
    from shaper_deploy.supernet import read_checkpoint_header
    from shaper_deploy.training.quality import QualityPredictor
    from shaper_deploy.training.search import SearchConfig, evolutionary_search

    space = read_checkpoint_header(supernet_path, supershaper_widths)["config"].space
    model = QualityPredictor.load(quality_path)
    if model.space != space:
        raise click.ClickException("the quality predictor covers another design space than "
                                   "the super network")
    latency: Callable[[list], Any] | None = None
    if latency_text and profile_path is None and not for_device:
        profile_path = profile_here(space, "cpu", supernet_path)
    if profile_path is None and (batch or seq_len or precision != "fp32"):
        raise click.UsageError("--batch, --seq-len and --precision go with a profile "
                               "(--profile, or --latency)")
    limit, latency_limit, heading = None, None, []
    if profile_path is not None:
        from shaper_deploy.profiling.predictor import DeviceProfile

        device_profile = DeviceProfile.load(profile_path)
        differences = device_profile.check_device(device_profile.device, for_device)
        device_profile.check_trust(allow_unreliable)
        if precision not in device_profile.precisions:
            raise click.UsageError(f"--precision {precision}: profile {profile_path} measured "
                                   f"{', '.join(device_profile.precisions)} only")
        ref = device_profile.reference_workload
        workload = (batch or ref[0], seq_len or ref[1])
        dropped = exports_drop(supernet_path, supershaper_widths, device_profile, profile_path)
        margin = device_profile.margin(precision)

        def predicted(shapes):  # the planner's safe estimate: the percentile x margin
            return (device_profile.predict(shapes, precision, *workload, percentile,
                                           [dropped(s) for s in shapes]) * margin)
        latency = predicted
        said_limit = ""
        if latency_text:
            budget = parse_budget(latency_text)
            limit = device_profile.budget_ms(budget, workload, percentile,
                                             dropped(space.largest))
            latency_limit = {"budget": budget.text, "ms": limit, "percentile": percentile,
                             "batch": workload[0], "seq_len": workload[1],
                             "precision": precision, "margin": margin}
            said_limit = f" <= {limit:.2f} ms" + (f" ({budget.text} of the full fp32 model)"
                                                  if budget.relative else "")
        heading = [("latency", f"p{percentile:g}{said_limit} at batch {workload[0]} x "
                               f"{workload[1]} in {precision}, predicted by "
                               + predicted_by(device_profile, profile_path, differences)
                               + f" times its x{margin:.2f} margin")]
    elif latency_text:
        raise click.UsageError("--latency with --for-device needs --profile (the profile "
                               "of the machine the search is for)")
    result = evolutionary_search(
        space, model.predict, model.higher_is_better, latency, limit,
        parse_count(params_text) if params_text else None,
        SearchConfig(iterations=iterations, seed=seed), progress)
    held = model.meta["held_out"]
    data = {"best": result.best.to_dict(), "pareto": [c.to_dict() for c in result.pareto],
            "evaluated": result.evaluated, "metric": model.meta["metric"],
            "quality_is": "predicted by the quality predictor, not measured",
            "quality_predictor_held_out": held, "latency_limit": latency_limit,
            "profile": None if profile_path is None else str(profile_path)}
    b = result.best
    # what to run next: the best shape exported, its latency predicted by the same profile
    data["export"] = " ".join(
        ["shaperctl export --supernet", str(supernet_path), "--shape",
         ",".join(map(str, b.shape.widths))]
        + (["--task text-classification"] if model.meta["metric"] == "task" else [])
        + (["--int8"] if profile_path is not None and precision == "int8" else [])
        + ([f"--profile {profile_path} --percentile {percentile:g}"]
           if profile_path is not None else []) + ["--out DIR"])
    label = {"cosine": "fidelity (cosine to the full model)",
             "task": model.meta.get("measured_on", "task metric").split(",")[0]}.get(
        model.meta["metric"], model.meta["metric"])
    emit(data, as_json, lambda d: table(heading + [
        ("best", f"{','.join(map(str, b.shape.widths))} ({b.params / 1e6:.1f}M params, "
                 f"predicted {label} {b.quality:.4f}"
                 + (f", {b.latency_ms:.2f} ms predicted with margin" if b.latency_ms is not None
                    else "") + ")"),
        ("predictor", f"quality predictor held-out R^2 {held['r2']:.3f}, Spearman "
                      f"{held['spearman']:.3f} ({held['n']} shapes): a prediction; measure the "
                      "export (run --compare, or export --latency's judge)"),
        ("pareto front", f"{len(d['pareto'])} shapes; {d['evaluated']} evaluated"),
        ("export", d["export"])]))
