"""``shaperctl export``."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, json_option, millions, progress, table


@click.command("export")
@click.option("--supernet", "supernet_path", required=True, type=click.Path(path_type=Path),
              help="Super network folder (ours, or a SuperShaper repository checkpoint).")
@click.option("--shape", "shape_text", required=True,
              help="Widths per layer: '360,240,...', '360x12', '240x4,480x8' or a JSON file.")
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
def export(supernet_path: Path, shape_text: str, out: Path, task: str, int8: bool,
           int8_min_cosine: float, opset: int, no_optimize: bool, force: bool,
           as_json: bool) -> None:
    """Export one shape as a fused, optimized, validated ONNX bundle.

    The bundle holds model.onnx, config.json, the tokenizer and shaper.json (shape,
    parameters, fusion counts, validation against PyTorch, checksums, versions). Nothing is
    left behind if any step fails.

    \b
    Example:
      shaperctl export --supernet ./super --shape 360,240x3,360x4,480x2,540x2 --out ./bundle
    """
    from shaper_deploy.errors import CheckpointError
    from shaper_deploy.export import ExportOptions, export_bundle
    from shaper_deploy.io import check_output_dir
    from shaper_deploy.shape import parse_shape
    from shaper_deploy.supernet import SuperBert, read_checkpoint_header

    options = ExportOptions(task=task, opset=opset, optimize=not no_optimize, int8=int8,
                            int8_min_cosine=int8_min_cosine)
    check_output_dir(out, force)
    try:  # a bad shape fails before the model loads
        parse_shape(shape_text, read_checkpoint_header(supernet_path)["config"].space)
    except CheckpointError:
        pass  # not our format (a SuperShaper repo checkpoint) or unreadable: loading says which
    progress(f"loading {supernet_path}")
    model = SuperBert.load(supernet_path)
    shape = parse_shape(shape_text, model.config.space)
    manifest = export_bundle(model, shape, out, options, force=force, progress=progress)
    data = {"out": str(out), **manifest}
    emit(data, as_json, _export_text)


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
    return table(rows)
