"""``shaperctl run`` and ``shaperctl bench``: serving a bundle with onnxruntime alone."""

from __future__ import annotations

from pathlib import Path

import click

from shaper_deploy.runtime import DEVICES
from shaper_deploy.serving import POOLINGS

from .common import emit, json_option, progress, said_chosen, table

model_option = click.option(
    "--model", "model_file", default=None,
    help="Which ONNX file of the bundle to run (default: shaper.json's default_model, the "
         "one the plan chose), e.g. model.onnx or model_quantized.onnx.")


def _finite(value: float, name: str) -> float:
    if value != value:  # NaN passes click's FloatRange
        raise click.BadParameter("nan is not a number of seconds; give 0.1 to 3600",
                                 param_hint=name)
    return value


MAX_TEXTS = 1000  # texts per run: its output holds their similarity matrix
MAX_TEXT_FILE = 16 << 20  # bytes of --file
MAX_BENCH_TEXTS = 100_000  # bench --texts: requests tokenized before the clock starts


def _texts(texts: tuple[str, ...], file: Path | None) -> list[str]:
    from shaper_deploy.errors import ServingError
    from shaper_deploy.io import read_lines

    out = list(texts)
    if file is not None:
        try:
            out += read_lines(file, MAX_TEXT_FILE, "file", ServingError)
        except ServingError as exc:
            raise click.BadParameter(str(exc), param_hint="--file") from None
    if not out:
        raise click.UsageError("give TEXT arguments or --file (one text per line)")
    if len(out) > MAX_TEXTS:
        raise click.UsageError(f"{len(out):,} texts given; run takes at most {MAX_TEXTS:,} (its "
                               "output compares every pair); embed more with "
                               "shaper_deploy.serving.Bundle.embed")
    return out


@click.command("run")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1)
@click.option("--file", "text_file", type=click.Path(path_type=Path),
              help="Read texts from this file, one per line (UTF-8, at most 16 MiB and 1,000 "
                   "texts).")
@click.option("--pooling", type=click.Choice(POOLINGS), default="mean",
              show_default=True, help="How a text's token vectors become one vector.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Scale embeddings to unit length.")
@click.option("--compare", "compare_bundle", type=click.Path(path_type=Path), default=None,
              help="Another bundle (e.g. the full model): report each text's embedding cosine.")
@click.option("--max-length", type=click.IntRange(2), default=None,
              help="Cut texts to this many tokens (default and upper limit: the model's).")
@click.option("--pair", "pairs", multiple=True,
              help="Text-pair classifiers: the second text, once per text, in order.")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default="cpu", show_default=True)
@model_option
@json_option
def run(bundle: Path, texts: tuple[str, ...], text_file: Path | None, pooling: str,
        normalize: bool, compare_bundle: Path | None, max_length: int | None,
        pairs: tuple[str, ...], device: str, model_file: str | None, as_json: bool) -> None:
    """Embed texts, classify them (text-classification bundles: label and score), or fill
    mask tokens ([MASK], <mask>) with a bundle, through onnxruntime alone.

    \b
    Examples:
      shaperctl run ./bundle "Deploying BERT to phones." "Models on many devices."
      shaperctl run ./bundle --file sentences.txt --compare ./full-bundle --json
      shaperctl run ./classifier "A gripping, beautifully acted film."
    """
    import numpy as np

    from shaper_deploy.serving import Bundle

    items = _texts(texts, text_file)
    model = Bundle.load(bundle, device=device, model=model_file)
    enc = model.encode(items, max_length, list(pairs) or None
                       if model.manifest.task == "text-classification" else None)
    truncated = [i + 1 for i, t in enumerate(enc.truncated) if t]
    data = {"bundle": str(bundle), "task": model.manifest.task,
            "shape": model.manifest.shape, "params": model.manifest.params["fused"],
            "model": model.model_file, "max_length": min(max_length or model.max_length,
                                                         model.max_length),
            "truncated_texts": truncated}
    if pairs and model.manifest.task != "text-classification":
        raise click.UsageError("--pair is for text-pair classifiers (text-classification "
                               "bundles)")
    if model.manifest.task == "text-classification":
        data["predictions"] = model.classify(items, list(pairs) or None,
                                             max_length=max_length)
        return emit(data, as_json, lambda d: "\n".join(
            f"{i + 1}: " + (f"{p['label']} {p['score']:.3f}" if "label" in p
                            else f"score {p['score']:.4f}") + f"   {items[i][:60]}"
            for i, p in enumerate(d["predictions"])))
    if model.manifest.task == "fill-mask":
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
        from shaper_deploy.errors import ServingError
        from shaper_deploy.fidelity import cosine_rows

        other = Bundle.load(compare_bundle, device=device).embed(items, pooling, normalize,
                                                                 max_length=max_length)
        if other.shape != vectors.shape:
            raise ServingError(f"cannot compare embeddings of width {vectors.shape[1]} with "
                               f"{compare_bundle}'s width {other.shape[1]}; compare bundles "
                               "of one super network")
        cos = cosine_rows(vectors, other)
        # With mean pooling this is the planner's fidelity (shaper_deploy.fidelity).
        data["compare"] = {"bundle": str(compare_bundle), "cosine": cos.round(4).tolist(),
                           "mean_cosine": float(cos.mean()),
                           "is_fidelity": pooling == "mean"}
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
                     + ", ".join(f"{v:.3f}" for v in c["cosine"])
                     + f" (mean {c['mean_cosine']:.3f})")
    return "\n".join(lines)


@click.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--batch", default=None, type=click.IntRange(1),
              help="Rows per request (default: the plan's batch, else 1).")
@click.option("--seq-len", default=None, type=click.IntRange(1),
              help="Tokens per row (default: the plan's length, else 128).")
@click.option("--texts", "texts_file", type=click.Path(path_type=Path), default=None,
              help="Your texts as the requests, in turn (cycled), tokenized as served: one "
                   "per line, or the text column of a .csv/.tsv/.jsonl (a classifier's "
                   f"training column, else 'text'; the first {MAX_BENCH_TEXTS:,}). Instead of "
                   "--seq-len.")
@click.option("--concurrency", default=1, show_default=True, type=click.IntRange(1),
              help="Threads sharing one session.")
@click.option("--duration", default=10.0, show_default=True, type=click.FloatRange(0.1, 3600),
              callback=lambda ctx, param, v: _finite(v, "--duration"),
              help="Seconds (0.1 to 3600).")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Intra-op threads (default: the plan's profile protocol, else ORT's).")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default="cpu", show_default=True)
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="For a planned bundle: the profile of this machine to measure it with "
                   "(default: the plan's where it is here, else the one 'profiles list' marks "
                   "for this machine and the bundle's design space in ./profiles).")
@model_option
@json_option
def bench(bundle: Path, batch: int | None, seq_len: int | None, texts_file: Path | None,
          concurrency: int, duration: float,
          threads: int | None, device: str, profile_path: Path | None, model_file: str | None,
          as_json: bool) -> None:
    """Latency percentiles and throughput of a bundle, beside its predicted latency.

    One session shared by --concurrency threads for --duration seconds, at the plan's
    batch and length unless --batch/--seq-len say otherwise. A bundle exported
    with --latency, given a profile of this machine (--profile, the plan's, or the one
    'profiles list' marks here), is also measured with the profile's protocol at the plan's
    workload and percentile, for as long as the plan timed it (export --measure-seconds), the
    number its budget is checked against, and says whether it is within the budget. With
    --texts, the requests are your texts, and their percentile is held to the budget where
    every one is within the plan's length.

    \b
    Examples:
      shaperctl bench ./bundle --concurrency 2 --duration 20
      shaperctl bench ./classifier --texts validation.csv
    """
    from shaper_deploy.fidelity import metric_word
    from shaper_deploy.serving import Bundle

    if texts_file is not None and seq_len is not None:
        raise click.UsageError("--texts and --seq-len go apart: with --texts each request is "
                               "as long as its texts")
    model = Bundle.load(bundle, device=device, threads=threads, model=model_file)
    plan = model.manifest.plan
    texts = None
    if texts_file is not None:
        from shaper_deploy.taskdata import read_texts

        head = model.manifest.config.get("task_head") or {}
        if head.get("pair_column"):
            raise click.UsageError(f"--texts sends single texts; {bundle} classifies pairs of "
                                   f"texts ({head['text_column']}, {head['pair_column']})")
        texts = read_texts(texts_file, head.get("text_column") or "text")
        if len(texts) > MAX_BENCH_TEXTS:  # tokenized before the clock starts
            progress(f"--texts: {len(texts):,} texts in {texts_file}; benchmarking with the "
                     f"first {MAX_BENCH_TEXTS:,}")
            texts = texts[:MAX_BENCH_TEXTS]
    # The load a planned bundle promises (one request at a time at its workload) by default.
    batch = batch or (plan["batch"] if plan else 1)
    seq_len = seq_len or (plan["seq_len"] if plan else 128)
    if profile_path is not None and not plan:
        raise click.UsageError(f"--profile goes with a planned bundle (export --latency); "
                               f"{bundle} has no plan")
    profile, elsewhere = None, []
    other_device = bool(plan) and plan["device"] != device  # a cuda plan benched on cpu
    if other_device and profile_path is not None:
        raise click.UsageError(f"--profile compares with the plan, which is for "
                               f"{plan['device']}; bench it with --device {plan['device']}")
    if plan and not other_device:
        from shaper_deploy.errors import ServingError
        from shaper_deploy.profiling.predictor import judged_phrase, over_budget_advice

        profile = _profile_to_measure_with(bundle, model.manifest, device, profile_path)
        elsewhere = profile.foreign_fields() if profile is not None else []
        if elsewhere and profile_path is not None:
            raise ServingError(f"--profile {profile_path} describes another machine "
                               f"({'; '.join(elsewhere)}); bench compares with a profile of "
                               "this one (shaperctl profiles list)")
        if elsewhere:  # its protocol numbers would describe the wrong machine
            profile = None
    if profile is not None:
        if threads is None:  # the profile's threads, so the numbers compare
            threads = profile.header.protocol.threads
            model = Bundle.load(bundle, device=device, threads=threads, model=model_file)
    pct = (plan or {}).get("percentile", 50.0)
    result = model.bench(batch, seq_len, concurrency, duration, texts=texts, percentile=pct)
    data = {"bundle": str(bundle), "device": device, "threads": threads, **result}
    if texts is not None:
        data["texts"]["file"] = str(texts_file)
    if plan:
        data["plan"] = {k: plan.get(k) for k in ("budget_ms", "percentile", "batch", "seq_len",
                                                 "precision", "predicted_ms", "measured_ms",
                                                 "fidelity")}
        data["plan"]["profile_machine_differs"] = elsewhere
        data["plan"]["measured_with_profile"] = None if profile is None else str(profile.path)
    if profile is not None and model.model_file == model.manifest.default_model:
        # comparable with the prediction: the profile's protocol at the plan's workload, timed
        # as long as the plan timed it (a plan for another machine: promise.MEASURE_SECONDS)
        from shaper_deploy.promise import MEASURE_SECONDS

        m = profile.measure(bundle / model.model_file, plan["precision"],
                            (plan["batch"], plan["seq_len"]), device, pct,
                            seconds=plan.get("measure_seconds") or MEASURE_SECONDS)
        within = m["judged_ms"] <= plan["budget_ms"]
        data["profile_protocol"] = {**m, "predicted_ms": plan["predicted_ms"],
                                    "within_budget": within,
                                    "advice": None if within else over_budget_advice(
                                        m, plan["budget_ms"])}
    lat, tx = result["latency_ms"], result["texts"]
    shape = (f"seq {seq_len}" if tx is None else
             f"{tx['count']:,} texts of {texts_file} in turn (median {tx['tokens']['median']:g} "
             f"tokens, p90 {tx['tokens']['p90']:g}, longest {tx['tokens']['max']})")
    rows = [("bundle", f"{bundle} ({result['model']})"),
            ("load", f"batch {batch}, {shape}, {concurrency} client thread(s) back to "
                     f"back, {threads or 'default'} intra-op thread(s), {duration:g} s"),
            ("latency", f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f} ms, "
                        f"p99 {lat['p99']:.2f} ms (p99/p50 {result['p99_over_p50']:.2f})"),
            ("failed", f"{result['failed']} request(s)"
                       + (f": {result['first_failure']}" if result["failed"] else "")),
            ("throughput", f"{result['throughput_rps']:.1f} requests/s, "
                           f"{result['sequences_per_s']:.1f} sequences/s")]
    if plan:
        at_export = (f"{plan['measured_ms']:.2f} ms measured at export" if plan["measured_ms"]
                     is not None else "not measured at export (planned for another machine)")
        rows.append(("plan", f"budget {plan['budget_ms']:.2f} ms at p{pct:g}, batch "
                             f"{plan['batch']} x {plan['seq_len']} ({plan['precision']}), "
                             f"predicted {plan['predicted_ms']:.2f} ms, {at_export}, "
                             f"{metric_word(plan['fidelity_metric'])} {plan['fidelity']:.4f}"))
        # The budget promises one request at a time at the plan's workload; another load's
        # percentiles are reported, not held to it (the "now" row is).
        data["load_is_planned"] = tx is None and (concurrency, batch, seq_len) == (
            1, plan["batch"], plan["seq_len"])
        # Your texts, one request at a time at the plan's batch, none longer than its length:
        # each request costs at most the planned one, so their percentile is held to the budget.
        held = (tx is not None and (concurrency, batch) == (1, plan["batch"])
                and tx["tokens"]["max"] <= plan["seq_len"] and not other_device
                and not elsewhere)  # a plan for another machine or device kind: not here
        if tx is not None:
            tx["within_budget"] = (lat[f"p{pct:g}"] <= plan["budget_ms"]) if held else None
        if held:
            rows.append(("texts", f"p{pct:g} {lat[f'p{pct:g}']:.2f} ms over your texts: "
                                  + _verdict(tx["within_budget"], plan["budget_ms"])
                                  + f" (every request within the plan's {plan['seq_len']} "
                                    "tokens)"))
        elif tx is not None and tx["tokens"]["max"] > plan["seq_len"]:
            rows.append(("note", f"the budget is for {plan['seq_len']} tokens; your texts run to "
                                 f"{tx['tokens']['max']}, so their latency above is not held "
                                 "to it (plan with --eval or --calibration on them: export "
                                 "then prices their longest)"))
        elif not data["load_is_planned"]:
            rows.append(("note", f"the budget is for one request at a time at batch "
                                 f"{plan['batch']} x {plan['seq_len']}; this load's latency "
                                 "above is not held to it"
                                 + (" (the next line is)" if "profile_protocol" in data
                                    else "")))
    if elsewhere:
        rows.append(("profile", f"{plan['profile']} describes another machine "
                                f"({'; '.join(elsewhere[:3])}): not compared here"))
    elif other_device:
        rows.append(("profile", f"the plan is for {plan['device']}, this load ran on {device}: "
                                f"not compared (bench --device {plan['device']} compares)"))
    elif plan and profile is None:
        rows.append(("profile", f"the plan's {plan['profile']} is not here, nor a profile of "
                                "this machine for its design space in ./profiles: not "
                                "compared (--profile names one)"))
    if "profile_protocol" in data:
        m = data["profile_protocol"]
        verdict = _verdict(m["within_budget"], plan["budget_ms"])
        rows.append(("now", f"p{pct:g} {m['judged_ms']:.2f} ms with the protocol of "
                            f"{profile.path} at the plan's workload ({m['runs']} runs in "
                            f"{m['seconds']:.0f} s): "
                            f"{verdict} ({judged_phrase(m)})"))
        if m["advice"]:
            rows.append(("advice", m["advice"]))
    emit(data, as_json, lambda d: table(rows))


def _profile_to_measure_with(bundle: Path, manifest, device: str, profile_path: Path | None):
    """The profile a planned bundle is measured with here (bench, verify): --profile; else
    the plan's, where it is here; else (a bundle copied to its target device alone, or
    measured from another folder) the one ``profiles list`` marks for this machine and the
    bundle's design space in ./profiles, said on stderr; else None."""
    from shaper_deploy.profiling.catalog import profile_for_here
    from shaper_deploy.profiling.predictor import DeviceProfile
    from shaper_deploy.shape import DesignSpace

    planned = manifest.plan["profile"]
    if profile_path is not None or (Path(planned) / "profile.json").is_file():
        return DeviceProfile.load(profile_path or planned)
    found = profile_for_here(DesignSpace.from_dict(manifest.design_space), device)
    if found is not None:
        said_chosen(f"the plan's profile {planned} is not here: measuring", found.path,
                    "for the bundle's design space")
    return found


def promise_line(promise: dict | None, bundle: str) -> str:
    """A served bundle's plan in a clause (``BundleManifest.promise``): the budget, the
    fidelity beside it, and where it was last checked; nothing for a bundle without a plan."""
    from shaper_deploy.fidelity import metric_word

    if not promise:
        return ""
    p = promise
    said = (f"\n  plan: p{p['percentile']:g} <= {p['budget_ms']:.2f} ms at batch {p['batch']} x "
            f"{p['seq_len']} ({p['precision']}, {metric_word(p['fidelity_metric'])} "
            f"{p['fidelity']:.4f})"
            + (f" on {p['machine']}" if p["machine"] else ""))
    c = p["checked"]
    if c is None:
        return said + (": NOT verified on that machine; run shaperctl verify "
                       f"{bundle} there")
    at = "at export" if c["by"] == "export" else f"by verify, {c['when']}"
    return said + (f": {c['ms']:.2f} ms" if c["ms"] is not None else ": checked") + (
        f" {at}, " + ("within" if c["within_budget"] else "OVER the budget"))


def windows_line(windows: list[dict], budget_ms: float, pct: float) -> str:
    """verify's windows, each judged on the runs up to its end: where it timed on and why."""
    said = [f"{w['seconds']:.0f} s: p{pct:g} {w['judged_ms']:.2f} ms "
            f"({'within' if w['judged_ms'] <= budget_ms else 'OVER'}; {w['observed_ms']:.2f} "
            f"observed, {w['estimated_ms']:.2f} at the profiled speed, the machine "
            f"{w['drift']:.2f}x)" for w in windows]
    return ("; ".join(said) + "; each over all the runs to its end, timed on while over only "
            "in the requests just timed")


def _verdict(within: bool, budget_ms: float) -> str:
    return "within the budget" if within else f"OVER the {budget_ms:.2f} ms budget"


@click.command("verify")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="Profile of this machine (default: the one the plan was made with; where "
                   "that is not here, the one 'profiles list' marks for this machine and the "
                   "bundle's design space in ./profiles).")
@click.option("--duration", default=60.0, show_default=True, type=click.FloatRange(5, 3600),
              help="Seconds of requests (the profile's protocol, interleaved with its "
                   "reference graph).")
@click.option("--longest", default=300.0, show_default=True, type=click.FloatRange(5, 3600),
              callback=lambda ctx, param, v: _finite(v, "--longest"),
              help="Seconds in all it may go on timing when a window is over the budget only "
                   "in the requests just timed (the model within it at the profiled speed, "
                   "the machine no slower than the profile's tail prices): to 60 s, then "
                   "300 s (at most this), judged on all the runs; --longest as --duration "
                   "times one window.")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default=None,
              help="Default: the plan's device.")
@json_option
def verify(bundle: Path, profile_path: Path | None, duration: float, longest: float,
           device: str | None, as_json: bool) -> None:
    """Measure a planned bundle on the machine it was planned for and record the result.

    For a bundle from export --latency (with or without --for-device): times it for
    --duration seconds with the profile's protocol at the plan's workload, interleaved with
    the profile's reference graph, and writes the verdict into its shaper.json. The profile
    must describe this machine. A window over the budget only in the requests just timed
    (the model within it at the profiled speed, the machine no slower than the profile's
    tail prices) is not the verdict: on a host whose speed moves in periods of minutes it
    times on, to 60 s then 300 s (--longest), and judges all the runs. Exit status 3 when
    the budget is not met.

    \b
    Example (on the target device):
      shaperctl verify ./bundle --duration 60
    """
    import datetime

    from shaper_deploy.bundle import BundleManifest
    from shaper_deploy.errors import ServingError
    from shaper_deploy.io import output_lock
    from shaper_deploy.profiling.catalog import PROFILES_ROOT
    from shaper_deploy.profiling.predictor import (judged_phrase, longer_window,
                                                   over_budget_advice)
    from shaper_deploy.serving import Bundle

    manifest = BundleManifest.read(bundle)
    plan = manifest.plan
    if not plan:
        raise ServingError(f"bundle {bundle} has no plan to verify; verify checks bundles "
                           "made by shaperctl export --latency")
    device = device or plan["device"]
    profile = _profile_to_measure_with(bundle, manifest, device, profile_path)
    if profile is None:
        raise ServingError(
            f"bundle {bundle} was planned with profile {plan['profile']}, which is not here, "
            f"and {PROFILES_ROOT}/ holds no reliable {device} profile of this machine for its "
            "design space; pass --profile with a profile of this machine (verify times the "
            "bundle with its protocol and reference graph)")
    differences = profile.foreign_fields()
    if differences:
        raise ServingError(f"this machine is not the one profile {profile.path} describes "
                           f"({'; '.join(differences)}); run verify on that machine, or pass "
                           "--profile with a profile of this one")
    Bundle.load(bundle, device=device)  # its model file verified against its checksum
    pct = plan.get("percentile", 50.0)
    progress(f"timing {bundle} for {duration:g} s at batch {plan['batch']} x {plan['seq_len']}")

    def go_on(m: dict) -> float | None:  # the advice to measure longer, followed
        total = longer_window(m, plan["budget_ms"], longest)
        if total is None:
            return None
        progress(f"p{pct:g} {m['observed_ms']:.2f} ms in the {m['seconds']:.0f} s timed, over "
                 f"the {plan['budget_ms']:.2f} ms budget; {m['estimated_ms']:.2f} ms at the "
                 f"profiled speed (the machine {m['drift']:.2f}x it by the reference's floor, "
                 "within what the profile's tail prices): timing on to "
                 f"{total:g} s, judged on all the runs")
        return total
    m = profile.measure(bundle / manifest.default_model, plan["precision"],
                        (plan["batch"], plan["seq_len"]), device, pct, seconds=duration,
                        go_on=go_on)
    result = {**m, "profile": str(profile.path),
              "budget_ms": plan["budget_ms"], "predicted_ms": plan["predicted_ms"],
              "within_budget": m["judged_ms"] <= plan["budget_ms"],
              "observed_within_budget": m["observed_ms"] <= plan["budget_ms"],
              "error_vs_prediction": m["estimated_ms"] / plan["predicted_ms"] - 1,
              "when": datetime.datetime.now(datetime.timezone.utc).isoformat(
                  timespec="seconds")}
    result["advice"] = (None if result["within_budget"] else
                        over_budget_advice(m, plan["budget_ms"]))
    with output_lock(bundle):
        manifest = BundleManifest.read(bundle)
        manifest.plan["verification"] = result
        manifest.plan.setdefault("target", {})["verified"] = result["within_budget"]
        manifest.write(bundle)
    verdict = _verdict(result["within_budget"], plan["budget_ms"])
    emit({"bundle": str(bundle), "verification": result}, as_json, lambda d: table([
        ("bundle", f"{bundle} ({plan['precision']}, {','.join(map(str, plan['shape']))})"),
        ("budget", f"{plan['budget_ms']:.2f} ms at p{pct:g}, batch {plan['batch']} x "
                   f"{plan['seq_len']}; predicted {plan['predicted_ms']:.2f} ms"),
        ("measured", f"p{pct:g} {m['judged_ms']:.2f} ms: {verdict} ({judged_phrase(m)}; "
                     f"estimate {result['error_vs_prediction']:+.1%} vs the prediction; "
                     f"{m['runs']} runs over {m['seconds']:.0f} s)"),
        *([("windows", windows_line(m["windows"], plan["budget_ms"], pct))]
          if len(m["windows"]) > 1 else []),
        ("fidelity", f"{plan['fidelity']:.4f} ({plan['fidelity_metric']})"),
        ("profile", str(profile.path)),
        *([("advice", result["advice"])] if result["advice"] else []),
        ("recorded", str(bundle / "shaper.json"))]))
    if not result["within_budget"]:
        raise SystemExit(3)


@click.command("triton")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Model repository folder (created if missing; other entries are kept).")
@click.option("--name", "names", multiple=True,
              help="Model name per bundle, in order (default: each bundle's folder name). "
                   "Letters, digits, '_', '-' and '.'.")
@click.option("--max-batch", default=8, show_default=True, type=int,
              help="Triton's max_batch_size; requests are batched dynamically up to it.")
@click.option("--instances", default=1, show_default=True, type=int,
              help="Model instances (onnxruntime sessions) per model.")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default="cpu", show_default=True,
              help="Instance kind: cpu (KIND_CPU) or cuda (KIND_GPU).")
@click.option("--threads", default=None, type=int,
              help="onnxruntime intra-op threads (default: the threads the plan was measured "
                   "with, when its profile is at hand; else onnxruntime's).")
@click.option("--force", is_flag=True, help="Replace existing entries of the same name.")
@json_option
def triton(bundles: tuple[Path, ...], out: Path, names: tuple[str, ...], max_batch: int,
           instances: int, device: str, threads: int | None, force: bool,
           as_json: bool) -> None:
    """Write bundles as a Triton Inference Server model repository (also KServe's).

    Each bundle becomes REPO/NAME/config.pbtxt (onnxruntime backend, variable-length int64
    inputs, dynamic batching, instance group, threads), REPO/NAME/1/model.onnx (the bundle's
    default model, checksum verified) and the tokenizer files and shaper.json beside them.
    See docs/serving.md for the server, client and KServe commands.

    \b
    Examples:
      shaperctl triton ./b9 --out ./repo
      shaperctl triton ./b5 ./b9 ./b20 --name minilm_5ms --name minilm_9ms --name minilm_20ms \\
        --out ./repo --instances 2
    """
    from shaper_deploy.io import output_lock
    from shaper_deploy.triton import TritonOptions, write_repository

    options = TritonOptions(max_batch=max_batch, instances=instances, device=device,
                            threads=threads)
    with output_lock(out):
        written = write_repository(bundles, out, names, options, force=force)
    emit({"repository": str(out), "models": written}, as_json, lambda d: "\n".join(
        f"{m['path']}: {m['model']} from {m['bundle']}, max_batch_size {m['max_batch_size']}, "
        f"{m['instances']} x {m['device']}"
        + (f", {m['intra_op_threads']} intra-op threads" if m["intra_op_threads"] else "")
        + promise_line(m["plan"], m["bundle"]) for m in d["models"]))


@click.command("serve")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--name", "names", multiple=True,
              help="Model name per bundle, in order (default: each bundle's folder name).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface the REST server listens on (0.0.0.0: every interface).")
@click.option("--http-port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--grpc-port", default=None, type=click.IntRange(1, 65535),
              help="Also serve the V2 gRPC protocol on this port (KServe binds it on every "
                   "interface); off by default.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes (uvicorn workers), each with its own sessions.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="onnxruntime intra-op threads per session (default: the threads the plan "
                   "was measured with, when its profile is at hand; else onnxruntime's).")
@click.option("--max-batch", default=32, show_default=True, type=int,
              help="Texts (or token-id rows) one request may carry.")
@click.option("--max-text-bytes", default=16384, show_default=True, type=int,
              help="UTF-8 bytes one text may have.")
@click.option("--batch-wait-ms", default=0.0, show_default=True, type=float,
              help="Text requests share runs (each run takes every request that arrived "
                   "during the last, up to --max-batch texts); a run also waits this long "
                   "for more.")
@json_option
def serve(bundles: tuple[Path, ...], names: tuple[str, ...], host: str, http_port: int,
          grpc_port: int | None, workers: int, threads: int | None, max_batch: int,
          max_text_bytes: int, batch_wait_ms: float, as_json: bool) -> None:
    """Serve bundles with KServe's ModelServer (V1 and V2 inference protocol, health,
    metadata, Prometheus metrics) until SIGTERM, which drains requests in flight.

    Every bundle is verified and loaded before a port opens. V2 inputs: 'text' (BYTES [N]) ->
    'embedding' FP32 [N, D] (fill-mask bundles: 'fill_mask'), or the graph's inputs
    (input_ids + attention_mask, + token types for BERT) INT64 [B, S] -> its outputs; JSON
    numbers, or the binary tensor extension where the request asks (binary_data_output).
    See docs/serving.md.

    \b
    Examples:
      shaperctl serve ./b9 --http-port 8080
      curl -s localhost:8080/v2/models/b9/infer -H 'Content-Type: application/json' \\
        -d '{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["Hello"]}]}'
    """
    try:
        from shaper_deploy.server import ServeOptions, check_ports, load_models
        from shaper_deploy.server import serve as run_server
    except ImportError as exc:
        raise click.ClickException(f"shaperctl serve needs KServe's Python SDK ({exc}): pip "
                                   "install 'shaper-deploy[serve]'") from None

    options = ServeOptions(max_batch=max_batch, max_text_bytes=max_text_bytes, threads=threads,
                           batch_wait_ms=batch_wait_ms)
    models = load_models(list(bundles), list(names) or None, options)
    check_ports(host, http_port, grpc_port)
    data = {"host": host, "http_port": http_port, "grpc_port": grpc_port, "workers": workers,
            "max_batch": max_batch, "max_text_bytes": max_text_bytes,
            "models": [{"name": m.name, "bundle": str(m.path), "task": m.bundle.manifest.task,
                        "model": m.bundle.model_file,
                        "infer": f"http://{host}:{http_port}/v2/models/{m.name}/infer",
                        "plan": m.bundle.manifest.promise}
                       for m in models]}
    emit(data, as_json, lambda d: "\n".join(
        f"serving {m['name']} ({m['task']}, {m['model']} from {m['bundle']}) at {m['infer']}"
        + promise_line(m["plan"], m["bundle"]) for m in d["models"]))
    import sys

    sys.stdout.flush()
    run_server(models, host, http_port, grpc_port, workers)
