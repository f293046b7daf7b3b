"""Making a profile: measuring a device's latency over a design space and a workload grid
into a profile folder (``folder.py``), and timing a model with the profile's protocol.

Measurements are appended and flushed as soon as a group of shapes is timed at one workload.
Running the same command again resumes exactly where it stopped; a folder made on another
device, with another protocol, graph or design space, is refused. Nothing here imports torch.
"""

from __future__ import annotations

import datetime
import math
import statistics
import tempfile
import time
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import ProfileError
from ..io import sha256_file
from ..quantize import int8_record, quantize_int8
from ..runtime import (check_threads, int8_format, int8_format_named, int8_formats,
                       make_session, precision_problem)
from ..shape import Shape, held_out_mask, identity_projections
from ..supernet.config import SuperConfig
from ..templates import sample_shapes, template_shapes
from .analysis import (FLOOR_LEVEL, SPEED_BANDS, calm_bases, fastest_reference,
                       fastest_sentinel, group_slowdowns, lowest_floors, noise_floor,
                       own_slowdowns, point_key, reference_spread, slow_floors)
from .fingerprint import device_fingerprint, field_value, fingerprint_differences
from .folder import (HEADER, MEASUREMENTS, META_FILE, CalmWait, ProfileHeader, Transfer,
                     append_measurements, read_header, read_measurements, shape_from_key,
                     shape_key, verify_file, workload_key, write_header)
from .graph import GRAPH_ACTIVATIONS, OPSET, RandomWeightFile, build_deploy_graph
from .protocol import (Protocol, Workload, describe_range, inputs_for, measure_interleaved,
                       park_threads, process_pool)

REFERENCE = "__reference__"
SENTINEL = "__sentinel__"  # the first precision's reference at one size (Protocol.sentinel)


def held_out_keys(shapes: Iterable[Shape], held_out: float = 0.25) -> set[str]:
    """The shapes a profile holds out from fitting (and also measures at the check sizes):
    every 4th by parameter count, ties broken by key."""
    by_key = sorted(shapes, key=lambda s: shape_key(s.widths))
    mask = held_out_mask([s.params() for s in by_key], held_out)
    return {shape_key(s.widths) for s, t in zip(by_key, mask) if t}


IDENTITY_VARIANTS = ("half the shapes (by a hash of their widths, the largest always) are "
                     "timed without the projections an identity super network drops")
MIN_SHAPES = 12  # a direct profile fits on 3 of 4 of at least this many shapes
TRANSFER_MIN_SHAPES = 8  # ... a transfer (6 fitted, 2 held out), with a prior from others
# A transfer looks at each shape in 2 sweeps of 1 round, not 1 sweep of 2 rounds (the same
# turns): rounds are seconds apart, sweeps a minute or more, and a shared host's speed moves
# for minutes. The Zen 5 MiniLM profile's first sweeps refitted as transfers, held-out MAPE
# fp32 / int8 on every other shape, from the Intel profile [from the Zen 4 one]: 16 shapes x
# 1 look (1.8 min) 6.4% / 6.6% [6.4% / 6.8%], 8 shapes x 2 looks (2.0 min) 5.9% / 5.8%
# [5.3% / 5.0%] (benchmarks/transfer.py offline).
TRANSFER_SWEEPS = 2
MIN_INT8_GAIN = 1.10  # int8 is profiled only where it is at least this much faster somewhere
# Where the ISA leaves a choice of int8 format (runtime.int8_formats), another format is used
# only if the probe times it at least this much faster than the default at the largest shape
# (the geometric mean over the grid): the default (U8U8 on x86 without VNNI) was the more
# faithful on the real MiniLM (mean cosine 0.9947 against U8S8 reduce_range's 0.9934, AMD
# Zen 2), and 10% is beyond the probe's noise and more than a planning margin.
MIN_FORMAT_GAIN = 1.10
DIRECT_CALM_LOOKS = 2  # a direct profile's calm looks by default (Protocol.calm_looks)
DIRECT_SWEEPS = 3  # ... and its sweeps (Protocol.sweeps)
DIRECT_MINUTES = 12.0  # a direct profile's time by default (--minutes; a transfer's: transfer.py)
# A transfer's (since session 23): from the Intel MiniLM profile to the AMD Zen 5 class, 5
# pairs of 2-minute transfers run in turn (1.70-1.79 min measured either way), scored on the
# shipped Zen 5 calm-looks profile's shapes, int8 MAPE 4.0-7.9% with 1 calm look against
# 5.8-32.1% without (better in all 5 pairs), fp32 4.1-17.1% against 4.1-12.5% (medians 5.9%
# and 9.6%); 4 of 5 met issue 20's targets on their own held-out shapes against 3 of 5
# (benchmarks/results/transfer_live_amd_zen5_minilm_calm_looks*.json).
TRANSFER_CALM_LOOKS = 1
# The share of a profile's measurements a calm look is priced at: after 3 sweeps, 20-36% of
# shape x size items on the AMD Zen 5 class had their lowest floor from a group over 1.1x the
# fastest reference, 35-55% on Zen 2 and Zen 4 (the shipped profiles).
CALM_SHARE = 0.3
# The share of a direct profile's time (--minutes, after the probe) kept out of its sizing
# for the calm looks' waits (Protocol.calm_wait). Beside an emulated noisy neighbour on the
# Intel class (benchmarks/noisy_neighbour.py, session 29), the profile whose sweeps ended with
# 1.8 of its 12 minutes left waited them and was reliable (64 of 64 look groups calm); three
# whose probe, timed in a calm first minute, priced 24-28 shapes at 11.1-11.5 minutes ran
# 12.5-16 minutes without a look able to wait and were UNRELIABLE. A slow period there and
# on the AMD Zen 2 VM lasts 1-4 minutes; a quarter of 12 minutes covers one. With it, beside
# the same three schedules (session 30): 2 of 3 reliable in 12.0-12.2 minutes, the looks
# waiting 2.5-4.1 of them, the points still slow after the looks 10-14% (6-29% without), and
# 1 of 2 beside two new schedules; on the quiet host 16-20 shapes instead of 24-28, done in
# 6.3-7.7 minutes, 2 of 3 reliable (benchmarks/data/intel-minilm-*-s30*).
CALM_RESERVE = 0.25


# A task whose graph a profile of another task's graph predicts: a classifier is the
# feature-extraction graph with its last output bottleneck folded into the head and mean
# pooling plus one (D x labels) matrix after it; measured on the real MiniLM in
# benchmarks/classifier.py (docs/benchmarks.md), and every plan measures the real export.
TIMED_AS = {"text-classification": "feature-extraction"}
# Fields of a graph record that say how it was timed, not what was timed (never compared).
TIMING_FIELDS = ("onnxruntime", "identity_projections")
# What profiles made before a field was recorded timed (BERT, int8 without reduce_range).
GRAPH_DEFAULTS = {"family": "bert", "int8": {"reduce_range": False}}


def graph_record(config: SuperConfig, isa, task: str = "feature-extraction",
                 optimized: bool = True, opset: int = OPSET, int8: dict | None = None
                 ) -> dict[str, Any]:
    """What graph a profile times, and (with the export's options) what an export writes: the
    planner compares the two records whole, so a profile of another family, activation,
    pooler, opset or int8 format (``int8``, by default the ISA's: runtime.int8_formats) is
    refused."""
    import onnxruntime as ort

    return {"task": task, "optimized": optimized, "family": config.family.name,
            "activation": config.hidden_act, "pooler": config.pooler, "opset": opset,
            "onnxruntime": ort.__version__, "int8": int8_record(int8 or int8_format(isa)),
            "identity_projections": IDENTITY_VARIANTS}


def graph_differences(recorded: dict[str, Any], wanted: dict[str, Any], int8: bool
                      ) -> list[str]:
    """Where a profile's graph record differs from an export's (int8 only if profiled)."""
    out = []
    for key, value in wanted.items():
        if key in TIMING_FIELDS or (key == "int8" and not int8):
            continue
        default = GRAPH_DEFAULTS.get(key)
        got = recorded.get(key, default if not isinstance(default, dict) else None)
        if isinstance(default, dict):
            got = {**default, **(recorded.get(key) or {})}
        if key == "task":
            value = TIMED_AS.get(value, value)
        if got != value:
            out.append(f"{key} {got!r} (profile) vs {value!r} (export)")
    return out


def dropped_for(shape: Shape, header: "ProfileHeader") -> list[str]:
    """The projections left out of ``shape``'s profiling graph. Profiles time half their
    shapes as an identity super network exports them (no identity projections) and half
    with every projection, so the latency model learns what a projection costs and predicts
    both (profiles made before this time every projection)."""
    if header.graph.get("identity_projections") != IDENTITY_VARIANTS:
        return []
    key = shape_key(shape.widths)
    if shape == shape.space.largest or zlib.crc32(key.encode()) % 2:
        return identity_projections(shape)
    return []


def profile_int8_format(header: "ProfileHeader") -> dict:
    """The int8 format a profile times (its graph record: the ISA's default, or the one its
    probe chose or --int8-format named), as runtime.int8_formats gives it, with why."""
    record = {**GRAPH_DEFAULTS["int8"], **(header.graph.get("int8") or {})}
    chosen = (header.probe or {}).get("int8_format") or {}
    why = {f["name"]: f["why"] for f in int8_formats(header.fingerprint["isa"])}
    try:
        fmt = int8_format_named(record, "")
    except ValueError as exc:
        raise ProfileError(f"the profile's int8 graphs: {exc}") from None
    return {**fmt, "why": chosen.get("why") or why.get(fmt["name"], "as the profile records")}


def new_header(device: str, protocol: Protocol, config: SuperConfig, samples: int, seed: int,
               source: dict[str, Any]) -> ProfileHeader:
    templates = template_shapes(config.space)
    fingerprint = device_fingerprint(device)
    return ProfileHeader(
        fingerprint=fingerprint, protocol=protocol, config=config,
        graph=graph_record(config, fingerprint["isa"]),
        sampling={"samples": samples, "seed": seed,
                  "method": "stratified by parameter count, plus smallest, largest and the "
                            "paper's template families; every 4th by parameters held out"},
        templates={k: list(v.widths) for k, v in templates.items()},
        reference_shape=list(templates["rectangle"].widths), source=source,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def _check_resumable(existing: ProfileHeader, plan: ProfileHeader, path: Path,
                     sized: bool, forced: bool = False) -> None:
    """The same device, model, graph and grid; the shape count and rounds the first run chose
    from its time budget (and int8, if its probe dropped it) stay as they were, and so do its
    sweeps and calm looks and whether they wait (a profile begun before a default changed
    resumes as it began)."""
    differences = fingerprint_differences(existing.fingerprint, plan.fingerprint)
    free = {"protocol": ("precisions", "rounds", "sweeps", "calm_looks", "retakes",
                         "calm_wait", "sentinel", "long_warmup"),
            "sampling": ("samples", "method") if sized else ("method",)}
    for key in ("protocol", "config", "sampling", "graph"):
        old, new = existing.to_dict()[key], plan.to_dict()[key]
        if key == "graph":  # older profiles: no identity variants, int8 without reduce_range
            old = {**old, "int8": {"reduce_range": False, **(old.get("int8") or {})}}
            new = {k: v for k, v in new.items() if k in old}
            if (existing.probe or {}).get("int8_format") and not forced:  # as its probe chose
                new["int8"] = old["int8"]
        differences += [f"{key} {k}: {old.get(k)!r} vs {new.get(k)!r}"
                        for k in sorted(set(old) | set(new))
                        if old.get(k) != new.get(k) and k not in free.get(key, ())]

    def sources(h: ProfileHeader, field: str) -> list[str]:
        return [x[field] for x in (h.transfer or {}).get("sources", [])]

    if sources(existing, "predictor_sha256") != sources(plan, "predictor_sha256"):
        differences.append(f"transfer sources {sources(existing, 'profile') or 'none'} vs "
                           f"{sources(plan, 'profile') or 'none'}")
    extra = set(existing.protocol.precisions) - set(plan.protocol.precisions)
    if extra:
        differences.append(f"precisions {sorted(extra)} were measured but not asked for now")
    if differences:
        raise ProfileError(f"profile {path} was made on another device or with other settings "
                           f"and cannot be mixed with this run ({'; '.join(differences[:4])}); "
                           "choose a new --out folder")


class GraphSessions:
    """ONNX Runtime sessions of random-weight deployment graphs, built without tracing.

    An fp32 graph is a few kilobytes of nodes over one file of random weights (0.03 s to
    build for MiniLM); quantizing it is most of an int8 build (0.7-2.2 s per MiniLM shape on
    the AMD EPYC Zen 5 class, 16-24 MB on disk). So the int8 graphs are kept in the work
    folder, up to ``KEEP_BYTES``, and a later sweep opens them again instead of quantizing
    the same graph anew."""

    KEEP_BYTES = 2_000_000_000

    def __init__(self, work: Path, config: SuperConfig, device: str, threads: int,
                 int8: dict):
        if config.hidden_act not in GRAPH_ACTIVATIONS:
            raise ProfileError(f"cannot profile activation {config.hidden_act!r}; supported: "
                               f"{', '.join(GRAPH_ACTIVATIONS)}")
        self.work, self.config, self.device, self.threads = work, config, device, threads
        self.random = RandomWeightFile(work)
        self.int8 = int8  # the format (runtime.int8_formats) int8 graphs are made in
        self.quantized: dict[tuple, Path] = {}
        self.kept_bytes = 0

    def build(self, shape: Shape, precision: str, dropped: Iterable[str] = ()):
        """An ONNX Runtime session of ``shape``'s graph at ``precision`` (int8 in the
        device's format), without the projections ``dropped`` names."""
        import onnx

        key = (tuple(shape.widths), tuple(sorted(dropped)))
        if precision == "int8" and key in self.quantized:
            return make_session(self.quantized[key], self.device, threads=self.threads)
        path = self.work / "graph.onnx"
        onnx.save(build_deploy_graph(self.config, shape, random=self.random,
                                     dropped=list(dropped)), str(path))
        if precision == "int8":
            keep = self.kept_bytes < self.KEEP_BYTES
            quantized = self.work / (f"int8-{len(self.quantized)}.onnx" if keep
                                     else "graph_int8.onnx")
            quantize_int8(path, quantized, self.int8)
            if keep:
                self.quantized[key] = quantized
                self.kept_bytes += quantized.stat().st_size
            path = quantized
        return make_session(path, self.device, threads=self.threads)


def runner(session, feeds):
    """One run of ``session`` on ``feeds``, as a call. Nothing is run here: every turn warms
    up before it is timed (``measure_interleaved``), and a run made here, before the group's
    turns, had only cost time (until session 40 one such run per session and size: 718 of
    them, 31 s of a 164 s MiniLM transfer on the AMD EPYC Zen 4 class)."""
    names = [o.name for o in session.get_outputs()][:1]
    return lambda: session.run(names, feeds)


def run_profile(out: str | Path, device: str = "cpu", protocol: Protocol = Protocol(),
                config: SuperConfig = SuperConfig(), samples: int | None = 32, seed: int = 0,
                source: dict[str, Any] | None = None,
                progress: Callable[[str], None] | None = None,
                minutes: float | None = None, auto_precision: bool = False,
                auto_rounds: bool = True, transfer: Transfer | None = None,
                int8_format: str | None = None) -> ProfileHeader:
    """Measure (or finish measuring) a profile in ``out``; its updated header.

    ``samples=None`` sizes the profile to ``minutes`` from a probe of the device's speed;
    ``auto_precision`` lets the probe drop int8 where it buys less than ``MIN_INT8_GAIN``
    at every grid size. Both are decided once, by the first run, and kept on resume.
    ``transfer`` (``transfer.transfer_record``) makes it a transfer: fewer shapes, fitted
    with the sources as the prior (``transfer.refit``). ``int8_format`` names the int8 format
    to time (runtime.int8_formats); None lets the probe choose.
    """
    note = progress or (lambda message: None)
    out = Path(out)
    least = TRANSFER_MIN_SHAPES if transfer else MIN_SHAPES
    protocol = _checked_request(device, protocol, config, samples, minutes, least)
    plan = new_header(device, protocol, config, samples or least, seed, source or {})
    forced = _asked_int8_format(plan, int8_format)
    if transfer:  # few shapes: spread over the parameter range, not 5 templates at one size
        plan.transfer, plan.templates = transfer, {}
        plan.sampling["method"] = ("stratified by parameter count, plus smallest and "
                                   "largest; every 4th by parameters held out (a transfer)")
    started = time.perf_counter()
    if (out / HEADER).exists():
        header = read_header(out)
        if MEASUREMENTS in header.files:  # finished once: what is there is what was signed
            verify_file(out, header, MEASUREMENTS)
        if header.status == "measured" and transfer:
            take_refitted_sources(header, transfer, note)
        _check_resumable(header, plan, out, sized=samples is None, forced=bool(forced))
    else:
        header = _start(out, plan, device, samples, minutes, auto_precision, auto_rounds,
                        note, forced)
    measured = _Measuring(out, header, device, minutes, started, note).run()
    records = read_measurements(out)
    header.status = "measured"
    previous = (header.summary or {}).get("last_run")
    header.summary = _summary(records, header.protocol, time.perf_counter() - started,
                              measured)
    if not measured and previous:  # resumed with nothing left to measure: the run that measured
        header.summary["last_run"] = previous
    header.files[MEASUREMENTS] = sha256_file(out / MEASUREMENTS)
    write_header(out, header)
    return header


# A retake's default time: its first look's measuring as priced, and this many times more to
# wait for calm moments and to look again at what is still slow
RETAKE_WAIT = 2.0
RETAKE_LEAST_MINUTES = 2.0  # ... and at least this
RETAKE_LOOKS = 3  # looks a retake takes at most: the first, then at what is still slow
# A retake whose reference ran under this x the profile's calm time (retake_speed): the
# machine's calm state has moved since the profile, and the retaken floors are of another one
RETAKE_MOVED = 0.95


def retake_profile(out: str | Path, minutes: float | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time again, each once the machine runs calm, what a finished profile timed while it ran
    slow (the slow-floors count: ``analysis.slow_floors``, each point's lowest floor against
    its own size's reference), as calm looks that are retakes (``Protocol.retakes``): one,
    then up to ``RETAKE_LOOKS`` in all at what is still slow while ``minutes`` allows (None:
    the first look's price
    and ``RETAKE_WAIT`` times it, at least ``RETAKE_LEAST_MINUTES``). The caller fits the
    profile again. An interrupted retake resumes exactly when run again.

    What was retaken: the first look's measurements per precision (``points``; none when no
    floor was timed slow, the profile then untouched), its price and the window
    (``priced_s``, ``minutes``), each look's measurements, time, wait, speed and how many of its
    group x size measurements were timed calm (``looks``; ``timed``: ``wait_counts``),
    the time spent and waited in all (``seconds``, ``waited_s``), how fast the machine ran in
    them against the profile's calm time (``reference_now``, ``retake_speed``), each
    precision's slow floors before (``slow_before``; None when resumed), and ``fit_only``:
    the profile was measured but its fit had stopped, so nothing was retaken and it is only
    to fit.

    Why: on a shared host a default direct profile's floors can fall in one slow stretch and
    the profile says UNRELIABLE on them, while its calm looks had no time left to wait (the
    AMD EPYC Zen 4 BERT-base direct profile of session 52: 88 of 192 int8 floors timed slow,
    its looks waited 0 s of 13 min). Making it again costs the whole profile and may meet the
    same stretch; a retake measures only what the gate counted, and waits."""
    note = progress or (lambda message: None)
    out = Path(out)
    header = read_header(out)
    resuming = header.status != "measured"
    if resuming and not header.protocol.retakes:
        raise ProfileError(f"profile {out} is not finished: finish it by running the same "
                           "shaperctl profile command again, then retake it")
    if MEASUREMENTS in header.files:
        verify_file(out, header, MEASUREMENTS)
    device = header.fingerprint["device"]
    differences = fingerprint_differences(header.fingerprint, device_fingerprint(device))
    if differences:
        raise ProfileError(f"profile {out} was measured on another machine "
                           f"({'; '.join(differences)}): a retake here would mix two machines' "
                           "floors; retake it there, or profile this machine")
    _check_pool(header.protocol)
    if minutes is not None:
        _check_minutes(minutes)
    report: dict[str, Any] = {"points": {}, "slow_before": None, "priced_s": 0.0,
                              "minutes": 0.0, "looks": [], "seconds": 0.0, "waited_s": 0.0,
                              "reference_now": None,
                              "fit_only": not resuming and META_FILE not in header.files}
    if report["fit_only"]:  # measured, its fit stopped: the caller fits it, nothing to retake
        return report
    records = read_measurements(out, repair=resuming, note=note)
    if not resuming:
        report["slow_before"] = {p: v.get("slow_floors") for p, v in
                                 ((header.summary or {}).get("precisions") or {}).items()}
    started = time.perf_counter()
    while True:
        protocol = header.protocol if resuming else replace(
            header.protocol, calm_looks=header.protocol.calm_looks + 1,
            retakes=header.protocol.retakes + 1)
        look = protocol.calm_looks - 1
        items = calm_look_items(records, protocol, header.space, look)
        points = {p: n for p in protocol.precisions
                  if (n := sum(len(i[3]) for i in items if i[0] == p))}
        priced = look_seconds(header, protocol, items)
        if not report["looks"]:  # the first look of this run
            report.update(points=points, priced_s=round(priced, 1))
            minutes = minutes or min(24 * 60.0, max(RETAKE_LEAST_MINUTES,
                                                    (1 + RETAKE_WAIT) * priced / 60))
            report["minutes"] = round(minutes, 2)
        left = started + minutes * 60 - time.perf_counter()
        if (not items and not resuming
                or report["looks"] and (left < priced or len(report["looks"]) >= RETAKE_LOOKS)):
            break  # nothing (more) timed slow, or no time (or turn) for another look
        note(("retaking" if not report["looks"] else "looking again at") + f" {out}: "
             + ", ".join(f"{p} {n}" for p, n in points.items()) + " shape x size "
             "measurement(s), the floors timed while the machine ran slow and their repeats, "
             f"priced {priced / 60:.1f} min; {left / 60:.1f} min left for it, the rest of it "
             "waiting for calm moments")
        if not resuming:  # nothing is signed while measuring: the profile is refused until done
            header.protocol, header.status, header.files = protocol, "measuring", {}
            write_header(out, header)
        begun = time.perf_counter()
        measuring = _Measuring(out, header, device, minutes, started, note)
        measuring.run(announce=False)
        records = read_measurements(out)
        this = protocol.sweeps + look
        report["looks"].append({
            "look": this, "points": points, "seconds": round(time.perf_counter() - begun, 1),
            "waited_s": round(measuring.waited, 1),
            "measurements": sum(r.get("sweep", 0) == this for r in records),
            "reference_now": retake_speed(records, [this]),
            "timed": wait_counts(records, {this})})
        header.summary = {**(header.summary or {}), "retakes": (header.summary or {}).get(
            "retakes", []) + [{k: v for k, v in report["looks"][-1].items()
                               if k not in ("points", "reference_now", "timed")}]}
        write_header(out, header)  # still measuring: what each look took, kept as it ends
        resuming = False
    if not report["looks"]:  # no floor timed slow: the profile stays as it is
        return report
    old = header.summary or {}
    header.status = "measured"
    header.summary = _summary(records, header.protocol, 0.0, False)
    for key in ("last_run", "retakes"):  # the run that measured the profile; the retakes
        if key in old:
            header.summary[key] = old[key]
    header.files[MEASUREMENTS] = sha256_file(out / MEASUREMENTS)
    write_header(out, header)
    report.update(seconds=round(time.perf_counter() - started, 1),
                  waited_s=round(sum(x["waited_s"] for x in report["looks"]), 1),
                  reference_now=retake_speed(records, [x["look"] for x in report["looks"]]))
    return report


def retake_speed(records: list[dict[str, Any]], looks: list[int]) -> dict[str, Any]:
    """How fast the machine ran in the retakes ``looks`` (their sweep indexes) against the
    profile's calm time: the ``median``, over their group x size measurements at sizes with a
    ``calm_bases`` time in the records before the first (``sizes`` of the ``of``), of the
    reference's time over it (None where none compares). Near 1: the retaken floors are of
    the state the rest were timed in; over ``CALM_BAND``: the retake found no calm moment;
    under ``RETAKE_MOVED``: the machine's calm state has moved since the profile (a retake
    mixes two states: remake the profile). A profile timed mostly slow has a calm time at few
    sizes (session 50's transfer from the Intel MiniLM profile at 14 of 44, and 1 of the 31
    its retake timed), so ``sizes`` says what the median rests on."""
    bases, _ = calm_bases([r for r in records if r.get("sweep", 0) < min(looks)])
    timed = {(r["group"], r["precision"], r["batch"], r["seq_len"]): r for r in records
             if r.get("sweep", 0) in looks and r["reference_ms"] > 0}
    now = [r["reference_ms"] / bases[k[1:]] for k, r in timed.items() if k[1:] in bases]
    return {"median": round(statistics.median(now), 4) if now else None, "sizes": len(now),
            "of": len(timed)}


def look_seconds(header: ProfileHeader, protocol: Protocol, items: list) -> float:
    """A look's measuring time (``calm_look_items``' ``items``), priced as ``estimate_seconds``
    prices a profile from its probe: each item's turns, and per group and size the reference
    and the sentinel, with the turns' ``overhead``; each shape's graph built once (an int8
    one quantized). Without a probe (older profiles): a turn per 1,000 tokens a second."""
    probe, first = header.probe, protocol.precisions[0]

    def turn(precision: str, w: Workload) -> float:
        return (probed_turn_seconds(probe, protocol, precision, w) if probe
                else w[0] * w[1] / 1000)

    seconds = 0.0
    for p in protocol.precisions:
        mine = [i for i in items if i[0] == p]
        for k in range(0, len(mine), protocol.group_size):
            group = mine[k:k + protocol.group_size]
            sizes = {w for i in group for w in i[3]}
            turns = (sum(turn(p, w) for i in group for w in i[3])
                     + sum(turn(p, w) for w in sizes)
                     + (len(sizes) * turn(first, protocol.sentinel_workload)
                        if protocol.sentinel else 0.0))
            seconds += protocol.rounds * turns * overhead(protocol)
        shapes = {shape_key(i[2].widths) for i in mine}
        seconds += len(shapes) * ((probe or {}).get("build_seconds") or {}).get(p, 1.0)
    return seconds


def take_refitted_sources(header: ProfileHeader, transfer: Transfer,
                          note: Callable[[str], None]) -> None:
    """A finished transfer whose sources were refitted since it froze them (the same
    profiles, by path and creation time, with another predictor: e.g. one of a newer
    predictor format) takes their current fits from ``transfer`` (its sources' record now,
    ``transfer.transfer_record``), to be fitted anew on them; its measurements stay. Other
    sources, or a source made anew, are still refused (``_check_resumable``)."""
    def who(record: Transfer) -> list[tuple[str, str]]:
        return [(s["profile"], s["created"]) for s in record["sources"]]

    old = header.transfer
    if not old or who(old) != who(transfer) or all(
            a["predictor_sha256"] == b["predictor_sha256"]
            for a, b in zip(old["sources"], transfer["sources"])):
        return
    note("the --from profiles were refitted since this transfer froze them: it is fitted "
         "again on their current fits (its measurements kept)")
    header.transfer = {**old, "sources": transfer["sources"],
                       "differences": transfer["differences"]}


def _asked_int8_format(plan: ProfileHeader, name: str | None) -> dict | None:
    """The int8 format ``profile --int8-format`` names (recorded in ``plan``'s graph), one this
    CPU uses; None when the probe is to choose."""
    if name is None:
        return None
    if "int8" not in plan.protocol.precisions:
        raise ProfileError(f"--int8-format {name} needs int8 profiled (--precision)")
    allowed = int8_formats(plan.fingerprint["isa"])
    fmt = next((f for f in allowed if f["name"].lower() == name.lower()), None)
    if fmt is None:
        raise ProfileError(f"--int8-format {name} is not one this CPU uses ({allowed[0]['why']}"
                           f"; allowed: {', '.join(f['name'] for f in allowed)})")
    fmt = {**fmt, "why": f"{fmt['name']}, as --int8-format asked ({fmt['why']})"}
    plan.graph["int8"] = int8_record(fmt)
    return fmt


def _checked_request(device: str, protocol: Protocol, config: SuperConfig,
                     samples: int | None, minutes: float | None, least: int) -> Protocol:
    """What ``run_profile`` was asked, refused in one line where it cannot be measured; the
    protocol to measure it with (a run sized by ``samples`` has no time to wait in)."""
    _check_pool(protocol)
    if samples is not None and samples < least:
        raise ProfileError(f"--samples must be at least {least} (a predictor is fitted on 3 of "
                           f"every 4 shapes and checked on the rest), got {samples}")
    if samples is None:
        _check_minutes(minutes)
    check_threads(protocol.threads)
    too_long = [s for s in protocol.seq_lens if s > config.max_tokens]
    if too_long:
        raise ProfileError(f"--seq-len {too_long[0]} exceeds the model's {config.max_tokens} "
                           "positions")
    for precision in protocol.precisions:
        problem = precision_problem(device, precision)
        if problem:
            raise ProfileError(f"{precision} cannot be profiled on {device}: {problem}; pass "
                               "--precision with those")
    if minutes is None:  # sized by --samples: no time budget for a calm look to wait in
        protocol = replace(protocol, calm_wait=False)
    return protocol


def _check_pool(protocol: Protocol) -> None:
    """Refused: measuring a profile of ``protocol.pool`` in a process whose sessions use the
    other (``process_pool``)."""
    here = process_pool()
    if protocol.pool != here:
        raise ProfileError(f"a profile measured with pool {protocol.pool!r} cannot be measured "
                           f"in this process, whose sessions "
                           + ("share one pool" if here == "process" else "each have their own")
                           + f"; allowed here: pool {here!r}")


def _check_minutes(minutes: float | None) -> None:
    """Refused: a time budget (``--minutes``) outside 0.5-1440 minutes."""
    if not (minutes is not None and math.isfinite(minutes) and 0.5 <= minutes <= 24 * 60):
        raise ProfileError(f"--minutes must be between 0.5 and 1440, got {minutes!r}")


def _start(out: Path, header: ProfileHeader, device: str, samples: int | None,
           minutes: float | None, auto_precision: bool, auto_rounds: bool,
           note: Callable[[str], None], forced: dict | None = None) -> ProfileHeader:
    """A new profile folder: the device probed, the profile sized from the probe (shapes,
    rounds, precisions) and its header written; ``header`` is the plan, completed."""
    if out.exists() and any(out.iterdir()):
        raise ProfileError(f"{out} exists and is not a profile; choose a new --out folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProfileError(f"cannot create profile folder {out}: {exc.strerror}") from None
    protocol = header.protocol
    try:
        with tempfile.TemporaryDirectory(prefix="shaper-probe-") as tmp:
            sessions = GraphSessions(Path(tmp), header.config, device, protocol.threads,
                                     profile_int8_format(header))
            header.probe = probe_device(sessions, header, note, forced)
            if "int8_format" in header.probe:  # chosen among the ISA's formats, or asked
                header.graph["int8"] = int8_record(header.probe["int8_format"])
        header.probe.update(size_profile(header, samples, minutes, auto_precision,
                                         auto_rounds))
        protocol = header.protocol = replace(protocol, precisions=tuple(
            header.probe["precisions"]), rounds=header.probe["rounds"])
        if header.transfer is not None:
            header.transfer["direct_default_minutes"] = direct_default_minutes(header)
        header.sampling["samples"] = header.probe["samples"]
        write_header(out, header)
    except BaseException:  # nothing was measured yet: the folder goes with the failure
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    note(header.probe["decision"])
    return header


class _Measuring:
    """One run's measuring of a profile: what ``out`` still lacks, in groups of interleaved
    sessions, sweep after sweep, then the calm looks; progress and the time left on stderr
    (``note``) from the first group."""

    def __init__(self, out: Path, header: ProfileHeader, device: str, minutes: float | None,
                 started: float, note: Callable[[str], None]):
        self.out, self.header, self.device, self.note = out, header, device, note
        self.minutes, self.started = minutes, started
        self.protocol = header.protocol
        self.planned = planned_shapes(header)
        held_keys = held_out_keys(self.planned)
        self.held = [shape_key(s.widths) in held_keys for s in self.planned]
        self.records = read_measurements(out, repair=True, note=note)
        self.done = 0.0  # the work measured so far, in ``cost`` units
        self.total = 0.0  # ... and all of it, as priced so far
        self.waited = 0.0  # seconds the calm looks waited for the machine
        self.group = max((r["group"] for r in self.records), default=-1) + 1
        self.measuring = 0.0  # when measuring began (``run``): the rate ``left`` extrapolates
        self.fastest: dict[tuple[str, int, int], float] = {}
        self.fastest_sentinel = math.inf
        self.retaking = False  # a retake's look (is_retake): it waits by its own yardstick
        self.bases: dict[tuple[str, int, int], float] = {}  # ... calm_bases, for a retake
        self.calm = 1.0
        self.refs: dict[str, Any] = {}

    def work(self) -> list[tuple[str, str, Shape, list[Workload], int]]:
        """Each work item still to measure: (precision, phase, shape, workloads, sweep)."""
        protocol = self.protocol
        have = {(r["shape_key"], r["precision"], r["batch"], r["seq_len"], r["phase"],
                 r.get("sweep", 0)) for r in self.records}

        def missing(shape: Shape, precision: str, phase: str, workloads: list[Workload],
                    sweep: int):
            k = shape_key(shape.widths)
            return [w for w in workloads if (k, precision, *w, phase, sweep) not in have]

        work: list[tuple[str, str, Shape, list[Workload], int]] = []
        for sweep in range(protocol.sweeps):
            for precision in protocol.precisions:
                for shape, is_held in zip(self.planned, self.held):
                    todo = missing(shape, precision, "main", self.sizes(is_held), sweep)
                    if todo:
                        work.append((precision, "main", shape, todo, sweep))
                for shape in self.planned[:protocol.repeat_shapes]:
                    todo = missing(shape, precision, "repeat", protocol.grid, sweep)
                    if todo:
                        work.append((precision, "repeat", shape, todo, sweep))
        return work

    def sizes(self, is_held: bool) -> list[Workload]:
        """The sizes a shape's main measurement times: the grid, and the check sizes between
        grid points for a held-out shape."""
        return self.protocol.grid + (self.protocol.checks if is_held else [])

    def cost(self, precision: str, w: Workload) -> float:
        """A shape's share of the time at a size (from the probe; tokens without one)."""
        return (probed_turn_seconds(self.header.probe, self.protocol, precision, w)
                if self.header.probe else float(w[0] * w[1]))

    def grouped(self, items: list) -> list[tuple[str, list]]:
        """Work items in groups of ``group_size``, the precisions' groups alternating, look
        after look. On a host whose speed moves for minutes at a time, all of fp32 before all
        of int8 put the machine's drift into what int8 buys (an AMD EPYC Zen 2 profile
        measured that way fitted the full shape's int8 gain at 0.89-1.53x across sizes;
        alternating, 1.03-1.68x, above 1 everywhere). Sweeps follow one another, so a
        shape's sweeps are minutes apart (see Protocol)."""
        protocol, order = self.protocol, []
        for sweep in sorted({item[4] for item in items}):
            chunks: dict[str, list[list]] = {}
            for p in protocol.precisions:
                mine = [w for w in items if w[0] == p and w[4] == sweep]
                if mine:
                    chunks[p] = [mine[i:i + protocol.group_size]
                                 for i in range(0, len(mine), protocol.group_size)]
            order += [(p, c[k]) for k in range(max(map(len, chunks.values()), default=0))
                      for p, c in chunks.items() if k < len(c)]
        return order

    def left(self) -> float:
        """The measuring time still to come, at the rate so far (waits left out)."""
        spent = time.perf_counter() - self.measuring - self.waited
        return max(0.0, spent / self.done * (self.total - self.done)) if self.done else self.total

    def may_wait(self) -> bool:
        """A calm look may wait while the rest still fits in the time asked for (a retake's
        whatever ``Protocol.calm_wait`` says: waiting is what it is for)."""
        return ((self.protocol.calm_wait or self.retaking) and self.minutes is not None
                and time.perf_counter() + self.left() < self.started + self.minutes * 60)

    def run(self, announce: bool = True) -> bool:
        """Measure everything missing, then the calm looks; whether anything was measured.
        ``announce``: say what the profile measures first (a retake says what it retakes)."""
        protocol, header, note = self.protocol, self.header, self.note
        work = self.work()
        self.total = sum(self.cost(item[0], w) for item in work for w in item[3])
        # the calm looks' share, priced as the probe prices it (each replaced by its real cost
        # when it starts), so the time left counts them from the first seconds
        calm = CALM_SHARE * sum(
            self.cost(p, w) for p in protocol.precisions for is_held in self.held
            for w in self.sizes(is_held)) if protocol.calm_looks else 0.0
        self.total += calm * protocol.calm_looks
        say = note if announce else (lambda message: None)
        if self.records:
            say(f"resuming {self.out}: {len(self.records)} measurements kept")
        usable = field_value(header.fingerprint, "usable_cores") or protocol.threads
        say(f"profiling {len(self.planned)} shapes x {len(protocol.precisions)} precision(s) "
             f"x {len(protocol.grid)} input sizes ({describe_range(protocol.grid)}) on "
             f"{self.device}, {protocol.rounds} rounds, {protocol.threads} intra-op thread(s)"
             + (f" (this process may use {usable} cores: plans and servers that use the "
                f"profile run {protocol.threads} thread(s) per session; --threads {usable} "
                "profiles for all of them)" if self.device == "cpu" and usable > protocol.threads
               else ""))
        self.measuring = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="shaper-profile-") as tmp:
            sessions = GraphSessions(Path(tmp), header.config, self.device,
                                     protocol.threads, profile_int8_format(header))
            self.measure(self.grouped(work), sessions)
            measured = bool(work)
            for look in range(protocol.calm_looks):
                records = read_measurements(self.out)
                items = calm_look_items(records, protocol, header.space, look)
                self.fastest = fastest_reference(records)
                self.fastest_sentinel = fastest_sentinel(records)
                self.retaking = is_retake(protocol, look)
                if self.retaking:
                    self.bases, self.calm = calm_bases(records)
                if not items:  # nothing ran slow, or a resumed run's look already done
                    self.total -= calm  # its share, priced up front, is not to come
                    continue
                self.total += sum(self.cost(item[0], w) for item in items
                                  for w in item[3]) - calm
                n = sum(len(item[3]) for item in items)
                note(f"retake {protocol.retakes - protocol.calm_looks + look + 1}: {n} shape x "
                     "size measurement(s) whose lowest floor came from a group whose own "
                     f"reference ran over {CALM_BAND:g}x its calm time (the slow-floors count), "
                     "timed again, each once the machine runs calm while the time allows"
                     if self.retaking else
                     f"calm look {look + 1}/{protocol.calm_looks}: {n} shape x size "
                     f"measurement(s) whose lowest floor so far came from a group over "
                     f"{CALM_BAND:g}x the fastest (by the reference, or the sentinel), looked "
                     "at again")
                self.measure(self.grouped(items), sessions)
                measured = True
        return measured

    def measure(self, order: list[tuple[str, list]], sessions: GraphSessions) -> None:
        """Time each group at each of its sizes, interleaved with the reference graph, and
        append the records (a calm look first waits for the machine, while time allows)."""
        protocol, header = self.protocol, self.header
        reference = Shape(tuple(header.reference_shape), header.space)
        first = protocol.precisions[0]
        sentinel_feeds = inputs_for(protocol.sentinel_workload, header.config)
        for precision, batch_items in order:
            for p in (precision, first) if protocol.sentinel else (precision,):
                if p not in self.refs:
                    self.refs[p] = sessions.build(reference, p)
            ref_session = self.refs[precision]
            built = {id(item): sessions.build(item[2], precision, dropped_for(item[2], header))
                     for item in batch_items}
            workloads = sorted({w for item in batch_items for w in item[3]},
                               key=lambda w: w[0] * w[1])
            look, group = batch_items[0][4], self.group
            label = ("retake, " if self.retaking and look >= protocol.sweeps else
                     f"calm look {look - protocol.sweeps + 1}/{protocol.calm_looks}, "
                     if look >= protocol.sweeps else
                     f"sweep {look + 1}/{protocol.sweeps}, " if protocol.sweeps > 1 else "")
            for w in workloads:
                feeds = inputs_for(w, header.config)
                members = [item for item in batch_items if w in item[3]]
                refs = {REFERENCE: runner(ref_session, feeds)}
                if protocol.sentinel:
                    refs[SENTINEL] = runner(self.refs[first], sentinel_feeds)
                runners = dict(refs)
                for i, item in enumerate(members):
                    runners[i] = runner(built[id(item)], feeds)
                gate = None
                if (look >= protocol.sweeps and (precision, *w) in self.fastest
                        and self.may_wait()):
                    t = time.perf_counter()
                    fastest = {REFERENCE: self.fastest[(precision, *w)],
                               SENTINEL: self.fastest_sentinel}
                    base = self.bases.get((precision, *w)) if self.retaking else None
                    calm = self.calm if self.retaking else 1.0

                    def slowdown() -> float:  # the larger of the references' (both judged)
                        if base:  # a retake: this size's reference over its calm time
                            now = measure_interleaved({REFERENCE: refs[REFERENCE]},
                                                      replace(protocol, rounds=1), seed=group)
                            return now[REFERENCE]["median_ms"] / base
                        now = measure_interleaved(refs, replace(protocol, rounds=1), seed=group)
                        return max(now[k]["median_ms"] / fastest[k] for k in refs) / calm
                    gate = wait_for_calm(
                        slowdown, self.may_wait,
                        lambda m: self.note(f"{label}{precision} group {group} at batch "
                                            f"{w[0]} x {w[1]} tokens: {m}"),
                        "its calm time" if self.retaking else "its fastest")
                    self.waited += time.perf_counter() - t
                results = measure_interleaved(runners, protocol, seed=group)
                lines = _records(members, results, precision, w, group, header, gate=gate)
                # A measurement whose rounds disagree (one session slowed down for a while on
                # a shared machine) is timed again at once, its rounds pooling, when there is
                # one sweep; with more, the next sweep is the second look.
                noisy = [i for i in range(len(members)) if protocol.sweeps == 1
                         and results[i]["cv"] > protocol.noisy_cv]
                if noisy:
                    again = measure_interleaved(
                        {**refs, **{i: runners[i] for i in noisy}},
                        protocol, seed=group + 100_000)
                    lines += _records([members[i] for i in noisy],
                                      {**{k: again[k] for k in refs},
                                       **{j: again[i] for j, i in enumerate(noisy)}},
                                      precision, w, group, header, retry=True, gate=gate)
                append_measurements(self.out, lines)
                self.done += self.cost(precision, w) * len(members)
                elapsed = time.perf_counter() - self.started
                self.note(f"[{self.done / self.total:5.1%}] {label}{precision} group {group} "
                          f"at batch {w[0]} x {w[1]} tokens; {elapsed / 60:.1f} min so far, "
                          f"about {self.left() / 60:.1f} min left")
            del built
            self.group += 1


def probed_turn_seconds(probe: dict[str, Any], protocol: Protocol, precision: str,
                        w: Workload) -> float:
    """How long one turn of the protocol takes for a typical shape at ``w``: the mean of the
    probe's smallest and largest shape at the grid size nearest in tokens."""
    near = min(protocol.grid, key=lambda x: (abs(math.log(x[0] * x[1] / (w[0] * w[1]))), x))
    m = probe["ms"][precision]
    ms = (m["smallest"][workload_key(near)] + m["largest"][workload_key(near)]) / 2
    warm = 1 if ms > protocol.long_run_ms else protocol.warmup
    timed = max(1, min(protocol.timed, math.ceil(protocol.turn_ms / max(ms, 1e-3))))
    if protocol.pool == "process":  # one pool: nothing to wait for
        pause = 0.0
    elif not protocol.park_ms:  # the fixed pause alone
        pause = protocol.pause_ms
    else:  # the pause, and on until the threads stopped spinning (the probe timed how long)
        pause = max(protocol.pause_ms,
                    min(protocol.park_ms, probe.get("park_ms", protocol.pause_ms)))
    return pause / 1000 + (warm + timed) * ms / 1000


def probe_device(sessions: "GraphSessions", header: ProfileHeader, note,
                 forced: dict | None = None) -> dict[str, Any]:
    """The device's speed in its first seconds: the smallest and largest shapes (and, but in
    a transfer, the reference) at every grid size and precision asked for, two interleaved
    rounds (fp32 and int8 of one shape side by side, so their ratio is from one period of
    the machine). Where the ISA leaves a choice of int8 format (runtime.int8_formats) and
    none was ``forced`` (--int8-format), int8 is timed in each, and the probe's int8 is the
    one ``choose_int8_format`` picks."""
    protocol, space = header.protocol, header.space
    shapes = {"smallest": space.smallest, "largest": space.largest}
    if header.transfer is None:  # a transfer's probe is its budget's largest cost: two shapes
        shapes["reference"] = Shape(tuple(header.reference_shape), space)
    formats = ([] if "int8" not in protocol.precisions else [forced] if forced else
               int8_formats(header.fingerprint["isa"]))
    several = len(formats) > 1  # timed as "int8 U8U8", "int8 U8S8-reduce-range", ...
    kinds = [p for p in protocol.precisions if p != "int8" or not several]
    kinds += [f"int8 {f['name']}" for f in formats] if several else []
    note(f"probing the device: {len(shapes)} shapes x {len(protocol.precisions)} precision(s) "
         f"x {len(protocol.grid)} input sizes"
         + (f"; int8 in {len(formats)} formats ({', '.join(f['name'] for f in formats)}), "
            "the faster kept" if several else ""))
    t0 = time.perf_counter()
    build_s: dict[str, float] = {}
    built = {}
    for kind in kinds:
        t, fmt = time.perf_counter(), next((f for f in formats if kind == f"int8 {f['name']}"),
                                           None)
        made = sessions  # fp32, and int8 in the default format (or the one asked for)
        if fmt is not None and fmt is not formats[0]:  # its own sessions and folder
            folder = sessions.work / f"format-{formats.index(fmt)}"
            folder.mkdir()
            made = GraphSessions(folder, header.config, sessions.device, sessions.threads, fmt)
        for name, shape in shapes.items():
            built[(kind, name)] = made.build(shape, "int8" if fmt else kind)
        build_s[kind] = (time.perf_counter() - t) / len(shapes)
    short = replace(protocol, rounds=2)
    ms: dict[str, dict[str, dict[str, float]]] = {p: {n: {} for n in shapes} for p in kinds}
    for i, w in enumerate(sorted(protocol.grid, key=lambda w: w[0] * w[1])):
        feeds = inputs_for(w, header.config)
        results = measure_interleaved({k: runner(v, feeds) for k, v in built.items()}, short,
                                      seed=i)
        for (precision, name), r in results.items():
            ms[precision][name][workload_key(w)] = round(r["median_ms"], 4)
        note(f"probe {i + 1}/{len(protocol.grid)}: batch {w[0]} x {w[1]} tokens, "
             + ", ".join(f"{p} largest {ms[p]['largest'][workload_key(w)]:.2f} ms"
                         for p in kinds))
    parked = []  # how long ONNX Runtime's threads spin after a run here (park_threads)
    if protocol.pool == "process":
        note(f"every session runs on this process's one pool of {protocol.threads} intra-op "
             "thread(s): a turn does not wait for the last session's threads to stop spinning")
    elif protocol.park_ms:
        for (precision, name), built_session in built.items():
            if name == "largest":
                for _ in range(3):
                    runner(built_session, feeds)()
                    parked.append(park_threads(0, protocol.park_ms))
        note(f"after a run, ONNX Runtime's threads spin for about {statistics.median(parked):.0f}"
             " ms here; each turn waits until they stop (at most "
             f"{protocol.park_ms:.0f} ms)")
    chosen, formats_ms = None, {}
    if several:  # int8 in each format, by name; the probe's int8 is the chosen one's
        formats_ms = {f["name"]: ms.pop(f"int8 {f['name']}") for f in formats}
        builds = {f["name"]: build_s.pop(f"int8 {f['name']}") for f in formats}
        chosen = choose_int8_format(formats, formats_ms)
        ms["int8"], build_s["int8"] = formats_ms[chosen["name"]], builds[chosen["name"]]
        note(f"int8 format: {chosen['why']}")
    gain = {}
    if {"fp32", "int8"} <= set(protocol.precisions):
        gain = {name: {k: round(ms["fp32"][name][k] / ms["int8"][name][k], 4)
                       for k in ms["fp32"][name]} for name in ("smallest", "largest")}
    return {"ms": ms, "int8_speedup": gain, "build_seconds": build_s,
            **({"int8_format": chosen, "int8_formats_ms": formats_ms} if chosen else {}),
            **({"int8_format": forced} if forced else {}),
            **({"park_ms": round(statistics.median(parked), 1)} if parked else {}),
            "seconds": round(time.perf_counter() - t0, 1)}


def choose_int8_format(formats: list[dict], ms: dict[str, dict[str, dict[str, float]]]
                       ) -> dict:
    """Of the ISA's int8 formats (``formats``, the default first), the one the probe times
    (``ms``: format name -> shape -> size -> median ms) at least ``MIN_FORMAT_GAIN`` faster
    than the default at the largest shape (the geometric mean over the sizes), the fastest
    of those; else the default. The format, with why."""
    default = formats[0]

    def speedup(fmt: dict) -> float:  # over the default, at the largest shape
        base, other = ms[default["name"]]["largest"], ms[fmt["name"]]["largest"]
        return math.exp(statistics.fmean(math.log(base[k] / other[k]) for k in base))

    gains = {f["name"]: speedup(f) for f in formats[1:]}
    best = max(formats[1:], key=lambda f: gains[f["name"]])
    timed = ", ".join(f"{name} {g:.2f}x" for name, g in gains.items())
    if gains[best["name"]] >= MIN_FORMAT_GAIN:
        return {**best, "why": f"{best['name']}, measured {gains[best['name']]:.2f}x faster "
                               f"than {default['name']} here at the largest shape ({best['why']})"}
    return {**default, "why": f"{default['name']} ({default['why']}): {timed} its speed here "
                              f"at the largest shape, under the {MIN_FORMAT_GAIN:.2f}x another "
                              "format must gain"}


def overhead(protocol: Protocol) -> float:
    """What the measured turns take over their priced runs (``probed_turn_seconds``): in a
    one-sweep profile, 60% more, for its noisy measurements timed again at once (a first
    profile on an AMD EPYC VM took 2.0x the estimate without it; 39% of measurements were
    timed again on the Zen 2 class); with sweeps, which time nothing again, 25% more. Until
    session 43 every profile was priced at 60% more, and profiles of several sweeps
    measured in 0.51-0.67 of that since they run on one pool (AMD EPYC Zen 4, sessions
    41-43, MiniLM and BERT-base, 7 profiles), 0.66-0.95 with a pool per session (Intel AMX,
    AMD Zen 4 and Zen 5, 33 profiles), 0.91-1.29 beside a noisy neighbour made on purpose
    (Intel, 11), 0.59-1.18 on the Zen 2 class (3). At 25%: 0.59-0.80 (AMD Zen 4, 3)."""
    return 1.6 if protocol.sweeps == 1 else 1.25


def estimate_seconds(header: ProfileHeader, n: int, rounds: int,
                     precisions: Iterable[str]) -> float:
    """The measuring time of ``n`` shapes at ``rounds`` rounds, from the probe: every shape
    costs the mean of the smallest's and largest's turn at each size, each group adds the
    reference and the sentinel (``Protocol.sentinel``), held-out shapes add the check sizes
    (priced at the nearest grid size), the repeated shapes add a group, all of it once per
    sweep and ``CALM_SHARE`` of it per calm look, and more for the turns' overheads
    (``overhead``). Graphs are built in every sweep and calm look, an int8 graph quantized
    once (``GraphSessions``): a later look's int8 build is priced as an fp32 one."""
    protocol, probe = replace(header.protocol, rounds=rounds), header.probe
    sweeps = protocol.sweeps + CALM_SHARE * protocol.calm_looks  # a calm look: a share
    builds = protocol.sweeps + protocol.calm_looks  # ... but every graph may be built again
    grid = protocol.grid
    g = protocol.group_size

    def turns(precision: str, workloads) -> float:
        return sum(probed_turn_seconds(probe, protocol, precision, w) for w in workloads)

    seconds, first = 0.0, protocol.precisions[0]
    for p in precisions:
        groups, again_groups = math.ceil(n / g), math.ceil(protocol.repeat_shapes / g)
        main = (n + groups) * turns(p, grid)
        check = (n / 4 + groups) * turns(p, protocol.checks)
        repeat = (protocol.repeat_shapes + again_groups) * turns(p, grid)
        if protocol.sentinel:  # one turn of it per size of every group
            one = turns(first, [protocol.sentinel_workload])
            main += groups * len(grid) * one
            check += groups * len(protocol.checks) * one
            repeat += again_groups * len(grid) * one
        build = probe["build_seconds"][p]
        again = probe["build_seconds"].get("fp32", build) if p == "int8" else build
        seconds += (sweeps * rounds * (main + check + repeat) * overhead(protocol)
                    + (n + 2) * (build + (builds - 1) * again))
    return seconds


def size_profile(header: ProfileHeader, samples: int | None, minutes: float | None,
                 auto_precision: bool, auto_rounds: bool = True) -> dict[str, Any]:
    """Which precisions, how many shapes and rounds: given, or what fits ``minutes``.

    int8 is dropped (with ``auto_precision``) where the probe's largest and smallest shapes
    both ran less than ``MIN_INT8_GAIN`` faster in int8 at every grid size: a precision that
    buys less than a typical planning margin cannot change a plan. The time goes first to
    shapes up to 40 (where the additive model's error levels off: 1.7% from 40 shapes, 1.5%
    from 150, on the Intel class's 300-shape profiles), then to rounds up to 8 (what a noisy
    host needs), then to more shapes (up to 120). A direct profile whose calm looks wait
    keeps ``CALM_RESERVE`` of the time out of this sizing, for the waits.
    """
    protocol = header.protocol
    precisions = list(protocol.precisions)
    gain = header.probe.get("int8_speedup") or {}
    best_gain = max((v for g in gain.values() for v in g.values()), default=None)
    dropped = ""
    if auto_precision and best_gain is not None and best_gain < MIN_INT8_GAIN:
        precisions.remove("int8")
        dropped = (f"int8 dropped: at most {best_gain:.2f}x faster than fp32 here "
                   f"(< {MIN_INT8_GAIN:.2f}x at every size)")
    # the time to size to (after the probe); a direct profile that waits for calm moments
    # keeps a share of it for the waits
    room = minutes * 60 - header.probe["seconds"] if samples is None else 0.0
    waits = header.transfer is None and protocol.calm_looks and protocol.calm_wait
    kept = CALM_RESERVE * room if waits else 0.0

    def fits(n: int, r: int) -> bool:  # n shapes at r rounds within --minutes, less the waits'
        return estimate_seconds(header, n, r, precisions) <= room - kept

    if samples is not None:
        n, rounds = samples, protocol.rounds
    elif header.transfer is not None:
        # A transfer's time goes first to shapes (up to 12: 9 fitted, 3 held out), then to
        # rounds (up to 4 looks at each shape in all sweeps), then to more shapes. It
        # starts from 2 looks: 1 round in each of 2 sweeps by default (see TRANSFER_SWEEPS).
        n = TRANSFER_MIN_SHAPES
        rounds = max(1, 2 // protocol.sweeps) if auto_rounds else protocol.rounds
        while n < 12 and fits(n + 2, rounds):
            n += 2
        while auto_rounds and (rounds + 1) * protocol.sweeps <= 4 and fits(n, rounds + 1):
            rounds += 1
        while n < 40 and fits(n + 4, rounds):
            n += 4
    else:
        n, rounds = MIN_SHAPES, protocol.rounds
        while n < 40 and fits(n + 4, rounds):
            n += 4
        while auto_rounds and n >= 40 and rounds < 8 and fits(n, rounds + 1):
            rounds += 1
        while n >= 40 and (rounds >= 8 or not auto_rounds) and n < 120 and fits(n + 8, rounds):
            n += 8
    estimate = estimate_seconds(header, n, rounds, precisions)
    # what the looks may wait: the reserve, less what a minimum over the budget takes of it
    wait = min(kept, max(0.0, room - estimate))
    gains = (f"int8 {min(v for g in gain.values() for v in g.values()):.2f}-{best_gain:.2f}x "
             "faster than fp32; " if best_gain is not None else "")
    return {"precisions": precisions, "samples": n, "rounds": rounds,
            "minutes_asked": minutes if samples is None else None,
            "estimated_minutes": round(estimate / 60, 1),
            "wait_reserve_minutes": round(wait / 60, 1),
            "decision": (f"probe ({header.probe['seconds']:.0f} s): {gains}"
                         + (dropped + "; " if dropped else "")
                         + f"measuring {n} shapes x {'+'.join(precisions)} x {rounds} "
                         f"round(s)" + (f" in each of {protocol.sweeps} sweeps"
                                        if protocol.sweeps > 1 else "")
                         + (f", then up to {protocol.calm_looks} calm look(s) at what ran slow"
                            if protocol.calm_looks else "")
                         + f", about {estimate / 60:.1f} min"
                         + (f" and up to {kept / 60:.1f} min kept for the looks to wait for "
                            "calm moments" if kept and wait == kept else "")
                         + (f" (budget {minutes:g} min)" if samples is None else "")
                         + (_short_wait(n, wait, estimate, header.probe["seconds"])
                            if kept and wait < kept else ""))}


def direct_default_minutes(header: ProfileHeader) -> float:
    """What ``shaperctl profile`` without ``--from`` would take on this device and grid, priced
    by this (a transfer's) probe: its default ``--minutes``, or its 12-shape minimum's price
    and the probe where that is more (``size_profile``'s estimate, on the safe side: measured
    runs took 0.64-0.80 of it). Transfers made before session 46 record instead the price of
    40 shapes x 4 rounds (``direct_minutes``), the protocol of session 17: 78 min where the
    default direct profile took 16.2 (BERT-base, the AMD Zen 4 class's cores masked to AVX2)."""
    direct = replace(header, transfer=None, protocol=replace(
        header.protocol, sweeps=DIRECT_SWEEPS, calm_looks=DIRECT_CALM_LOOKS, rounds=1))
    # the precisions this transfer measures (int8 already dropped where it buys nothing)
    sized = size_profile(direct, None, DIRECT_MINUTES, auto_precision=False, auto_rounds=True)
    priced = (estimate_seconds(direct, sized["samples"], sized["rounds"], sized["precisions"])
              + header.probe["seconds"]) / 60
    return round(max(DIRECT_MINUTES, priced), 1)


def _short_wait(n: int, wait: float, estimate: float, probe: float) -> str:
    """What a direct profile whose least size fills its ``--minutes`` tells of its calm
    looks' waits (``Protocol.calm_wait``), and the ``--minutes`` that would leave them their
    reserve. Why: on the AMD Zen 4 class, the BERT-base space's 12-shape minimum took 25.1
    minutes; with the default 12 its looks could not wait, and int8 at 1 x 16-32 tokens, timed
    only in slow periods (the reference 1.4-2x its fastest), missed by 14-27% (held-out MAPE
    7.1%, UNRELIABLE); with --minutes 30, just after, they waited 1.1 min, timed 40 of 40
    sizes calm, and the profile was reliable (2.8% / 3.1%, noise floors 2.5% / 2.6%)."""
    need = math.ceil((estimate / (1 - CALM_RESERVE) + probe) / 60)
    return (f"; the {n}-shape minimum " + ("fills" if wait > 0 else "is over")
            + " the budget, so the calm looks "
            + (f"may wait only {wait / 60:.1f} min" if wait > 0 else "will not wait")
            + f" for calm moments (--minutes {need} leaves them a quarter of the time)")


def _records(members, results, precision: str, w: Workload, group: int,
             header: ProfileHeader, retry: bool = False,
             gate: CalmWait | None = None) -> list[dict[str, Any]]:
    ref_ms = results[REFERENCE]["median_ms"]
    sentinel = ({"sentinel_ms": results[SENTINEL]["median_ms"]} if SENTINEL in results
                else {})
    return [{"shape": list(item[2].widths), "shape_key": shape_key(item[2].widths),
             "precision": precision, "batch": w[0], "seq_len": w[1], "phase": item[1],
             "retry": retry, "group": group, "sweep": item[4], "params": item[2].params(),
             "dropped": dropped_for(item[2], header), "reference_ms": ref_ms, **sentinel,
             **results[i], **({"calm_wait": gate} if gate else {})}
            for i, item in enumerate(members)]


def planned_shapes(header: ProfileHeader) -> list[Shape]:
    space = header.space
    return sample_shapes(space, header.sampling["samples"], header.sampling["seed"],
                         include={k: Shape(tuple(v), space) for k, v in header.templates.items()})


def _summary(records: list[dict[str, Any]], protocol: Protocol, seconds: float,
             measured_now: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"measurements": len(records), "precisions": {}}
    for precision in protocol.precisions:
        mine = [r for r in records if r["precision"] == precision and r["phase"] == "main"]
        if not mine:
            continue
        summary["precisions"][precision] = {
            "shapes": len({r["shape_key"] for r in mine}),
            "latency_ms_range": [min(r["median_ms"] for r in mine),
                                 max(r["median_ms"] for r in mine)],
            "noise_floor": noise_floor(records, precision),
            "reference_spread": reference_spread(records, precision),
            "slow_floors": slow_floors(records, precision)}
    if protocol.calm_looks:
        summary["calm_looks"] = sum(r.get("sweep", 0) >= protocol.sweeps for r in records)
    if protocol.calm_wait:
        summary["calm_wait"] = wait_counts(
            records, set(range(protocol.sweeps, protocol.sweeps + protocol.calm_looks)))
    if measured_now:
        summary["last_run"] = {"seconds": round(seconds, 1)}
    return summary


CALM_BAND = SPEED_BANDS[0]  # a calm look retries what ran over this x the fastest


def wait_counts(records: list[dict[str, Any]], looks: set[int]) -> dict[str, Any]:
    """Of the group x size measurements of the calm looks ``looks`` (their sweep indexes):
    how many (``sizes``), how many were timed after a check of the machine (``checked``; the
    rest once the time asked for ran short), how many of those found it calm (``calm``), and
    the seconds waited."""
    looked = {(r["group"], r["precision"], r["batch"], r["seq_len"]): r.get("calm_wait")
              for r in records if r.get("sweep", 0) in looks}
    gates = [g for g in looked.values() if g]
    return {"sizes": len(looked), "checked": len(gates),
            "calm": sum(g["ratio"] <= CALM_BAND for g in gates),
            "seconds": round(sum(g["waited_s"] for g in gates), 1)}


def calm_look_items(records: list[dict[str, Any]], protocol: Protocol, space,
                    look: int) -> list[tuple[str, str, Shape, list[Workload], int]]:
    """The work of calm look ``look`` (0-based, after the protocol's sweeps): every precision,
    phase, shape and size whose lowest floor in the looks before this one came from a group
    over ``CALM_BAND`` x the fastest (``group_slowdowns``: its reference against the fastest
    group at that precision and size, or the sentinel against its fastest), less what this
    look has measured already. Decided on the
    earlier looks' records only, so an interrupted look resumes exactly.

    A retake (the last ``protocol.retakes`` looks, ``retake_profile``) takes instead what the
    slow-floors count counts: every point whose lowest floor came from a group over
    ``SPEED_BANDS[0]`` x a calm machine by ``own_slowdowns``.

    Why: a slow period lasts minutes and can cover every sweep of an item, whose floor is
    then the slow period's. On the AMD Zen 4 and Zen 5 profiles the held-out points whose
    lowest floor came from such a group were 1.1-4x as far off as the rest (int8 of a Zen 5
    profile: 15.1% against 3.8%); the Zen 2 profile's int8 was the exception (6.4% against
    7.5%; docs/profiles.md).

    Items come shape by shape in the order first measured, a shape measured again for the
    noise floor beside its first measurement, so a look that runs out of time to wait for a
    calm moment (``wait_for_calm``) leaves both alike. With every first measurement before
    every repeat, the first waiting profile's fp32 repeats ran out of it and the noise floor
    compared calm first measurements with slow repeats (repeats 3.6% slower in the median)."""
    this = protocol.sweeps + look
    earlier = [r for r in records if r.get("sweep", 0) < this]
    best = lowest_floors(earlier, own_slowdowns(earlier)[0] if is_retake(protocol, look)
                         else group_slowdowns(earlier))
    done, first = set(), {}
    for i, r in enumerate(records):
        sweep = r.get("sweep", 0)
        if sweep == this:
            done.add(point_key(r))
        elif sweep < this:
            first.setdefault(point_key(r)[:3], i)
    todo: dict[tuple, list[Workload]] = {}
    for key, (_, slowdown) in best.items():
        if slowdown > CALM_BAND and key not in done:
            todo.setdefault(key[:3], []).append((key[3], key[4]))
    rank = {p: i for i, p in enumerate(protocol.precisions)}

    def order(t: tuple) -> tuple:  # a shape's repeat beside its first measurement: both alike
        return (rank.get(t[0], len(rank)), first.get((t[0], "main", t[2]), first[t]),
                t[1] != "main")
    return [(p, phase, shape_from_key(k, space), sorted(todo[(p, phase, k)],
                                                        key=lambda w: (w[0] * w[1], w)), this)
            for p, phase, k in sorted(todo, key=order)]


def is_retake(protocol: Protocol, look: int) -> bool:
    """Whether calm look ``look`` (0-based) is a retake (``Protocol.retakes``)."""
    return look >= protocol.calm_looks - protocol.retakes


CALM_POLL_S = 1.0  # how often a waiting calm look times the reference again


def wait_for_calm(check: Callable[[], float], may_wait: Callable[[], bool],
                  note: Callable[[str], None], against: str = "its fastest") -> CalmWait:
    """Time the reference (``check``: one turn, its median over its fastest group at this
    size so far; with a sentinel, the larger of that and the sentinel's; in a retake, over
    its size's calm time: ``against`` says which, in the note) every ``CALM_POLL_S``
    seconds until it runs within ``CALM_BAND`` or ``may_wait()`` says the time is up; what
    the last check saw.

    Why: a calm look times again what every sweep timed in a slow period, but a look is
    itself timed in whatever period comes, and on a shared host slow ones outlast it. On
    the AMD EPYC Zen 5 VM, the reference timed every 0.8 s for 3 minutes in a slow hour
    (``benchmarks/calm_periods.py``) ran within 1.1x of its fastest in 12-18% of checks, in
    calm stretches of 5-9 s between slow ones of up to 40-54 s; a profile's calm looks of
    the noise floor's shapes at batch 1 x 16 tokens, five of them, all fell in slow periods
    (the reference 1.35-1.87x) while the first measurement had one calm sweep (1.05x), 15%
    apart. Three profiles that waited: the looks' groups timed after a check were calm in
    73% and 78%, those timed once the time had run short in 16-18% (docs/profiles.md)."""
    start, told = time.perf_counter(), -math.inf
    checks = 0
    while True:
        ratio = check()
        checks += 1
        now = time.perf_counter()
        if ratio <= CALM_BAND or not may_wait():
            return {"ratio": round(ratio, 4), "waited_s": round(now - start, 1),
                    "checks": checks}
        if now - start >= 5 and now - told >= 15:
            note(f"waiting for a calm moment, the reference at {ratio:.2f}x {against} "
                 f"({now - start:.0f} s so far)")
            told = now
        time.sleep(CALM_POLL_S)


def timed_result(times: Sequence[float], reference_times: Sequence[float],
                 profile_ref_ms: float, precision: str, workload: Workload, seconds: float,
                 measured_ms: float) -> dict[str, Any]:
    """A ``measure_model`` result from a model's timed runs and its reference graph's
    (``measured_ms``: the model's median now; ``measure_model`` takes its round medians')."""
    floor = float(np.percentile(times, FLOOR_LEVEL))
    reference_floor = float(np.percentile(reference_times, FLOOR_LEVEL))
    return {"measured_ms": measured_ms, "intrinsic_ms": floor, "times": list(times),
            "reference_times": list(reference_times), "reference_ms_now": reference_floor,
            "reference_ms_profile": profile_ref_ms, "drift": reference_floor / profile_ref_ms,
            "batch": workload[0], "seq_len": workload[1], "precision": precision,
            "seconds": round(seconds, 1)}


def measure_model(model: str | Path, header: ProfileHeader, profile_ref_ms: float,
                  precision: str, workload: Workload, device: str,
                  seconds: float | None = None,
                  extend: Callable[[dict[str, Any]], float | None] | None = None
                  ) -> dict[str, Any]:
    """A model file's latency at ``workload``, timed with the profile's protocol, interleaved
    with the profile's reference graph; for ``seconds`` if given (rounds repeat until then),
    else as many rounds as the profile gave each shape and size (rounds x sweeps).

    ``measured_ms`` is the model's median now; ``times`` every timed run (each a request
    after an idle pause, as the protocol times them; the reference's in
    ``reference_times``); ``intrinsic_ms`` its floor now (the
    ``FLOOR_LEVEL``-th percentile of those runs: what the latency model predicts, which a
    slow period moves least). ``drift`` = the reference graph's floor now over
    ``profile_ref_ms`` (its floor in the profile at this size): how much slower the machine
    is now than when profiled (``DeviceProfile.measure`` takes the part of it the profile's
    tail prices out of the floor, ``predictor.priced_drift``). When the time is up,
    ``extend`` (if given) sees the result so far and may name a longer total in seconds: the
    same sessions go on timing, and the result is of all the runs.
    """
    # one bundle has no later sweep: its rounds are the turns a profiled shape got in all;
    # timed with this process's pool, whatever the profile's (a server's session, as `verify`
    # and `bench` run it, has its own, so each turn waits for idle threads)
    protocol = replace(header.protocol, rounds=header.protocol.rounds * header.protocol.sweeps,
                       pool=process_pool())
    feeds = inputs_for(workload, header.config)
    session = make_session(model, device, threads=protocol.threads)
    times: dict[str, list[float]] = {"model": [], "reference": []}
    medians: dict[str, list[float]] = {"model": [], "reference": []}
    with tempfile.TemporaryDirectory(prefix="shaper-measure-") as work:
        sessions = GraphSessions(Path(work), header.config, device, protocol.threads,
                                 profile_int8_format(header))
        reference = sessions.build(Shape(tuple(header.reference_shape), header.space),
                                   precision)
        runners = {"model": runner(session, feeds), "reference": runner(reference, feeds)}
        start, seed = time.perf_counter(), 7

        def so_far() -> dict[str, Any]:
            return timed_result(times["model"], times["reference"], profile_ref_ms, precision,
                                workload, time.perf_counter() - start,
                                statistics.median(medians["model"]))
        while True:
            results = measure_interleaved(runners, protocol, seed=seed, keep_times=True)
            for k, r in results.items():
                times[k] += r["times"]
                medians[k] += r["round_medians"]
            seed += 1
            elapsed = time.perf_counter() - start
            if seconds is not None and elapsed < seconds:
                continue
            m = so_far()
            more = extend(m) if extend is not None and seconds is not None else None
            if more is None or more <= elapsed:
                return m
            seconds = more
