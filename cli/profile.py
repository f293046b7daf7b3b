"""``shaperctl profile``, ``shaperctl predict`` and ``shaperctl profiles list|show``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import ShaperGroup, emit, json_option, millions, progress, table


@click.command("profile")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), required=True,
              help="ONNX Runtime provider to measure; cuda fails unless CUDA really starts.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Profile folder; running the same command again resumes it.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Profile this super network's architecture (default: the paper's BERT-base "
                   "design space). Weights are not needed: latency does not depend on them.")
@click.option("--threads", default=2, show_default=True, type=int, help="Intra-op threads.")
@click.option("--batch", default=1, show_default=True, type=int, help="Rows per inference.")
@click.option("--seq-len", default=128, show_default=True, type=int, help="Tokens per row.")
@click.option("--int8", is_flag=True, help="Measure dynamically quantized int8 graphs.")
@click.option("--samples", default=300, show_default=True, type=int,
              help="Shapes to measure (stratified over the parameter range).")
@click.option("--rounds", default=8, show_default=True, type=int,
              help="Interleaved rounds per group of shapes.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@json_option
def profile(device: str, out: Path, supernet_path: Path | None, threads: int, batch: int,
            seq_len: int, int8: bool, samples: int, rounds: int, seed: int,
            as_json: bool) -> None:
    """Measure latency over a design space on this device and fit a predictor.

    Shapes are built straight as optimized ONNX graphs with random weights (no tracing),
    timed interleaved with a reference model, appended to measurements.jsonl one by one;
    an interrupted run resumes when the same command is run again. The folder ends with
    predictor.ubj / predictor.json and two plots.

    \b
    Example:
      shaperctl profile --device cpu --out profiles/my-laptop
      shaperctl profile --device cpu --supernet ./super --seq-len 64 --out profiles/s64
    """
    from shaper_deploy.predictor import fit_profile
    from shaper_deploy.profiling.profile import run_profile
    from shaper_deploy.profiling.protocol import Protocol
    from shaper_deploy.supernet import SuperConfig, read_checkpoint_header

    protocol = Protocol(threads=threads, batch=batch, seq_len=seq_len,
                        precision="int8" if int8 else "fp32", rounds=rounds)
    if supernet_path is not None:
        header = read_checkpoint_header(supernet_path)
        config, source = header["config"], {"supernet": str(supernet_path)}
    else:
        config, source = SuperConfig(), {"supernet": None}
    if seq_len > config.space.max_positions:
        raise click.BadParameter(f"{seq_len} exceeds the model's {config.space.max_positions} "
                                 "positions", param_hint="--seq-len")
    try:
        header = run_profile(out, device, protocol, config, samples, seed, source, progress)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; what was measured is kept in {out}: run the "
                                   "same command again to resume") from None
    meta = fit_profile(out, progress=progress)
    data = {"profile": str(out), **header, "predictor": meta["metrics"]}
    emit(data, as_json, _profile_text)


def _profile_text(d: dict) -> str:
    s, m = d["summary"], d["predictor"]["held_out"]
    rows = [("profile", d["profile"]), ("device", _device_line(d["fingerprint"])),
            ("protocol", _protocol_line(d["protocol"])),
            ("shapes", f"{s['shapes']} ({s['retried']} measured again as noisy)"),
            ("latency", f"{s['latency_ms_range'][0]:.2f} .. {s['latency_ms_range'][1]:.2f} ms")]
    if s.get("last_run"):
        rows.append(("speed", f"{s['last_run']['shapes_per_minute']} measurements/min "
                              f"({s['last_run']['seconds'] / 60:.1f} min)"))
    if s.get("noise_floor"):
        n = s["noise_floor"]["normalized"]
        rows.append(("noise floor", f"re-measured shapes differ by {n['median_abs_rel_diff']:.1%}"
                                    f" (median), {n['within_5pct']:.0%} within +-5%"))
    rows.append(("predictor", f"held-out R^2 {m['r2']:.4f}, MAPE {m['mape']:.2%}, "
                              f"{m['within_5pct']:.0%} within +-5%, Kendall tau "
                              f"{m['kendall_tau']:.3f} ({m['n']} shapes)"))
    return table(rows)


def _device_line(fp: dict) -> str:
    gpu = f", {fp['gpu']['name']}" if fp.get("gpu") else ""
    return (f"{fp['device']}: {fp['cpu_model']}, {fp['logical_cores']} cores, "
            f"{' '.join(fp['isa']) or 'no SIMD flags read'}{gpu}; onnxruntime {fp['onnxruntime']}")


def _protocol_line(p: dict) -> str:
    return (f"{p['precision']}, batch {p['batch']}, seq {p['seq_len']}, {p['threads']} threads; "
            f"{p['rounds']} interleaved rounds x ({p['warmup']} warm-up + {p['timed']} timed)")


@click.command("predict")
@click.option("--profile", "profile_path", required=True, type=click.Path(path_type=Path),
              help="A profile folder with a fitted predictor.")
@click.option("--shape", "shape_text", required=True,
              help="Widths per layer: '360,240,...', '360x12', '240x4,480x8' or a JSON file.")
@json_option
def predict(profile_path: Path, shape_text: str, as_json: bool) -> None:
    """Predicted latency of a shape on a profiled device.

    \b
    Example:
      shaperctl predict --profile profiles/cpu-2core-x86_64-minilm --shape 180,120x2,180,240,300
    """
    from shaper_deploy.predictor import LatencyPredictor
    from shaper_deploy.shape import parse_shape

    model = LatencyPredictor.load(profile_path)
    shape = parse_shape(shape_text, model.space)
    ms = float(model.predict([shape])[0])
    upper = float(model.upper_bound([shape])[0])
    p = model.meta["protocol"]
    data = {"shape": list(shape.widths), "params": shape.params(), "predicted_ms": ms,
            "upper_ms": upper, "protocol": p, "profile": str(profile_path)}
    emit(data, as_json, lambda d: table([
        ("shape", str(shape)), ("params", millions(d["params"])),
        ("latency", f"{ms:.2f} ms predicted, {upper:.2f} ms with the held-out p95 error"),
        ("conditions", _protocol_line(p))]))


@click.group(cls=ShaperGroup)
def profiles() -> None:
    """List and inspect latency profiles."""


@profiles.command("list")
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@json_option
def profiles_list(roots: tuple[Path, ...], as_json: bool) -> None:
    """Profiles under ROOTS (default: ./profiles), and whether each matches this machine.

    \b
    Example:
      shaperctl profiles list profiles
    """
    from shaper_deploy.profiling.fingerprint import device_fingerprint, fingerprint_differences
    from shaper_deploy.profiling.profile import HEADER, read_header

    here = device_fingerprint("cpu")
    found = []
    for root in roots or (Path("profiles"),):
        for file in sorted(Path(root).glob(f"*/{HEADER}")):
            h = read_header(file.parent)
            fp = h["fingerprint"]
            diffs = ([] if fp["device"] != "cpu" else
                     fingerprint_differences(fp, here))
            found.append({"path": str(file.parent), "device": fp["device"],
                          "cpu_model": fp["cpu_model"], "status": h["status"],
                          "shapes": (h.get("summary") or {}).get("shapes", 0),
                          "protocol": h["protocol"],
                          "matches_this_machine": fp["device"] == "cpu" and not diffs})
    emit({"profiles": found}, as_json, lambda d: "\n".join(
        f"{p['path']}  {p['device']} {p['cpu_model']}  {_protocol_line(p['protocol'])}  "
        f"{p['shapes']} shapes  {'matches this machine' if p['matches_this_machine'] else ''}"
        for p in d["profiles"]) or "no profiles found")


@profiles.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def profiles_show(path: Path, as_json: bool) -> None:
    """A profile's device, protocol, measurements and predictor metrics.

    \b
    Example:
      shaperctl profiles show profiles/cpu-2core-x86_64-minilm --json
    """
    from shaper_deploy.predictor import META_FILE
    from shaper_deploy.profiling.profile import read_header

    header = read_header(path)
    meta_file = path / META_FILE
    predictor = json.loads(meta_file.read_text())["metrics"] if meta_file.is_file() else None
    data = {"profile": str(path), **header, "predictor": predictor}
    if predictor is None:
        emit(data, as_json, lambda d: table([("profile", str(path)),
                                             ("device", _device_line(d["fingerprint"])),
                                             ("status", d["status"] + ", no predictor yet")]))
    else:
        emit(data, as_json, _profile_text)
