"""``shaperctl export`` and ``shaperctl shapes``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, json_option, millions, progress, table


@click.command("export")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="Super network folder (ours, or a SuperShaper repository checkpoint).")
@click.option("--shape", "shape_text", default=None,
              help="Export this shape: '360,240,...', '360x12', '240x4,480x8' or a JSON file.")
@click.option("--params", "params_text", default=None,
              help="Export the cigar shape with the most parameters up to this count (60M).")
@click.option("--latency", "latency_text", default=None,
              help="Export the largest cigar shape meeting this budget on this device "
                   "(20ms, 0.02s, 20); needs --profile, and measures the result.")
@click.option("--profile", "profile_paths", multiple=True, type=click.Path(path_type=Path),
              help="Latency profile of this device (repeat for fp32 and int8 profiles).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Provider the budget is for; must match the profile.")
@click.option("--precision", type=click.Choice(["fp32", "int8", "auto"]), default="fp32",
              show_default=True,
              help="With --latency: the profile's precision to plan with; auto picks the one "
                   "that fits the most parameters.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Bundle folder to write (must not exist unless --force).")
@click.option("--task", type=click.Choice(["feature-extraction", "fill-mask"]),
              default="feature-extraction", show_default=True,
              help="Outputs: last_hidden_state (+ pooler_output), or MLM logits.")
@click.option("--int8", is_flag=True,
              help="Also write model_quantized.onnx (dynamic int8) and record its accuracy.")
@click.option("--int8-min-cosine", default=0.95, show_default=True, type=float,
              help="Fail if int8's mean token cosine to fp32 is below this.")
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (14..20).")
@click.option("--no-optimize", is_flag=True,
              help="Skip ONNX Runtime's transformer fusions (and their Attention check).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@json_option
def export(supernet_path: Path, shape_text: str | None, params_text: str | None,
           latency_text: str | None, profile_paths: tuple[Path, ...], device: str,
           precision: str, out: Path, task: str, int8: bool, int8_min_cosine: float,
           opset: int, no_optimize: bool, force: bool, as_json: bool) -> None:
    """Export a sub-network as a fused, optimized, validated ONNX bundle.

    Choose it by --shape, by --params (the paper's cigar heuristic) or by --latency (the
    largest cigar shape whose predicted latency fits, then measured on this device; if it
    misses, a smaller one). The bundle holds model.onnx, config.json, the tokenizer and
    shaper.json (shape, parameters, fusion counts, validation, plan, checksums, versions).
    Nothing is left behind if any step fails.

    \b
    Examples:
      shaperctl export --supernet ./super --shape 360,240x3,360x4,480x2,540x2 --out ./b
      shaperctl export --supernet ./super --params 60M --out ./b60
      shaperctl export --supernet ./super --latency 20ms --profile profiles/mine --out ./b20
    """
    from shaper_deploy.errors import CheckpointError
    from shaper_deploy.export import ExportOptions, export_bundle
    from shaper_deploy.heuristics import cigar_shape, parse_count
    from shaper_deploy.io import check_output_dir
    from shaper_deploy.planner import export_for_budget, make_plan, parse_budget
    from shaper_deploy.shape import parse_shape
    from shaper_deploy.supernet import SuperBert, read_checkpoint_header

    chosen = [n for n, v in (("--shape", shape_text), ("--params", params_text),
                             ("--latency", latency_text)) if v is not None]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --shape, --params or --latency"
                               + (f" (got {', '.join(chosen)})" if chosen else ""))
    if precision != "fp32" and latency_text is None:
        raise click.UsageError("--precision goes with --latency; for a fixed shape use --int8")
    options = ExportOptions(task=task, opset=opset, optimize=not no_optimize, int8=int8,
                            int8_min_cosine=int8_min_cosine)
    budget = parse_budget(latency_text) if latency_text is not None else None
    count = parse_count(params_text) if params_text is not None else None
    check_output_dir(out, force)
    try:  # a bad shape or budget fails before the model loads
        space = read_checkpoint_header(supernet_path)["config"].space
    except CheckpointError:
        space = None  # not our format (a SuperShaper repo checkpoint) or unreadable: loading says
    if space is not None and shape_text is not None:
        parse_shape(shape_text, space)
    if space is not None and budget is not None:
        make_plan(budget, list(profile_paths), device, precision, space, lambda m: None)
    progress(f"loading {supernet_path}")
    model = SuperBert.load(supernet_path)
    if budget is not None:
        manifest = export_for_budget(model, budget, list(profile_paths), out, device,
                                     precision, options, force=force, progress=progress)
    else:
        shape = (parse_shape(shape_text, model.config.space) if shape_text is not None
                 else cigar_shape(count, model.config.space))
        manifest = export_bundle(model, shape, out, options, force=force, progress=progress)
        if profile_paths:
            manifest = _record_prediction(out, manifest, profile_paths, device, shape)
    emit({"out": str(out), **manifest}, as_json, _export_text)


def _record_prediction(out: Path, manifest: dict, profile_paths, device: str, shape) -> dict:
    """With --profile but no budget: add each profile's predicted latency to shaper.json."""
    import json

    from shaper_deploy.io import atomic_write_bytes
    from shaper_deploy.planner import load_profile_predictor

    predictions = []
    for path in profile_paths:
        predictor = load_profile_predictor(path, device, progress)
        predictions.append({"profile": str(path),
                            "precision": predictor.meta["protocol"]["precision"],
                            "predicted_ms": float(predictor.predict([shape])[0]),
                            "predicted_upper_ms": float(predictor.upper_bound([shape])[0])})
    manifest["predicted_latency"] = predictions
    atomic_write_bytes(out / "shaper.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _export_text(d: dict) -> str:
    worst = max(v for case in d["validation"]["cases"] for v in case["max_abs_diff"].values())
    rows = [("bundle", d["out"]), ("shape", ",".join(map(str, d["shape"]))),
            ("params", f"{millions(d['params']['fused'])} fused "
                       f"({millions(d['params']['unfused'])} unfused)"),
            ("outputs", ", ".join(d["outputs"])),
            ("validation", f"max |ORT - PyTorch| {worst:.1e} (atol {d['validation']['atol']:g}, "
                           f"{len(d['validation']['cases'])} input sizes)")]
    if d["fusion"]:
        f = d["fusion"]
        rows.append(("fused ops", ", ".join(f"{k} {f[k]}" for k in
                                            ("Attention", "SkipLayerNormalization",
                                             "EmbedLayerNormalization", "BiasGelu") if k in f)))
    q = d["quantization"]
    if q:
        rows.append(("int8", f"mean token cosine {q['mean_token_cosine']:.4f}, sentence "
                             f"{q['mean_sentence_cosine']:.4f}, max |diff| "
                             f"{q['max_abs_diff']:.3g} ({q['judged_on']})"))
    plan = d.get("plan")
    if plan:
        rows.append(("budget", f"{plan['budget_ms']:g} ms on {plan['device']} ({plan['precision']})"))
        rows.append(("latency", f"predicted {plan['predicted_ms']:.2f} ms "
                                f"({plan['predicted_upper_ms']:.2f} with margin), measured "
                                f"{plan['measured_ms']:.2f} ms after "
                                f"{len(plan['attempts'])} export(s)"))
    for p in d.get("predicted_latency", []):
        rows.append(("predicted", f"{p['predicted_ms']:.2f} ms ({p['precision']}, {p['profile']})"))
    return table(rows)


@click.command("shapes")
@click.option("--params", "params_texts", multiple=True,
              help="Target parameter count (60M); repeat for several. Default: a table over "
                   "the design space's range.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Super network whose design space to use (default: the paper's).")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Also predict each shape's latency on this profile's device.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(2, 200),
              help="Rows of the table when no --params is given.")
@json_option
def shapes(params_texts: tuple[str, ...], supernet_path: Path | None, profile_path: Path | None,
           steps: int, as_json: bool) -> None:
    """Cigar shapes (the paper's heuristic) for parameter counts.

    \b
    Examples:
      shaperctl shapes --params 60M
      shaperctl shapes --supernet ./super --profile profiles/mine --json
    """
    from shaper_deploy.heuristics import cigar_shape, parse_count
    from shaper_deploy.shape import PAPER_SPACE

    predictor = None
    if profile_path is not None:
        from shaper_deploy.predictor import LatencyPredictor

        predictor = LatencyPredictor.load(profile_path)
    if supernet_path is not None:
        from shaper_deploy.supernet import read_checkpoint_header

        space = read_checkpoint_header(supernet_path)["config"].space
    else:
        space = PAPER_SPACE
    if params_texts:
        targets = [parse_count(t) for t in params_texts]
    else:
        lo, hi = space.smallest.params(), space.largest.params()
        targets = [round(lo + (hi - lo) * i / (steps - 1)) for i in range(steps)]
    rows = []
    for target in targets:
        shape = cigar_shape(target, space)
        row = {"target": target, "shape": list(shape.widths), "params": shape.params()}
        if predictor is not None:
            row["predicted_ms"] = float(predictor.predict([shape])[0])
        rows.append(row)
    emit({"shapes": rows}, as_json, lambda d: "\n".join(
        f"{millions(r['target']):>8} -> {millions(r['params']):>8}  "
        f"{','.join(map(str, r['shape']))}"
        + (f"  {r['predicted_ms']:.2f} ms" if "predicted_ms" in r else "")
        for r in d["shapes"]))
