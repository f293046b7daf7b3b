"""``shaperctl supernet ...`` and ``shaperctl params``."""

from __future__ import annotations

from pathlib import Path

import click

from shaper_deploy.families import MODEL_TYPES
from shaper_deploy.supernet.config import ORDERS
from shaper_deploy.shape import PAPER_SPACE, DesignSpace, Shape, flops, param_breakdown, parse_shape

from .common import (ShaperGroup, emit, int_list, json_option, millions, progress, table,
                     widths_option)


def _space_of(supernet: Path | None, widths=None) -> DesignSpace:
    if supernet is None:
        return PAPER_SPACE
    from shaper_deploy.supernet import read_checkpoint_header

    return read_checkpoint_header(supernet, widths)["config"].space


def _space_summary(space: DesignSpace) -> dict:
    return {"design_space": space.to_dict(), "num_shapes": space.size,
            "params_min": space.smallest.params(), "params_max": space.largest.params()}


@click.group(cls=ShaperGroup)
def supernet() -> None:
    """Create and inspect super networks."""


@supernet.command("init")
@click.option("--from-hf", "--from-bert", "source", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A local Hugging Face model folder (config.json + weights) of a supported "
                   f"family (model_type {', '.join(MODEL_TYPES)}), or a SuperShaper repository "
                   "checkpoint. --from-bert is the same option.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder to write the super network to (must not exist).")
@click.option("--widths", default=None,
              help="Allowed per-layer widths, comma-separated (default: the paper's "
                   "120..768 scaled to the model's width, rounded to multiples of the heads).")
@click.option("--order", default="none", show_default=True, type=click.Choice(ORDERS),
              help="Sort every layer's features by importance on --order-texts, so that a "
                   "slice keeps those that matter (one residual order for all layers: the "
                   "graph between layers stays the identity network's). all-MiniLM-L6-v2, "
                   "untrained: a 20.7M slice's fidelity 0.33 -> 0.69.")
@click.option("--order-texts", type=click.Path(path_type=Path), default=None,
              help="UTF-8 text, one text per line, that --order measures importance on "
                   "(default: the 32 built-in calibration sentences).")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@json_option
def init(source: Path, out: Path, widths: str | None, order: str, order_texts: Path | None,
         force: bool, as_json: bool) -> None:
    """Turn a pretrained encoder (BERT, RoBERTa, XLM-R, CamemBERT, DistilBERT) into a super
    network with identity bottlenecks.

    At the full shape the result computes what the source model computes (with --order up
    to float rounding: the features are only permuted).

    \b
    Example:
      shaperctl supernet init --from-hf ./bert-base-cased --out ./super
      shaperctl supernet init --from-hf "$MINILM" --order residual+heads --out ./super
    """
    from shaper_deploy.fidelity import CALIBRATION_TEXTS, read_calibration
    from shaper_deploy.io import check_output_dir, output_lock
    from shaper_deploy.supernet import save_supernet, supernet_from_hf

    check_output_dir(out, force, {"--from-hf": source, "--order-texts": order_texts})
    if order_texts is not None and order == "none":
        raise click.UsageError("--order-texts is what --order measures on; give --order "
                               "residual or residual+heads with it")
    width_list = None if widths is None else int_list(widths, "--widths")
    texts = read_calibration(order_texts) if order_texts is not None else CALIBRATION_TEXTS
    progress(f"reading {source}")
    model = supernet_from_hf(source, widths=width_list)
    if order != "none":
        from shaper_deploy.supernet.rewire import importance_order, text_inputs

        model = importance_order(model, text_inputs(model, texts), order, progress=progress,
                                 shared=True)
    with output_lock(out):
        save_supernet(model, out, force=force)
    progress(f"wrote {out}")
    data = {"out": str(out), "source": model.source, **_space_summary(model.config.space)}
    emit(data, as_json, lambda d: _info_text(d, model.config.to_dict()))


@supernet.command("info")
@click.argument("path", type=click.Path(path_type=Path))
@widths_option
@json_option
def info(path: Path, supershaper_widths, as_json: bool) -> None:
    """Describe a super network: architecture, design space, parameter range.

    \b
    Example:
      shaperctl supernet info ./super --json
    """
    from shaper_deploy.supernet import read_checkpoint_header

    header = read_checkpoint_header(path, supershaper_widths)
    config = header["config"]
    data = {"path": str(path), "format": header.get("format"),
            "format_version": header.get("format_version"),
            "config": config.to_dict(), "source": header.get("source", {}),
            "tokenizer": sorted(p.name for p in path.iterdir()
                                if p.name not in ("config.json", "model.safetensors")),
            **_space_summary(config.space)}
    emit(data, as_json, lambda d: _info_text(d, d["config"]))


def _info_text(d: dict, config: dict) -> str:
    s = d["design_space"]
    heads = [h for h, on in (("pooler", config["pooler"]), ("MLM head", s["mlm_head"])) if on]
    source = d.get("source") or {}
    rows = [("architecture", f"{config.get('model_type', 'bert')}: "
                             f"{s['num_layers']} layers, D={s['hidden_size']}, "
                             f"{s['num_heads']} heads, FFN {s['intermediate_size']}, vocab "
                             f"{s['vocab_size']}, {config['hidden_act']}, heads: "
                             f"{', '.join(heads) or 'none'}"),
            ("widths", ", ".join(map(str, s["widths"]))),
            ("shapes", f"{d['num_shapes']:,} ({len(s['widths'])}^{s['num_layers']})"),
            ("parameters", f"{millions(d['params_min'])} .. {millions(d['params_max'])} "
                           "(fused, paper convention)")]
    if source:
        rows.insert(0, ("source", f"{source.get('kind', '?')} {source.get('path', '')}"))
    if source.get("importance_order"):
        shared = ", one order for every layer" if source.get("importance_order_shared") else ""
        rows.append(("feature order", f"{source['importance_order']} (importance{shared})"))
    return table(rows)


@click.command("params")
@click.option("--shape", "shape_text", required=True,
              help="Widths per layer: '360,240,...', '360x12', '240x4,480x8' or a JSON file.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Super network whose design space to use (default: the paper's, BERT-base).")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=1),
              help="Sequence length for the FLOP count.")
@widths_option
@json_option
def params(shape_text: str, supernet_path: Path | None, seq_len: int, supershaper_widths,
           as_json: bool) -> None:
    """Parameter count (fused and unfused) and FLOPs of a shape; no checkpoint needed.

    Counts follow the SuperShaper paper's convention: embeddings, layers, bottlenecks and the
    MLM transform; not the tied decoder, its bias or the pooler.

    \b
    Example:
      shaperctl params --shape 120,120,240,240,360,360,360,480,540,540,600,768
    """
    shape: Shape = parse_shape(shape_text, _space_of(supernet_path, supershaper_widths))
    data = {"shape": list(shape.widths), "params_fused": shape.params(fused=True),
            "params_unfused": shape.params(fused=False),
            "breakdown_fused": param_breakdown(shape, fused=True),
            "seq_len": seq_len, "flops": flops(shape, seq_len=seq_len)}
    emit(data, as_json, lambda d: table([
        ("shape", str(shape)),
        ("params (fused)", f"{d['params_fused']:,} ({millions(d['params_fused'])})"),
        *((f"  {k}", f"{v:,}") for k, v in d["breakdown_fused"].items()),
        ("params (unfused)", f"{d['params_unfused']:,} ({millions(d['params_unfused'])})"),
        (f"GFLOPs (seq {seq_len})", f"{d['flops'] / 1e9:.2f}")]))
