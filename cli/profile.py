"""``shaperctl profile``, ``shaperctl predict`` and ``shaperctl profiles list|show|retake``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from shaper_deploy.runtime import DEVICES, PRECISIONS

from . import common
from .common import (ShaperGroup, emit, exports_drop, int_list, json_option, millions,
                     percentile_option, profile_holding, progress, resumable, table,
                     widths_option)


@click.command("profile")
@click.option("--device", type=click.Choice(sorted(DEVICES)), required=True,
              help="ONNX Runtime provider to measure; cuda fails unless CUDA really starts.")
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Profile folder; running the same command again resumes it.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Profile this super network's architecture (default: the paper's BERT-base "
                   "design space). Weights are not needed: latency does not depend on them.")
@click.option("--precision", "precisions", default=None,
              help="Precisions to measure, comma-separated (default: what the device runs, "
                   "fp32,int8 on cpu, less int8 where a probe finds it under 1.10x faster "
                   "than fp32 at every size; fp32 on cuda).")
@click.option("--from", "from_paths", multiple=True, type=click.Path(path_type=Path),
              help="Transfer: fit this device's model with these profiles (of other "
                   "devices, same design space and device kind; repeat for several) as the "
                   "prior, from a few shapes measured here; at most 8. A folder of profiles "
                   "(e.g. profiles) gives every one in it of this device kind and design "
                   "space (over 8 in all: the 8 closest to this machine). The grid is the "
                   "first's, or the part of it every one covers.")
@click.option("--batch", "batches", default=None,
              help="Grid batch sizes (default 1,4,16; with --from, the source's); batches "
                   "between them are interpolated.")
@click.option("--seq-len", "seq_lens", default=None,
              help="Grid sequence lengths (default 16,32,64,128,256,512; longer than the "
                   "model's positions are dropped; with --from, the source's); lengths "
                   "between them are interpolated.")
@click.option("--max-tokens", default=None, type=click.IntRange(1),
              help="Leave out grid points with more than this many batch x length tokens "
                   "(default 1024; with --from, the sources', or fewer: only the sizes you "
                   "serve are measured, e.g. 256, in a fraction of the time).")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="Intra-op threads of every session timed, and of the plans and servers "
                   "that use the profile (default 2, or 1 where this process may use one "
                   "core only: CPU affinity, a CPU quota under 2 on its cgroup).")
@click.option("--minutes", default=None, type=click.FloatRange(0.5, 1440),
              help="Time budget for measuring (default 12; 2 with --from): a probe of the "
                   "device's speed (its first seconds) picks how many shapes and rounds fit "
                   "in three quarters of it, the rest kept for the calm looks' waits "
                   "(--calm-wait; a transfer sizes to all of it; where the least profile "
                   "fills it, the probe says so and names the --minutes that leaves the "
                   "waits their quarter). Ignored with --samples.")
@click.option("--samples", default=None, type=click.IntRange(8, 2000),
              help="Shapes to measure, instead of what --minutes buys (stratified over the "
                   "parameter range; 1 in 4 held out; at least 12, or 8 with --from).")
@click.option("--rounds", default=None, type=click.IntRange(1, 100),
              help="Interleaved rounds per group of shapes and input size in each sweep "
                   "(default 1 in each of 3 sweeps; with --from, 1 in each of 2 sweeps; "
                   "more where --minutes allows).")
@click.option("--sweeps", default=None, type=click.IntRange(1, 10),
              help="Times the whole measurement is made, one after another, so each shape is "
                   "timed minutes apart and its floor comes from the calmest (default 3; 2 "
                   "with --from).")
@click.option("--calm-looks", default=None, type=click.IntRange(0, 10),
              help="After the sweeps, up to this many more looks at each shape and size whose "
                   "lowest floor so far was timed while the machine ran slow (the reference, "
                   "or the sentinel, over 1.1x its fastest): default 2; 1 with --from.")
@click.option("--calm-wait/--no-calm-wait", default=True, show_default=True,
              help="Before each size a calm look times, wait until the reference (and the "
                   "sentinel) runs within 1.1x its fastest, while the rest still fits in "
                   "--minutes (not with --samples: no time budget to wait in).")
@click.option("--sentinel/--no-sentinel", default=True, show_default=True,
              help="Time one fixed workload (the reference in the first precision at the "
                   "smallest grid size) in every group and size too, so every group is judged "
                   "slow or calm against one calm speed (the calm looks look again at what it "
                   "or the reference says ran slow).")
@click.option("--int8-format", default="auto", show_default=True,
              type=click.Choice(["auto", "U8U8", "U8S8", "U8S8-reduce-range"],
                                case_sensitive=False),
              help="The dynamic int8 format timed, and made by the plans that use the "
                   "profile. auto: VNNI CPUs and ARM use U8S8; x86 without VNNI U8U8 (the "
                   "more faithful), or U8S8-reduce-range where the probe times it 1.10x "
                   "faster or more.")
@click.option("--seed", default=0, show_default=True, type=int, help="Sampling seed.")
@widths_option
@json_option
def profile(device: str, out: Path, supernet_path: Path | None, precisions: str | None,
            from_paths: tuple[Path, ...], batches: str | None, seq_lens: str | None,
            max_tokens: int | None, threads: int | None, minutes: float | None,
            samples: int | None, rounds: int | None, sweeps: int | None,
            calm_looks: int | None, calm_wait: bool, sentinel: bool, int8_format: str,
            seed: int,
            supershaper_widths,
            as_json: bool) -> None:
    """Measure latency over a design space and a grid of input sizes; fit a predictor.

    A probe first times the smallest, largest and reference shapes at every grid point and
    precision (what int8 buys here is recorded), and sizes the profile to --minutes. Every
    sampled shape is then built straight as an optimized ONNX graph with random weights (no
    tracing), in fp32 and as the export's dynamic int8 (in this CPU's format: where it may
    use two, the probe times both and keeps the faster, --int8-format), and timed at
    every grid point (batch x sequence length) interleaved with a reference model whose
    slowdowns mark the machine's slow periods. Measurements are appended
    as they are made; an interrupted run resumes when the same command is run again. The
    folder ends with predictor.json (the latency model and its held-out error, also at input
    sizes never fitted) and three plots: the fit and its verdict, latency vs parameters with
    what int8 buys, and the machine's speed over the profile's time.

    With --from, a transfer: the same protocol on the grid the sources share (--max-tokens
    narrows it to the sizes you serve), but a few shapes (what --minutes, default 2, buys),
    fitted with the source profiles' model as the prior; trust is judged as for any profile,
    on shapes held out here.

    \b
    Examples:
      shaperctl profile --device cpu --supernet ./super --out profiles/my-laptop
      shaperctl profile --device cpu --out profiles/s64 --precision int8 --seq-len 32,64
      shaperctl profile --device cpu --from profiles/x86_64-2core-avx512-minilm \\
        --out profiles/my-vm-minilm
      shaperctl profile --device cpu --from profiles/x86_64-2core-avx512-minilm \\
        --max-tokens 256 --out profiles/my-vm-minilm-256
      shaperctl profile --device cpu --from profiles --supernet ./super \\
        --out profiles/my-vm
    """
    from shaper_deploy.io import check_not_input, output_lock
    from shaper_deploy.profiling.predictor import DeviceProfile, fit_profile
    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.profiling.profile import (DIRECT_CALM_LOOKS, DIRECT_MINUTES,
                                                 DIRECT_SWEEPS, TRANSFER_CALM_LOOKS,
                                                 TRANSFER_SWEEPS, run_profile)
    from shaper_deploy.profiling.protocol import Protocol
    from shaper_deploy.runtime import DEVICE_PRECISIONS, default_threads, share_one_pool
    from shaper_deploy.supernet import SuperConfig, read_checkpoint_header

    check_not_input(out, {"--supernet": supernet_path})
    threads = threads or default_threads()
    if supernet_path is not None:
        config = read_checkpoint_header(supernet_path, supershaper_widths)["config"]
        source = {"supernet": str(supernet_path)}
    else:
        config, source = SuperConfig(), {"supernet": None}
    chosen = tuple(precisions.split(",") if precisions else DEVICE_PRECISIONS[device])
    transfer = None
    if from_paths:
        from shaper_deploy.profiling import transfer as tr

        given = [n for n, v in (("--batch", batches), ("--seq-len", seq_lens)) if v is not None]
        if given:
            raise click.UsageError(f"{given[0]} cannot be given with --from: a transfer "
                                   "measures the grid its source profiles share "
                                   "(--max-tokens narrows it)")
        space = config.space if supernet_path is not None else None
        here = device_fingerprint(device)
        named = tr.expand_sources(from_paths, device, space, out, progress, here)
        check_not_input(out, [("--from", p) for p in named])
        sources = tr.load_sources(named, device, space)
        if supernet_path is None:  # the design space is the sources'
            config = sources[0].header.config
            source = dict(sources[0].header.source)
        protocol = replace(tr.target_protocol(sources, threads, chosen if precisions else None,
                                              rounds, max_tokens, progress),
                           sweeps=sweeps or TRANSFER_SWEEPS,
                           calm_looks=TRANSFER_CALM_LOOKS if calm_looks is None else calm_looks,
                           calm_wait=calm_wait, sentinel=sentinel)
        transfer = tr.transfer_record(sources, protocol, here, progress)
    else:
        lens = int_list(seq_lens or "16,32,64,128,256,512", "--seq-len")
        usable = tuple(s for s in lens if s <= config.max_tokens)
        if not usable:
            raise click.BadParameter(f"every length exceeds the model's "
                                     f"{config.max_tokens} positions",
                                     param_hint="--seq-len")
        grid_batches = int_list(batches or "1,4,16", "--batch")
        reference = (1 if 1 in grid_batches else grid_batches[0],
                     128 if 128 in usable else usable[len(usable) // 2])
        protocol = Protocol(threads=threads, precisions=chosen, batches=grid_batches,
                            seq_lens=usable, max_tokens=max_tokens or 1024,
                            reference_batch=reference[0], reference_seq_len=reference[1],
                            rounds=rounds or 1, sweeps=sweeps or DIRECT_SWEEPS,
                            calm_looks=DIRECT_CALM_LOOKS if calm_looks is None else calm_looks,
                            calm_wait=calm_wait, sentinel=sentinel)
    if common.OWN_PROCESS and device == "cpu":
        # nothing else runs in this process: every session shares one pool, and turns need
        # not wait for the last session's threads to stop spinning (Protocol.pool)
        share_one_pool(threads)
        protocol = replace(protocol, pool="process")
    if minutes is None:
        minutes = tr.DEFAULT_MINUTES if from_paths else DIRECT_MINUTES
    # the fit too: a profile stopped while fitting is fitted again by the same command
    with output_lock(out), resumable(f"what was measured is kept in {out}: run the same "
                                     "command again to resume"):
        run_profile(out, device, protocol, config, samples, seed, source, progress,
                    minutes=minutes if samples is None else None,
                    auto_precision=precisions is None, auto_rounds=rounds is None,
                    transfer=transfer,
                    int8_format=None if int8_format.lower() == "auto" else int8_format)
        if transfer:
            tr.refit(out, progress=progress)
        else:
            fit_profile(out, progress=progress)
    emit(profile_data(DeviceProfile.load(out)), as_json, _profile_text)


def profile_data(p) -> dict:
    from shaper_deploy.profiling.fingerprint import device_fingerprint, unchecked_fields
    from shaper_deploy.profiling.plots import PLOTS
    from shaper_deploy.profiling.predictor import retake_hint
    from shaper_deploy.profiling.transfer import transfer_advice

    from shaper_deploy.errors import ProfileError
    from shaper_deploy.profiling.profile import profile_int8_format

    here = device_fingerprint(p.device)  # read once: the differences and what went unchecked
    foreign = p.foreign_fields(here)
    try:
        int8 = profile_int8_format(p.header) if "int8" in p.precisions else None
    except ProfileError as exc:  # shown as it is: a plan refuses it
        int8 = {"error": str(exc)}
    retake = retake_hint(p.path, p.header, p.trust)  # a transfer's advice names it too
    return {"profile": str(p.path), **p.header.to_dict(), "int8_format": int8,
            "predictor": p.model.metrics,
            "margin": p.model.margin, "tail": p.model.tail, "trust": p.trust,
            "int8_gain": p.int8_gain(), "machine_speed": p.machine_speed(),
            "advice": (transfer_advice(p.header, p.model, p.path) if p.header.transfer
                       else retake),
            "retake": retake,
            "this_machine": {"matches": not foreign, "differences": foreign,
                             "unchecked": unchecked_fields(p.header.fingerprint, here)},
            "plots": [str(p.path / n) for n in PLOTS if (p.path / n).is_file()]}


def _machine_line(m: dict) -> str:
    if m["matches"] and m["unchecked"]:
        return (f"this machine, as far as it can tell: it predates {', '.join(m['unchecked'])}, "
                "so any CPU of this model name and ISA matches it")
    return ("this machine" if m["matches"] else
            "ANOTHER MACHINE (" + "; ".join(m["differences"]) + "): planning here refuses it "
            "unless --for-device")


def _profile_text(d: dict) -> str:
    from shaper_deploy.profiling.fingerprint import unchecked_fields

    rows = [("profile", d["profile"]), ("device", _device_line(d["fingerprint"])),
            ("measured on", _machine_line(d["this_machine"])),
            ("protocol", _protocol_line(d["protocol"])),
            ("graph", _graph_line(d["graph"]))]
    if d.get("int8_format"):
        rows.append(("int8 format", _int8_line(d)))
    for i, src in enumerate((d.get("transfer") or {}).get("sources", [])):
        diff = d["transfer"]["differences"][i]
        unchecked = unchecked_fields(src["fingerprint"], d["fingerprint"])
        same = "the same machine fields" + (f" (it predates {', '.join(unchecked)})"
                                            if unchecked else "")
        rows.append(("transferred from" if i == 0 else "", f"{src['profile']} ("
                     f"{src['fingerprint']['cpu_model']}; " + ("; ".join(diff) or same) + ")"))
    probe = d.get("probe") or {}
    if probe.get("decision"):
        rows.append(("probe", probe["decision"]))
    for source, by_shape in (("probe", probe.get("int8_speedup")),
                             ("profile", d.get("int8_gain"))):
        for name, gains in (by_shape or {}).items():
            rows.append((f"int8 gain ({source})", f"{name} shape: " + ", ".join(
                f"{k} {v:.2f}x" for k, v in gains.items())))
    from shaper_deploy.profiling.predictor import MAX_SLOW_FLOORS
    from shaper_deploy.profiling.analysis import CALM_RUN
    from shaper_deploy.profiling.profile import CALM_BAND

    summary = d.get("summary") or {}
    if summary.get("last_run"):
        rows.append(("time", f"{summary['last_run']['seconds'] / 60:.1f} min for this run"))
    if "calm_looks" in summary:
        rows.append(("calm looks", f"{summary['calm_looks']} of {summary['measurements']} "
                     "measurements: shapes and sizes looked at again because their lowest "
                     f"floor so far was timed while the reference (or the sentinel) ran over "
                     f"{CALM_BAND:g}x its fastest"
                     + (", or, in a retake, its own reference over its calm time"
                        if summary.get("retakes") else "")))
    retakes = summary.get("retakes", [])
    if retakes:
        rows.append(("retakes", f"{len(retakes)} look(s) at floors timed slow (shaperctl "
                     f"profiles retake): {sum(r['measurements'] for r in retakes)} "
                     f"measurements in {sum(r['seconds'] for r in retakes) / 60:.1f} min, "
                     f"{sum(r['waited_s'] for r in retakes) / 60:.1f} of them waiting for calm "
                     "moments"))
    if "calm_wait" in summary:
        w = summary["calm_wait"]
        rows.append(("calm wait", f"{w['seconds'] / 60:.1f} min waited; of the calm looks' "
                     f"{w['sizes']} group x size measurements, {w['checked']} were timed "
                     f"after a check of the machine, {w['calm']} of them calm; the rest once "
                     "the time asked for ran short"))
    for precision, s in summary.get("precisions", {}).items():
        n = s.get("noise_floor") or {}
        rows.append((precision, f"{s['shapes']} shapes, {s['latency_ms_range'][0]:.2f} .. "
                                f"{s['latency_ms_range'][1]:.2f} ms; noise floor "
                                + (f"{n['median_abs_rel_diff']:.1%}" if n else "n/a")))
        slow = s.get("slow_floors")
        if slow and slow["slow"]:
            held = (f"the fastest it held over {CALM_RUN} groups in a row, "
                    f"x{slow['calm_over_fastest']:.3f} its fastest group"
                    if "calm_over_fastest" in slow else "its fastest group")
            own = slow.get("yardstick") == "own reference"  # since session 50
            how = (f"whose own reference ran over {CALM_BAND:g}x its time while the machine "
                   "ran calm" if own else
                   f"timed while the machine ran over {CALM_BAND:g}x its calm speed")
            rows.append(("", f"{slow['slow']} of its {slow['points']} shape x size floors "
                             f"(the lowest of each point's looks) came from a group {how} "
                             f"(median x{slow['median_slowdown']:.2f}; "
                             + ("calm by the sentinel: " if own else "the calm speed: ")
                             + f"{held}), after the calm looks: they may "
                             "overstate its latency, which held-out shapes timed in the same "
                             "periods cannot show; a calmer hour or more --minutes lowers it"
                             f" (over {MAX_SLOW_FLOORS:.0%} of them: unreliable)"))
        m = d["predictor"][precision]["held_out"]
        rows.append(("", f"held-out R^2 {m['r2']:.4f}, MAPE {m['mape']:.2%}, "
                         f"{m['within_5pct']:.0%} within +-5% ({m['n']} shape x size points, "
                         f"{d['predictor'][precision]['held_out_shapes']} held-out shapes); "
                         f"planning margin x{d['margin'][precision]:.3f}"))
        fit = d["predictor"][precision].get("transfer")
        if fit:
            prior = fit["prior_held_out"]
            used = ("the sources as a prior (ridge " + f"{fit['ridge']:g})" if fit["fit"] ==
                    "prior" else "a direct fit (the sources' prior did not help)")
            rows.append(("", f"transfer: {used}, chosen by leave-one-shape-out MAPE ("
                             + ", ".join(f"{k} {v:.1%}" for k, v in fit["loo_mape"].items())
                             + f"); the scaled sources alone: held-out MAPE {prior['mape']:.2%}"
                             f", {prior['within_10pct']:.0%} within +-10%"))
        tail = (d.get("tail") or {}).get(precision)
        if tail:
            lv = tail["levels"]
            mixed = tail.get("precisions", [precision])
            whose = "" if len(mixed) == 1 else (
                f" (the machine's, from {' and '.join(mixed)}"
                + (f", raised to {precision}'s own where larger)" if tail.get("own") else ")"))
            if tail.get("same_machine"):
                whose += (", raised where larger to the tail of this machine's "
                          f"{', '.join(tail['same_machine'])}"
                          + (f", which prices slowdowns up to {tail['priced_slowdown']:.2f}x"
                             if tail.get("priced_slowdown") else ""))
            elif d.get("transfer"):
                whose += (", from this transfer's own minutes of the machine's time alone (no "
                          "source measured on this machine raises it): a host that slows for "
                          "minutes at a time runs over these percentiles more often than they "
                          "say; --from a direct profile of this machine raises them")
            rows.append(("", f"request latency / floor (p10 of runs){whose}: " + "; ".join(
                f"at {ms:.1f} ms " + ", ".join(f"p{l:g} x{f:.2f}" for l, f in zip(lv, row))
                for ms, row in zip(tail["median_ms"][::3], tail["factor"][::3]))))
    speed = d.get("machine_speed")
    if speed:
        def shares(within: dict[str, float]) -> str:  # machine_speed's bands, in words
            return " and ".join(f"{b}x in {v:.0%}" for b, v in within.items())

        sentinel = " (or the sentinel's, where larger)" if d["protocol"].get("sentinel") else ""
        own = speed.get("own")
        rows.append(("machine speed", "the reference graph per group against the fastest "
                     f"group{sentinel}: within {shares(speed['within'])} of the "
                     f"{speed['groups']} groups; median "
                     f"x{speed['median']:.2f}, p90 "
                     f"x{speed['p90']:.2f}, worst x{speed['max']:.2f}"
                     + (". By each group's own reference against its size's time while the "
                        "machine ran calm (the slow-floors count's yardstick; the sentinel, the "
                        "smallest size, slows most): within " + shares(own["within"])
                        + f"; median x{own['median']:.2f}, p90 x{own['p90']:.2f}, worst "
                        f"x{own['max']:.2f}" if own else "")
                     + ". The percentiles above "
                     "include the slow groups in these shares; a later measurement sees the "
                     "machine as it is then"
                     + (". A transfer's few minutes may all fall in one slow period, which "
                        "nothing timed within them can show: its floors then overstate "
                        "latency; a plan measures each candidate here before it keeps it, and "
                        "says when the machine runs faster than the profile"
                        if d.get("transfer") else "")))
    t = d["trust"]
    rows.append(("trust", "reliable" if t["reliable"] else
                 f"UNRELIABLE: {'; '.join(t['reasons'])} (planning needs --allow-unreliable)"))
    if d.get("advice"):
        rows.append(("advice", d["advice"]))
    if d["plots"]:
        rows.append(("plots", ", ".join(d["plots"])))
    return table(rows)


def _device_line(fp: dict) -> str:
    gpu = f", {fp['gpu']['name']}" if fp.get("gpu") else ""
    from shaper_deploy.profiling.fingerprint import cpu_name, field_value

    usable = field_value(fp, "usable_cores")
    cores = f"{fp['logical_cores']} cores" + (
        f" ({usable} usable: CPU affinity or quota)" if usable != fp["logical_cores"] else "")
    return (f"{fp['device']}: {cpu_name(fp)}, {cores}, "
            f"{' '.join(fp['isa']) or 'no SIMD flags read'}{gpu}; onnxruntime {fp['onnxruntime']}")


def _protocol_line(p: dict) -> str:
    from shaper_deploy.profiling.profile import CALM_BAND
    from shaper_deploy.profiling.protocol import Protocol, describe_range

    protocol = Protocol.from_dict(p)
    return (f"{'+'.join(p['precisions'])}, {p['threads']} thread"
            f"{'s' if p['threads'] != 1 else ''}; "
            f"{describe_range(protocol.grid)} "
            f"(<= {p['max_tokens']} tokens); reference batch {p['reference_batch']} x "
            f"{p['reference_seq_len']}; {p.get('sweeps', 1)} sweep(s) x {p['rounds']} rounds"
            + (f", then up to {p['calm_looks']} calm look(s) at what ran over {CALM_BAND:g}x "
               "the fastest" + (", each size once the machine runs calm while the time asked "
                                "for allows" if p.get("calm_wait") else "")
               if p.get("calm_looks") else "")
            + ("; every group also timed the sentinel ({0} reference at batch {1} x {2}: one "
               "calm speed for all)".format(p["precisions"][0], *protocol.sentinel_workload)
               if protocol.sentinel else "")
            + ("" if protocol.park_ms else
               "; turns did not wait for ONNX Runtime's threads to stop spinning (park_ms 0, "
               "as every profile before 2026-12-03), so short runs' percentiles include the "
               "spin (a transfer takes no tail from it)"))


def _int8_line(d: dict) -> str:
    """The int8 format a profile timed, and why: its probe's choice, or the ISA's default."""
    fmt = d["int8_format"]
    if "error" in fmt:
        return fmt["error"]
    chosen = (d.get("probe") or {}).get("int8_format")
    return chosen["why"] if chosen else f"{fmt['name']}: the default for the CPU's ISA"


def _graph_line(g: dict) -> str:
    return (f"{g['task']}, {'optimized' if g['optimized'] else 'unoptimized'}, "
            f"{g['activation']}, opset {g['opset']}, onnxruntime {g['onnxruntime']}")


@click.command("predict")
@click.option("--profile", "profile_path", type=click.Path(path_type=Path), default=None,
              help="A finished profile folder. Default: of the profiles 'profiles list' marks "
                   "for this machine in ./profiles, the one whose design space holds the shape.")
@click.option("--device", type=click.Choice(sorted(DEVICES)), default=None,
              help="The device kind predicted for (default: the profile's; without --profile, "
                   "cpu).")
@click.option("--shape", "shape_text", required=True,
              help="Widths per layer: '360,240,...', '360x12', '240x4,480x8' or a JSON file.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="Default: every precision the profile has.")
@click.option("--batch", type=click.IntRange(1), default=None,
              help="Rows per inference (default: the profile's reference batch).")
@click.option("--seq-len", type=click.IntRange(1), default=None,
              help="Tokens per row (default: the profile's reference length).")
@percentile_option("Percentile of request latency (50: the median).")
@click.option("--for-device", is_flag=True,
              help="Accept a profile of another machine: predictions for that machine.")
@click.option("--allow-unreliable", is_flag=True, help="Accept a profile marked unreliable.")
@click.option("--supernet", "supernet_path", type=click.Path(path_type=Path), default=None,
              help="Predict the graph export writes from this super network (an identity "
                   "super network's exact identity projections dropped, as export --latency "
                   "prices them). Default: every projection computed.")
@widths_option
@json_option
def predict(profile_path: Path | None, device: str | None, shape_text: str, precision: str | None,
            batch: int | None, seq_len: int | None, percentile: float, for_device: bool,
            allow_unreliable: bool, supernet_path: Path | None, supershaper_widths,
            as_json: bool) -> None:
    """Predicted latency of a shape for a workload on a profiled device.

    Sizes between the profile's grid points are interpolated; sizes outside it are refused,
    as is a profile of another machine (unless --for-device) or an unreliable one (unless
    --allow-unreliable).

    \b
    Examples:
      shaperctl predict --shape 384x6 --batch 2 --seq-len 96
      shaperctl predict --profile profiles/x86_64-2core-avx512-minilm --shape 384x6 \\
        --precision int8 --for-device
    """
    from shaper_deploy.profiling.predictor import DeviceProfile
    from shaper_deploy.shape import parse_shape

    if profile_path is None:
        profile_path = profile_holding(shape_text, device or "cpu")
    p = DeviceProfile.load(profile_path)
    differences = p.check_device(device or p.device, for_device)
    p.check_trust(allow_unreliable)
    shape = parse_shape(shape_text, p.space)
    gone = None
    if supernet_path is not None:
        gone = [exports_drop(supernet_path, supershaper_widths, p, profile_path)(shape)]
    b = batch or p.reference_workload[0]
    s = seq_len or p.reference_workload[1]
    rows = []
    for prec in ([precision] if precision else p.precisions):
        ms = float(p.predict([shape], prec, b, s, percentile, gone)[0])
        rows.append({"precision": prec, "predicted_ms": ms,
                     "floor_ms": float(p.predict([shape], prec, b, s, None, gone)[0]),
                     "upper_ms": ms * p.margin(prec), "margin": p.margin(prec)})
    speed = p.machine_speed()
    data = {"shape": list(shape.widths), "params": shape.params(), "batch": b, "seq_len": s,
            "percentile": percentile, "predictions": rows, "profile": str(profile_path),
            "trust": p.trust, "machine_speed": speed,
            "this_machine": {"matches": not differences, "differences": differences},
            "supernet": None if supernet_path is None else str(supernet_path),
            "dropped_projections": len(gone[0]) if gone else 0}
    band, within = next(iter(speed["within"].items())) if speed else ("", 1.0)  # the first band
    seconds = ((p.header.summary or {}).get("last_run") or {}).get("seconds")
    minutes = f"{seconds / 60:.1f} min" if seconds else "time"
    emit(data, as_json, lambda d: table(
        [("shape", str(shape)), ("params", millions(d["params"])),
         ("workload", f"batch {b} x {s} tokens"), ("profile", str(profile_path)),
         ("graph", "every projection computed" if supernet_path is None else
          f"as export writes it from {supernet_path}: "
          + (f"{d['dropped_projections']} exact identity projection(s) dropped"
             if d["dropped_projections"] else "every projection computed"))]
        + ([("machine", "FOR ANOTHER MACHINE (" + "; ".join(differences) + ")")]
           if differences else [])
        + [(r["precision"], f"p{percentile:g} {r['predicted_ms']:.2f} ms predicted (floor "
                            f"{r['floor_ms']:.2f}), {r['upper_ms']:.2f} ms with "
                            f"the planning margin (x{r['margin']:.3f})") for r in rows]
        + ([("host speed", f"over the profile's {minutes} the machine ran over {band}x slower "
                           f"than its fastest in {1 - within:.0%} of its groups (worst "
                           f"x{speed['max']:.2f})"
                           + (f", over {band}x its calm time by each size's own reference in "
                              f"{1 - speed['own']['within'][band]:.0%} (worst "
                              f"x{speed['own']['max']:.2f})" if speed.get("own") else "")
                           + f"; the p{percentile:g}s include that share, and "
                           "a host that slows for minutes at a time shows it only to a profile "
                           "long enough (profiles show: machine speed)")]
           if speed else [])
        + ([] if p.trust["reliable"] else
           [("WARNING", "unreliable profile: " + "; ".join(p.trust["reasons"]))])))


@click.group(cls=ShaperGroup)
def profiles() -> None:
    """List, inspect and retake latency profiles."""


@profiles.command("list")
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@json_option
def profiles_list(roots: tuple[Path, ...], as_json: bool) -> None:
    """Profiles under ROOTS (default: ./profiles), one row each: design space, device, CPU,
    day made, held-out MAPE, trust, and whether it matches this machine (the others name the
    fields that differ; a match of a profile that predates cpu_id says "(no cpu_id)": any CPU
    of its model name and ISA matches it). Of the reliable ones that match, one per design
    space is marked USE HERE, the one commands take without --profile: the one whose
    fingerprint names the CPU model (cpu_id), then the newest. A profile that cannot be read
    is listed with the reason.

    \b
    Example:
      shaperctl profiles list profiles
    """
    from shaper_deploy.errors import ShaperError
    from shaper_deploy.profiling.fingerprint import (cpu_name, device_fingerprint, differing_fields,
                                                     fingerprint_differences, unchecked_fields)
    from shaper_deploy.profiling.catalog import PROFILES_ROOT, chosen_here, profiles_in
    from shaper_deploy.profiling.profile import DIRECT_MINUTES

    roots = roots or (PROFILES_ROOT,)
    here = device_fingerprint("cpu")
    machines: dict[str, dict | ShaperError] = {"cpu": here}  # this machine, per device kind
    found, readable = [], []
    for root in roots:
        for folder, p in profiles_in(root):
            if isinstance(p, ShaperError):
                found.append({"path": str(folder), "error": str(p)})
                continue
            readable.append(p)
            fp = p.header.fingerprint
            if p.device not in machines:
                try:
                    machines[p.device] = device_fingerprint(p.device)
                except ShaperError as exc:  # e.g. a cuda profile on a machine without a GPU
                    machines[p.device] = exc
            mine = machines[p.device]
            if isinstance(mine, ShaperError):
                diffs = fields = [str(mine)]
                unchecked = []
            else:
                diffs, fields = fingerprint_differences(fp, mine), differing_fields(fp, mine)
                unchecked = unchecked_fields(fp, mine)
            found.append({"path": str(p.path), "device": fp["device"],
                          "cpu_model": fp["cpu_model"], "cpu_id": fp.get("cpu_id"),
                          "isa": fp.get("isa"),
                          "precisions": p.precisions, "design_space": p.space.to_dict(),
                          "protocol": p.header.protocol.to_dict(), "trust": p.trust,
                          "mape": {k: p.model.metrics[k]["held_out"]["mape"]
                                   for k in p.precisions},
                          "matches_this_machine": not diffs, "differences": diffs,
                          "differing_fields": fields, "unchecked_fields": unchecked,
                          "created": p.header.created})
    chosen = {str(p.path) for device in {p.device for p in readable}
              for p in chosen_here(readable, device).values()}  # per device and design space
    for p in found:
        p["use_here"] = p["path"] in chosen

    def here_cell(p: dict) -> str:
        if p["matches_this_machine"]:
            return (("USE HERE" if p["use_here"] else "this machine")
                    + (f" (no {', '.join(p['unchecked_fields'])})" if p["unchecked_fields"]
                       else ""))
        return "another: " + ", ".join(p["differing_fields"])

    def text(d: dict) -> str:
        listed = [p for p in d["profiles"] if "error" not in p]
        rows = [("PROFILE", "SPACE", "DEVICE", "CPU", "MADE", "HELD-OUT MAPE", "TRUST", "HERE")]
        rows += [(p["path"], f"{p['design_space']['num_layers']} layers, "
                             f"{p['design_space']['widths'][0]}-{p['design_space']['widths'][-1]}",
                  p["device"], cpu_name(p), p["created"][:10],
                  ", ".join(f"{k} {v:.1%}" for k, v in p["mape"].items()),
                  "reliable" if p["trust"]["reliable"] else "UNRELIABLE", here_cell(p))
                 for p in listed]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows] \
            if listed else []
        lines += [f"{p['path']}  UNREADABLE: {p['error']}" for p in d["profiles"]
                  if "error" in p]
        if d["profiles"]:
            lines += ["", f"this machine: {_device_line(here)}"]
        if any(p.get("use_here") for p in listed):
            lines.append(
                "USE HERE: per design space and device, the reliable profile of this machine "
                "that export --latency, search --latency, predict, verify and bench take "
                "without --profile (the one whose fingerprint names the CPU model, then the "
                "newest). Hosts of one fingerprint can run apart: make this host's own from it "
                "in a few minutes, shaperctl profile --device cpu --from PROFILE --supernet "
                "SUPERNET --out DIR")
        unchecked = sorted({k for p in listed if p["matches_this_machine"]
                            for k in p["unchecked_fields"]})
        if unchecked:
            lines.append(f"(no {', '.join(unchecked)}): the profile predates "
                         f"{', '.join(unchecked)}, so it matched on the CPU's model name and "
                         "ISA alone; another CPU sharing them (an AMD EPYC Zen 2 and a Zen 3, "
                         "say) matches it too")
        if any(not p["matches_this_machine"] for p in listed):
            lines.append("another: the fingerprint fields that differ from this machine's "
                         "(shaperctl profiles show PROFILE gives both values; --json: "
                         "differences)")
        if d["profiles"] and not any(p.get("matches_this_machine") for p in d["profiles"]):
            folder = " ".join(f"--from {r}" for r in roots)
            direct = ("shaperctl profile --device cpu --supernet SUPERNET --out DIR, within "
                      f"{DIRECT_MINUTES:g} minutes by default")
            lines.append(
                "no profile here was measured on this machine: make "
                + (f"one, a transfer from those above in a few minutes (shaperctl profile "
                   f"--device cpu {folder} --supernet SUPERNET --out DIR: every profile there "
                   "of the super network's design space as the prior) or a direct one "
                   "(without --from)" if listed else
                   f"a direct one ({direct}): none above can be read, so none can be the "
                   "prior of a transfer"))
        return "\n".join(lines) or (
            f"no profiles under {' '.join(str(r) for r in roots)}: "
            f"make this machine's with shaperctl profile --device cpu --supernet SUPERNET "
            f"--out DIR (within {DIRECT_MINUTES:g} minutes by default)")

    emit({"this_machine": here, "profiles": found}, as_json, text)


@profiles.command("show")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
def profiles_show(path: Path, as_json: bool) -> None:
    """A profile's device, protocol, graph, noise floor, predictor error, percentiles of
    request latency, how fast the machine ran while it was measured, and trust.

    \b
    Example:
      shaperctl profiles show profiles/x86_64-2core-avx512-minilm --json
    """
    from shaper_deploy.profiling.predictor import DeviceProfile

    emit(profile_data(DeviceProfile.load(path)), as_json, _profile_text)


@profiles.command("retake")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--minutes", default=None, type=click.FloatRange(0.5, 1440),
              help="Time for the retake, waits included [default: 3x its first look's "
                   "measuring as priced, at least 2 minutes].")
@json_option
def profiles_retake(path: Path, minutes: float | None, as_json: bool) -> None:
    """Time again, each once the machine runs calm, what a profile timed while this machine
    ran slow; fit the profile again.

    On a shared host a profile's floors can fall in a slow stretch: the profile then says
    UNRELIABLE on floors timed slow (profiles show: trust), or misses its held-out error or
    noise floor because of them. The slow-floors count says which shape x size points: those
    whose lowest floor came from a group whose own reference graph ran over 1.1x its calm
    time. A retake measures only those (and their repeats) as one more calm look, waiting
    before each size until that reference runs within 1.1x, then looks again at what is still
    slow (up to 3 looks) while --minutes allows; it fits the profile and judges it as any
    profile, each figure before and after. Only on the machine the profile describes; while
    it runs the profile is refused by every command, and an interrupted retake resumes when
    run again.

    \b
    Examples:
      shaperctl profiles retake profiles/my-machine
      shaperctl profiles retake profiles/my-vm-minilm --minutes 10 --json
    """
    from shaper_deploy.errors import ProfileError
    from shaper_deploy.io import output_lock
    from shaper_deploy.profiling.folder import read_header
    from shaper_deploy.profiling.predictor import DeviceProfile, fit_profile
    from shaper_deploy.profiling.profile import retake_profile
    from shaper_deploy.profiling.transfer import refit
    from shaper_deploy.runtime import share_one_pool

    header = read_header(path)
    if (common.OWN_PROCESS and header.protocol.pool == "process"
            and header.fingerprint["device"] == "cpu"):
        share_one_pool(header.protocol.threads)  # measured as shaperctl profile measured it
    with output_lock(path), resumable(f"what was retaken is kept in {path}: run the same "
                                      "command again to resume"):
        try:
            before = _retake_figures(DeviceProfile.load(path))
        except ProfileError:  # a retake stopped before it was fitted
            before = None
        report = retake_profile(path, minutes, progress)
        if report["points"] or report["fit_only"] or before is None:
            (refit if read_header(path).transfer else fit_profile)(path, progress=progress)
    after = _retake_figures(DeviceProfile.load(path))
    emit({"profile": str(path), "retake": report, "before": before, "after": after}, as_json,
         _retake_text)


def _retake_figures(p) -> dict:
    """What a retake changes in a profile: per precision its floors timed slow, held-out MAPE
    and noise floor; its trust."""
    from shaper_deploy.profiling.predictor import noise_of, slow_floors_of

    return {"trust": p.trust, "precisions": {
        q: {"slow_floors": slow_floors_of(p.header, q),
            "mape": p.model.metrics[q]["held_out"]["mape"], "noise_floor": noise_of(p.header, q)}
        for q in p.precisions}}


def _retake_text(d: dict) -> str:
    r, before, after = d["retake"], d["before"], d["after"]
    if not r["points"] and not r["fit_only"] and before is not None:
        return table([("profile", d["profile"]), ("retaken", "nothing: no floor was timed "
                                                  "while the machine ran slow")])

    def each(figure) -> str:  # before -> after, per precision
        return "; ".join(f"{q} " + (f"{figure(before['precisions'][q])} -> " if before else "")
                         + figure(v) for q, v in after["precisions"].items())

    def slow(v) -> str:
        s = v["slow_floors"]
        return f"{s['slow']}/{s['points']}" if s else "not counted"

    def trust(t) -> str:
        return "reliable" if t["reliable"] else "UNRELIABLE: " + "; ".join(t["reasons"])

    # of the looks' group x size measurements, how many a check found the machine calm for
    sizes, calm = (sum(x["timed"][k] for x in r["looks"]) for k in ("sizes", "calm"))

    return table([
        ("profile", d["profile"]),
        ("retaken", (", ".join(f"{q} {n}" for q, n in r["points"].items()) or "nothing new")
         + f" shape x size measurement(s) (priced {r['priced_s'] / 60:.1f} min), looked at "
         + (f"{len(r['looks'])} times, each time what was still slow: " if len(r["looks"]) > 1
            else "once: ") + f"{r['seconds'] / 60:.1f} min within {r['minutes']:.1f}, "
         f"{r['waited_s'] / 60:.1f} of them waiting for calm moments"),
        *([("timed calm", _retake_calm_line(sizes, calm))] if r["looks"] else []),
        ("floors timed slow", each(slow)),
        ("held-out MAPE", each(lambda v: f"{v['mape']:.2%}")),
        ("noise floor", each(lambda v: "none" if v["noise_floor"] is None
                             else f"{v['noise_floor']:.1%}")),
        ("machine now", _retake_speed_line(r["reference_now"], calm)),
        ("trust", (f"{trust(before['trust'])} -> " if before else "") + trust(after["trust"]))])


def _retake_calm_line(sizes: int, calm: int) -> str:
    """How many (``calm``) of a retake's ``sizes`` group x size measurements a check found the
    machine calm for (``profile.wait_counts``, summed over the looks)."""
    return (f"{calm} of {sizes} group x size measurement(s), after a check of the machine"
            + ("" if calm == sizes else
               f"; the other {sizes - calm} were timed with the machine slow or once the time "
               "ran short, so their floors may still count slow: retake again in a calmer "
               "moment, or with more --minutes"))


def _retake_speed_line(speed: dict | None, calm: int = 0) -> str:
    """``calm``: how many of the retake's measurements a check of the machine found calm (one
    round of the size's reference within ``CALM_BAND`` of its calm time). Where it found
    some and the reference still ran over ``CALM_BAND`` in the measurements, the line says
    both (session 58, Intel family 6 model 207: 17 of 19 checked calm, the reference at
    x1.19): on a noisy host one calm round often does not last into the measurement after
    it. Session 59 on the same class (``benchmarks/calm_check.py``, the machine slow): of the
    measurements right after a calm check 58% ran over 1.1x, after a slow one 85%."""
    from shaper_deploy.profiling.profile import CALM_BAND, RETAKE_MOVED

    now = (speed or {}).get("median")  # None: nothing retaken in this run (a fit only)
    if now is None:
        return "not compared (no size of the retake was timed calm in the profile)"
    line = (f"the reference at x{now:.2f} its calm time in the profile (the median of "
            f"{speed['sizes']} of the retake's {speed['of']} group x size measurements, those "
            "at sizes the profile timed calm)")
    if now > CALM_BAND and calm:
        return (line + f": over {CALM_BAND:g}x, though its checks found the machine calm "
                f"before {calm} of the {speed['of']}: a check is one round of the reference, "
                "and on a noisy host a calm round often does not last into the measurement "
                "after it, so its floors may still be of a slow state; retake it again later")
    if now > CALM_BAND:
        return (line + f": over {CALM_BAND:g}x, the retake found no calm moment and its floors "
                "are of a slow state; retake it again later")
    if now < RETAKE_MOVED:
        return (line + f": under {RETAKE_MOVED:g}x, the machine runs faster than in the "
                "profile's calm moments, so its calm state has moved since and the retaken "
                "floors are of another one; remake the profile (shaperctl profile ... --out NEW)")
    return line
