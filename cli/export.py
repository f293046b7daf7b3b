"""``shaperctl export`` and ``shaperctl shapes``."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import click

from shaper_deploy.bundle import TASKS
from shaper_deploy.promise import MEASURE_SECONDS
from shaper_deploy.runtime import DEVICES, PRECISIONS
from shaper_deploy.templates import PLAN_FAMILIES, families_said

from .common import (emit, exports_drop, json_option, millions, percentile_option,
                     predicted_by, profile_here, progress, table, widths_option)


@click.command("export")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="Super network folder (ours, or a SuperShaper repository checkpoint).")
@click.option("--shape", "shape_text", default=None,
              help="Export this shape: '360,240,...', '360x12', '240x4,480x8' or a JSON file "
                   "(a plan's BUNDLE/shaper.json: its shape, and int8 where the plan chose it).")
@click.option("--params", "params_text", default=None,
              help="Export the cigar shape with the most parameters up to this count (60M).")
@click.option("--latency", "latency_text", default=None,
              help="Export the model closest to the full one that meets this budget on this "
                   "device for the workload: 20ms, 0.02s, 20, or 80% (of the full fp32 "
                   "model's latency on the profile). Without --profile, the profile of this "
                   "machine in ./profiles that profiles list marks.")
@percentile_option("With --latency: the percentile of request latency the budget promises; "
                   "with --profile alone, the one predicted.")
@click.option("--measure-seconds", default=None, type=click.FloatRange(0, 600),
              help="With --latency: seconds each candidate is timed with the profile's "
                   "protocol before it is judged (at least the protocol's rounds; 0: those "
                   f"only). Default {MEASURE_SECONDS:g}: runs enough for the percentile's "
                   "tail.")
@click.option("--for-device", is_flag=True,
              help="With --latency or --profile: plan for the machine the profile was measured "
                   "on, not this one (nothing is measured here; check it there with "
                   "shaperctl verify).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Latency profile of this device (fp32 and int8, a range of input sizes).")
@click.option("--batch", type=click.IntRange(1), default=None,
              help="With --latency: rows per request the budget is for (default: the "
                   "profile's reference batch, 1).")
@click.option("--seq-len", type=click.IntRange(1), default=None,
              help="With --latency: tokens per row the budget is for (default: the longest "
                   "of the --eval or --calibration texts in tokens; without texts, the "
                   "profile's reference length, 128).")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default="cpu", show_default=True,
              help="Provider the budget is for; must match the profile.")
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto",
              show_default=True,
              help="With --latency: auto exports the best shape at each precision the device "
                   "runs and keeps the one closest to the full model; fp32/int8 force one.")
@click.option("--calibration", "calibration_path", type=click.Path(path_type=Path),
              default=None,
              help="With --latency: your own text, one sentence per line, for measuring "
                   "fidelity; with --int8: the texts int8 is judged on (default: built-in "
                   "English sentences).")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), default=None,
              help="With --latency and a task super network: labelled data (.csv, .tsv, "
                   ".jsonl; the columns it was trained on); the most accurate candidate that "
                   "fits wins (without it: agreement with the full model's labels).")
@click.option("--teacher", "teacher_path", type=click.Path(path_type=Path), default=None,
              help="With --latency: train task's teacher/ (the full model fine-tuned alone), "
                   "a candidate at its full shape beside the slices of --supernet.")
@click.option("--families", "families_text", default=None,
              help="With --latency: the shape families a plan draws from, comma-separated "
                   f"({', '.join(PLAN_FAMILIES)}); default all: per precision each family's "
                   "largest shape that fits is scored in PyTorch on the calibration text or "
                   "--eval, and the best one is exported.")
@click.option("--allow-unreliable", is_flag=True,
              help="Plan (or predict, with --profile alone) with a profile marked unreliable "
                   "(held-out MAPE > 5% or noise > 3%).")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Bundle folder to write (must not exist unless --force).")
@click.option("--task", type=click.Choice(TASKS),
              default="feature-extraction", show_default=True,
              help="Outputs: last_hidden_state (+ pooler_output); MLM logits (fill-mask); or "
                   "a task super network's class logits / score (text-classification).")
@click.option("--int8", is_flag=True,
              help="With --shape/--params: also write model_quantized.onnx (dynamic int8) and "
                   "make it the default model, in this CPU's default int8 format (with "
                   "--profile: the profile's). With --latency use --precision instead.")
@click.option("--int8-min-cosine", default=0.95, show_default=True, type=float,
              help="Fail (or, with --latency, drop the int8 candidate) if int8's mean token "
                   "cosine to fp32 is below this.")
@click.option("--int8-min-agreement", default=0.95, show_default=True, type=float,
              help="text-classification: fail (or drop the int8 candidate) if int8 keeps "
                   "fp32's label on fewer of the calibration texts than this.")
@click.option("--int8-fallback/--no-int8-fallback", default=True, show_default=True,
              help="With --int8: if int8 misses its gate, keep in fp32 the matrices it loses "
                   "the task on (fused bottlenecks, then FFN projections from the first "
                   "layer), the fewest that pass; recorded in shaper.json. --latency plans "
                   "all-int8 graphs only (what the profile timed).")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (14..20).")
@click.option("--no-optimize", is_flag=True,
              help="Skip ONNX Runtime's transformer fusions (and their Attention check).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@widths_option
@json_option
def export(supernet_path: Path, shape_text: str | None, params_text: str | None,
           latency_text: str | None, percentile: float, measure_seconds: float | None,
           for_device: bool,
           profile_path: Path | None, batch: int | None,
           seq_len: int | None, device: str, precision: str, calibration_path: Path | None,
           eval_path: Path | None, teacher_path: Path | None, families_text: str | None,
           allow_unreliable: bool,
           out: Path, task: str, int8: bool, int8_min_cosine: float,
           int8_min_agreement: float, int8_fallback: bool, opset: int, no_optimize: bool,
           force: bool, supershaper_widths, as_json: bool) -> None:
    """Export a sub-network as a fused, optimized, validated ONNX bundle.

    Choose it by --shape, by --params (the paper's cigar heuristic) or by --latency: per
    precision and shape family (--families) the largest shape predicted to fit the budget at
    your batch, sequence length and --percentile is scored in PyTorch on calibration text (or
    --eval); the best family's shape is exported and timed on this device for
    --measure-seconds (stepping down on a miss, up when far under), and kept only if the 95%
    upper bound of that percentile measures under the budget with the profile's noise floor
    to spare; of those kept, the one whose outputs are closest to the full fp32 model on
    calibration text (or most accurate on --eval) is kept. The candidates are printed and
    recorded in shaper.json. A profile of another machine is refused unless --for-device says the
    plan is for that machine. Nothing is left behind if any step fails.

    \b
    Examples:
      shaperctl export --supernet ./super --shape 360,240x3,360x4,480x2,540x2 --out ./b
      shaperctl export --supernet ./super --params 60M --out ./b60
      shaperctl export --supernet ./super --latency 9ms --profile profiles/mine --out ./b9
      shaperctl export --supernet ./super --latency 80% --percentile 99 --profile profiles/mine \\
        --out ./b80
      shaperctl export --supernet ./super --latency 5ms --seq-len 32 --profile profiles/mine \\
        --calibration queries.txt --out ./b5
    """
    from shaper_deploy.export import ExportOptions, export_checkpoint
    from shaper_deploy.heuristics import parse_count
    from shaper_deploy.io import check_output_dir, output_lock
    from shaper_deploy.planner import BudgetRequest, export_checkpoint_for_budget
    from shaper_deploy.promise import DEFAULT_PERCENTILE, parse_budget

    chosen = [n for n, v in (("--shape", shape_text), ("--params", params_text),
                             ("--latency", latency_text)) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --shape, --params or --latency"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    plan_int8 = _plan_int8(shape_text) if shape_text is not None else None
    int8 = int8 or plan_int8 is not None
    planning = {"--precision": precision != "auto", "--batch": batch is not None,
                "--seq-len": seq_len is not None,
                "--calibration": calibration_path is not None and not int8,
                "--eval": eval_path is not None, "--teacher": teacher_path is not None,
                "--families": families_text is not None,
                "--allow-unreliable": allow_unreliable and profile_path is None,
                "--percentile": percentile != DEFAULT_PERCENTILE and profile_path is None,
                "--measure-seconds": measure_seconds is not None}
    if latency_text is None and any(planning.values()):
        raise click.UsageError(f"{', '.join(k for k, v in planning.items() if v)} go(es) with "
                               "--latency (--calibration also with --int8, --percentile and "
                               "--allow-unreliable also with --profile); for a fixed shape in "
                               "int8 use --int8")
    if latency_text is not None and int8:
        raise click.UsageError("--int8 does not go with --latency: the plan picks the precision "
                               "(--precision auto, the default), or force one with "
                               "--precision int8")
    if for_device and profile_path is None:
        raise click.UsageError("--for-device needs --profile (the profile of the machine the "
                               "export is for)")
    if latency_text is not None and profile_path is None:
        from shaper_deploy.supernet import read_checkpoint_header

        space = read_checkpoint_header(supernet_path, supershaper_widths)["config"].space
        profile_path = profile_here(space, device, supernet_path)
    judge_texts: tuple[str, ...] = ()
    if int8 and calibration_path is not None:
        from shaper_deploy.fidelity import read_calibration

        judge_texts = tuple(read_calibration(calibration_path))
    options = ExportOptions(task=task, opset=opset, optimize=not no_optimize, int8=int8,
                            int8_min_cosine=int8_min_cosine,
                            int8_min_agreement=int8_min_agreement, int8_fallback=int8_fallback,
                            judge_texts=judge_texts, int8_format=plan_int8)
    budget = parse_budget(latency_text) if latency_text is not None else None
    count = parse_count(params_text) if params_text is not None else None
    check_output_dir(out, force, {"--supernet": supernet_path, "--profile": profile_path,
                                  "--calibration": calibration_path, "--eval": eval_path,
                                  "--teacher": teacher_path})
    with output_lock(out):
        if budget is not None:
            seconds = MEASURE_SECONDS if measure_seconds is None else measure_seconds
            request = BudgetRequest(budget, profile_path, device, precision, batch, seq_len,
                                    calibration_path, allow_unreliable, percentile, for_device,
                                    eval_path, teacher_path, seconds,
                                    None if families_text is None else
                                    tuple(families_text.split(",")))
            manifest = export_checkpoint_for_budget(supernet_path, request, out, options, force,
                                                    supershaper_widths, progress)
        else:
            profile = None
            if profile_path is not None:  # a bad profile fails before anything is written
                from shaper_deploy.profiling.predictor import DeviceProfile

                from shaper_deploy.profiling.profile import profile_int8_format

                profile = DeviceProfile.load(profile_path)
                profile.check_device(device, for_device)
                profile.check_trust(allow_unreliable)
                if options.int8_format is None:  # int8 as the profile timed it
                    options = replace(options, int8_format=profile_int8_format(profile.header))
            manifest = export_checkpoint(supernet_path, out, shape_text, count, options, force,
                                         supershaper_widths, progress)
            if profile is not None:
                from shaper_deploy.planner import record_prediction

                try:
                    manifest = record_prediction(out, profile, device, percentile, for_device)
                except BaseException:  # the command failed: its bundle goes with it
                    shutil.rmtree(out, ignore_errors=True)
                    raise
    emit({"out": str(out), **manifest.to_dict()}, as_json, _export_text)


def _plan_int8(shape_text: str) -> dict | None:
    """``--shape B/shaper.json`` of a bundle whose plan chose int8 (a slice fine-tuned alone
    after the plan, exported again): the int8 format of its model (None: not such a plan).
    int8 is written too, in that format, and served by default, the graph whose latency the
    plan measured; said on stderr. An fp32 model alone would be another
    graph, which may not meet the budget (Intel class: a MiniLM classifier planned in int8 at
    a p90 of 4.0 ms under 7.8 ms is predicted at 9.7 ms in fp32)."""
    from shaper_deploy.bundle import MANIFEST, BundleManifest

    from shaper_deploy.runtime import int8_format_named

    path = Path(shape_text)
    if path.name != MANIFEST or not path.is_file():
        return None
    manifest = BundleManifest.read(path.parent)
    if not manifest.plan or manifest.plan["precision"] != "int8":
        return None
    q = manifest.quantization or {}
    try:
        fmt = int8_format_named(q, q.get("format_reason") or f"as {path.parent}'s plan")
    except ValueError as exc:
        raise click.UsageError(f"{path}: {exc}") from None
    progress(f"{path.parent}'s plan chose int8 at this shape: writing int8 too, in its format "
             f"({fmt['name']}), served by default as the plan's was (give the shape as widths "
             "for fp32 alone)")
    return fmt


def candidates_table(plan: dict) -> str:
    """The plan's candidates, one line each: precision, shape, latency beside fidelity."""
    p = f"p{plan.get('percentile', 50):g}"
    metric = plan.get("fidelity_metric", "")
    from shaper_deploy.fidelity import metric_word

    # the column is 8 wide: "agreement" is abbreviated there
    column = metric_word(metric).replace("agreement", "agree")
    head = (f"{'':2}{'precision':<9} {'shape':<34} {'params':>8} {p + ' pred.':>10} "
            f"{p + ' meas.':>10} {column:>8}  status")
    lines = [f"{column}: {metric}", head] if metric else [head]
    if any(c.get("network") == "teacher" for c in plan["candidates"]):
        lines.insert(0, "T: the teacher (the task's full model fine-tuned alone)")
    for c in plan["candidates"]:
        shape = ",".join(map(str, c["shape"])) if c["shape"] else "-"
        num = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        lines.append(
            f"{'*' if c['status'] == 'chosen' else ' ':2}"
            f"{c['precision'] + (' T' if c.get('network') == 'teacher' else ''):<9} {shape:<34} "
            f"{num(c['params'] and c['params'] / 1e6, '7.1f') + ('M' if c['params'] else ''):>8} "
            f"{num(c['predicted_ms'], '8.2f') + ' ms':>10} "
            f"{num(c['measured_ms'], '7.2f') + ' ms':>10} "
            f"{num(c['fidelity'], '8.4f'):>8}  {c['status']}"
            + (f" ({c['family']})" if c.get("family") else "")
            + (f": {c['reason']}" if c["reason"] else ""))
    families = plan.get("families") or {}
    if families.get("screened_on"):
        lines.append(f"shape families, each one's largest shape predicted to fit, {column} in "
                     f"PyTorch fp32 on {families['screened_on']}:")
        for prec, rows in families["by_precision"].items():
            lines.append(f"  {prec:<9} {families_said(rows)}")
    return "\n".join(lines)


def _export_text(d: dict) -> str:
    worst = max(v for case in d["validation"]["cases"] for v in case["max_abs_diff"].values())
    rows = [("bundle", d["out"]), ("shape", ",".join(map(str, d["shape"]))),
            ("params", f"{millions(d['params']['fused'])} fused "
                       f"({millions(d['params']['unfused'])} unfused)"),
            ("outputs", ", ".join(d["outputs"])),
            ("model", d["default_model"]),
            ("validation", f"max |ORT - PyTorch| {worst:.1e} (atol {d['validation']['atol']:g}, "
                           f"{len(d['validation']['cases'])} input sizes)")]
    if d.get("dropped_identities"):
        rows.append(("dropped", f"{len(d['dropped_identities'])} exact identity projections"))
    if d["fusion"]:
        f = d["fusion"]
        rows.append(("fused ops", ", ".join(f"{k} {f[k]}" for k in
                                            ("Attention", "SkipLayerNormalization",
                                             "EmbedLayerNormalization", "BiasGelu") if k in f)))
    q = d["quantization"]
    fallback = (q or {}).get("fallback")
    if fallback and fallback.get("passed"):
        rows.append(("int8 fp32", f"{fallback['rung']} kept fp32 ({len(fallback['fp32_nodes'])} "
                                  f"nodes, {fallback['fp32_weight_share']:.0%} of the weights) "
                                  "after all-int8 missed its gate"))
    if q and "label_agreement" in q:
        rows.append(("int8", f"keeps fp32's label on {q['label_agreement']:.1%} of "
                             f"{q['texts']} texts, logits max |diff| {q['max_abs_diff']:.3g} "
                             f"({q['judged_on']})"))
    elif q:
        rows.append(("int8", f"mean token cosine {q['mean_token_cosine']:.4f}, sentence "
                             f"{q['mean_sentence_cosine']:.4f}, max |diff| "
                             f"{q['max_abs_diff']:.3g} ({q['judged_on']})"))
    plan = d.get("plan")
    if plan:
        pct = f"p{plan.get('percentile', 50):g}"
        given = (plan.get("budget") or {}).get("text", "")
        rows.append(("budget", (f"{given} = " if given.endswith("%") else "")
                     + f"{plan['budget_ms']:.2f} ms at {pct}, batch {plan['batch']} x "
                       f"{plan['seq_len']} tokens ({plan['workload_source']}) on "
                       f"{plan['device']}"))
        target = plan.get("target") or {}
        unverified = plan["measured_ms"] is None
        measured = (f"{pct} {plan['predicted_ms']:.2f} ms predicted ("
                    f"{plan['predicted_upper_ms']:.2f} with the margin)" if unverified else
                    f"{pct} {plan['measured_ms']:.2f} ms measured here (predicted "
                    f"{plan['predicted_ms']:.2f})")
        which = plan["precision"] + (" teacher" if plan.get("network") == "teacher" else "")
        metric = plan["fidelity_metric"]
        on = "" if metric.endswith(".csv") or " on " in metric else f", {plan['calibration']}"
        rows.append(("chosen", f"{which}, {measured}, {plan['fidelity']:.4f} ({metric}{on})"
                     + ("; UNVERIFIED: run shaperctl verify on "
                        f"{target.get('fingerprint', {}).get('cpu_model', 'the target')}"
                        if unverified else "")))
        if plan.get("machine_beyond_priced"):
            rows.append(("WARNING", plan["machine_beyond_priced"]["said"]))
        if plan.get("machine_faster"):
            rows.append(("NOTE", plan["machine_faster"]["said"]))
        if (plan.get("inputs") or {}).get("longer"):
            rows.append(("NOTE", plan["inputs"]["said"]))
    for p in d.get("predicted_latency") or []:
        rows.append(("predicted", f"p{p.get('percentile', 50):g} {p['predicted_ms']:.2f} ms "
                                  f"({p['precision']}, batch {p['batch']} x {p['seq_len']}, "
                                  f"{p['profile']}"
                                  + ("" if p.get("profile_reliable", True) else ", UNRELIABLE")
                                  + (", FOR ANOTHER MACHINE" if p.get("profile_machine_differs")
                                     else "") + ")"
                                  + (f"; all-int8 {p['all_int8_predicted_ms']:.2f} ms, plus "
                                     f"{p['fp32_weight_share']:.0%} of the way to fp32 for the "
                                     "nodes kept fp32" if "fp32_weight_share" in p else "")))
    text = table(rows)
    return text + ("\n\ncandidates:\n" + candidates_table(plan) if plan else "")


@click.command("shapes")
@click.option("--params", "params_texts", multiple=True,
              help="Target parameter count (60M); repeat for several. Default: a table over "
                   "the design space's range.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Super network whose design space to use (default: --profile's, else the "
                   "paper's).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Also predict each shape's latency at the profile's reference size, per "
                   "precision (a profile of this machine, reliable, unless the flags below); "
                   "with --supernet, of the graph export writes from it (an identity super "
                   "network's exact identity projections dropped, as export --latency prices "
                   "them).")
@percentile_option("With --profile: the percentile of request latency predicted.")
@click.option("--for-device", is_flag=True,
              help="With --profile: accept a profile of another machine (predictions for it).")
@click.option("--allow-unreliable", is_flag=True,
              help="With --profile: accept a profile marked unreliable.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Rows of the table when no --params is given.")
@widths_option
@json_option
def shapes(params_texts: tuple[str, ...], supernet_path: Path | None, profile_path: Path | None,
           percentile: float, for_device: bool, allow_unreliable: bool, steps: int,
           supershaper_widths, as_json: bool) -> None:
    """Cigar shapes (the paper's heuristic) for parameter counts.

    \b
    Examples:
      shaperctl shapes --params 60M
      shaperctl shapes --supernet ./super --profile profiles/mine --json
    """
    from shaper_deploy.heuristics import cigar_shape, parse_count
    from shaper_deploy.shape import PAPER_SPACE

    profile = None
    if profile_path is not None:
        from shaper_deploy.profiling.predictor import DeviceProfile

        profile = DeviceProfile.load(profile_path)
        differences = profile.check_device(profile.device, for_device)
        profile.check_trust(allow_unreliable)
    dropped = None  # priced as export writes them: this super network's exact identities dropped
    if supernet_path is not None:
        from shaper_deploy.supernet import read_checkpoint_header

        space = read_checkpoint_header(supernet_path, supershaper_widths)["config"].space
        if profile is not None:
            dropped = exports_drop(supernet_path, supershaper_widths, profile, profile_path,
                                   ", or leave out --supernet to use the profile's")
    else:
        space = profile.space if profile is not None else PAPER_SPACE
    if params_texts:
        targets = [parse_count(t) for t in params_texts]
    else:
        lo, hi = space.smallest.params(), space.largest.params()
        targets = [round(lo + (hi - lo) * i / (steps - 1)) for i in range(steps)]
    rows = []
    for target in targets:
        shape = cigar_shape(target, space)
        row = {"target": target, "shape": list(shape.widths), "params": shape.params()}
        if profile is not None:
            gone = [dropped(shape)] if dropped else None
            row["predicted_ms"] = {p: float(profile.predict([shape], p,
                                                             *profile.reference_workload,
                                                             percentile, gone)[0])
                                   for p in profile.precisions}
            row["dropped_projections"] = len(gone[0]) if gone else 0
            row["percentile"] = percentile
        rows.append(row)
    data: dict = {"shapes": rows}
    heading = []
    if profile is not None:
        b, s = profile.reference_workload
        data["profile"] = {"path": str(profile_path), "batch": b, "seq_len": s,
                           "percentile": percentile, "trust": profile.trust,
                           "this_machine": {"matches": not differences,
                                            "differences": differences}}
        heading = [f"latency: p{percentile:g} at batch {b} x {s} tokens predicted by "
                   + predicted_by(profile, profile_path, differences)]
        if any(r["dropped_projections"] for r in rows):
            heading.append(f"  as export writes {supernet_path}'s shapes: its exact identity "
                           "projections dropped (an identity super network's)")
    emit(data, as_json, lambda d: "\n".join(heading + [
        f"{millions(r['target']):>8} -> {millions(r['params']):>8}  "
        f"{','.join(map(str, r['shape']))}"
        + "".join(f"  {p} p{percentile:g} {ms:.2f} ms"
                  for p, ms in r.get("predicted_ms", {}).items())
        for r in d["shapes"]]))
