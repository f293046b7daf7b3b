"""``shaperctl run`` and ``shaperctl bench``: serving a bundle with onnxruntime alone."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, json_option, table


def _texts(texts: tuple[str, ...], file: Path | None) -> list[str]:
    out = list(texts)
    if file is not None:
        out += [line.rstrip("\n") for line in file.read_text().splitlines() if line.strip()]
    if not out:
        raise click.UsageError("give TEXT arguments or --file (one text per line)")
    return out


@click.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Read texts from this file, one per line.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "pooler"]), default="mean",
              show_default=True, help="How a text's token vectors become one vector.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Scale embeddings to unit length.")
@click.option("--compare", "compare_bundle", type=click.Path(path_type=Path), default=None,
              help="Another bundle (e.g. the full model): report each text's embedding cosine.")
@click.option("--max-length", type=int, default=None,
              help="Cut texts to this many tokens (default and upper limit: the model's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@json_option
def run(bundle: Path, texts: tuple[str, ...], text_file: Path | None, pooling: str,
        normalize: bool, compare_bundle: Path | None, max_length: int | None, device: str,
        as_json: bool) -> None:
    """Embed texts (or fill [MASK] tokens) with a bundle, through onnxruntime alone.

    \b
    Examples:
      shaperctl run ./bundle "Deploying BERT to phones." "Models on many devices."
      shaperctl run ./bundle --file sentences.txt --compare ./full-bundle --json
    """
    import numpy as np

    from shaper_deploy.serving import Bundle

    items = _texts(texts, text_file)
    model = Bundle.load(bundle, device=device)
    enc = model.encode(items, max_length)
    truncated = [i + 1 for i, t in enumerate(enc.truncated) if t]
    data = {"bundle": str(bundle), "task": model.manifest["task"],
            "shape": model.manifest["shape"], "params": model.manifest["params"]["fused"],
            "model": model.model_file, "max_length": min(max_length or model.max_length,
                                                         model.max_length),
            "truncated_texts": truncated}
    if model.manifest["task"] == "fill-mask":
        data["fill_mask"] = [[[{"token": t, "p": p} for t, p in mask] for mask in text]
                             for text in model.fill_mask(items)]
        return emit(data, as_json, lambda d: "\n".join(
            f"{i + 1}: " + " | ".join(", ".join(f"{c['token']} {c['p']:.2f}" for c in m)
                                      for m in text)
            for i, text in enumerate(d["fill_mask"])))
    vectors = model.embed(items, pooling, normalize, max_length=max_length)
    data["pooling"], data["normalized"] = pooling, normalize
    data["embeddings"] = vectors.round(6).tolist()
    sims = (vectors @ vectors.T) / (
        np.linalg.norm(vectors, axis=1)[:, None] * np.linalg.norm(vectors, axis=1)[None, :])
    data["similarity"] = sims.round(4).tolist()
    if compare_bundle is not None:
        other = Bundle.load(compare_bundle, device=device).embed(items, pooling, normalize,
                                                                 max_length=max_length)
        cos = (vectors * other).sum(1) / (np.linalg.norm(vectors, axis=1)
                                          * np.linalg.norm(other, axis=1))
        data["compare"] = {"bundle": str(compare_bundle), "cosine": cos.round(4).tolist(),
                           "mean_cosine": float(cos.mean())}
    emit(data, as_json, lambda d: _run_text(d, items))


def _run_text(d: dict, items: list[str]) -> str:
    rows = [("bundle", f"{d['bundle']} ({d['model']}, {d['params'] / 1e6:.2f}M params, shape "
                       f"{','.join(map(str, d['shape']))})"),
            ("embeddings", f"{len(items)} x {len(d['embeddings'][0])}, {d['pooling']} pooling"
                           + (", unit length" if d["normalized"] else ""))]
    if d["truncated_texts"]:
        rows.append(("truncated", f"texts {', '.join(map(str, d['truncated_texts']))} were cut "
                                  f"to {d['max_length']} tokens"))
    lines = [table(rows), "", "cosine similarity between the texts:"]
    for i, row in enumerate(d["similarity"]):
        lines.append(f"  {i + 1:>2} " + " ".join(f"{v:6.3f}" for v in row)
                     + f"   {items[i][:50]}")
    if "compare" in d:
        c = d["compare"]
        lines.append(f"\ncosine to {c['bundle']} per text: "
                     + ", ".join(f"{v:.3f}" for v in c["cosine"]) + f" (mean {c['mean_cosine']:.3f})")
    return "\n".join(lines)


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch", default=1, show_default=True, type=int, help="Rows per request.")
@click.option("--seq-len", default=128, show_default=True, type=int, help="Tokens per row.")
@click.option("--concurrency", default=1, show_default=True, type=int,
              help="Threads sharing one session.")
@click.option("--duration", default=10.0, show_default=True, type=float, help="Seconds.")
@click.option("--threads", default=None, type=int,
              help="Intra-op threads (default: the plan's profile protocol, else ORT's).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@json_option
def bench(bundle: Path, batch: int, seq_len: int, concurrency: int, duration: float,
          threads: int | None, device: str, as_json: bool) -> None:
    """Latency percentiles and throughput of a bundle, beside its predicted latency.

    One session shared by --concurrency threads for --duration seconds. For a bundle exported
    with --latency whose profile is at hand, it is also measured with the profile's protocol,
    the number its prediction is comparable with.

    \b
    Example:
      shaperctl bench ./bundle --concurrency 2 --duration 20
    """
    import json

    from shaper_deploy.serving import Bundle

    manifest = json.loads((bundle / "shaper.json").read_text()) if (
        bundle / "shaper.json").is_file() else {}
    plan = manifest.get("plan")
    if threads is None and plan:
        threads = plan["measurement"]["protocol"]["threads"]
    model = Bundle.load(bundle, device=device, threads=threads)
    result = model.bench(batch, seq_len, concurrency, duration)
    data = {"bundle": str(bundle), "device": device, "threads": threads, **result}
    if plan:
        data["plan"] = {k: plan[k] for k in ("budget_ms", "predicted_ms", "measured_ms")}
        if Path(plan["profile"]).is_dir():
            # The profile's own protocol (interleaved with its reference model), so the
            # number is comparable with the prediction; needs the profiling stack (torch).
            from shaper_deploy.planner import measure_bundle

            m = measure_bundle(bundle, plan["profile"], device)
            data["profile_protocol"] = {"profile": plan["profile"],
                                        "measured_ms": m["measured_ms"],
                                        "predicted_ms": plan["predicted_ms"]}
    lat = result["latency_ms"]
    rows = [("bundle", f"{bundle} ({result['model']})"),
            ("load", f"batch {batch}, seq {seq_len}, {concurrency} thread(s), {duration:g} s"),
            ("latency", f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, p99 {lat['p99']:.2f} ms"),
            ("throughput", f"{result['throughput_rps']:.1f} requests/s, "
                           f"{result['sequences_per_s']:.1f} sequences/s")]
    if plan:
        rows.append(("plan", f"budget {plan['budget_ms']:g} ms, predicted "
                             f"{plan['predicted_ms']:.2f} ms, measured at export "
                             f"{plan['measured_ms']:.2f} ms"))
    if "profile_protocol" in data:
        rows.append(("now", f"{data['profile_protocol']['measured_ms']:.2f} ms with the "
                            "profile's protocol (comparable with the prediction)"))
    emit(data, as_json, lambda d: table(rows))
