"""What a latency budget buys: the model closest to the full one that meets the budget on the
user's workload (batch x sequence length), chosen among precisions and shapes by measured
fidelity.

A budget is a promise about a percentile of request latency (``--percentile``, default 90),
in milliseconds or relative to the device ("80%": 80% of the full fp32 model's latency at
that percentile and workload on the profile, so the same command means the same thing on a
fast and a slow machine).

1. Plan per precision and shape family (the fine cigar family and the paper's templates,
   ``templates.PLAN_FAMILIES``): the largest shape whose predicted latency at the workload
   and percentile, times the profile's held-out p95 error margin, fits the budget. Those
   shapes are scored by step 4's judge in PyTorch before export; the best family's shape
   goes on (:func:`choose_family`).
2. Export each candidate (int8 through the same quantizer and accuracy gate as ``--int8``,
   all-int8: a plan does not fall back to fp32 nodes, since its profile timed all-int8).
3. Measure it on this device with the profile's protocol at the workload, interleaved with
   the profile's reference graph (``DeviceProfile.measure``, the one function that times a
   bundle) for ``measure_seconds``: the larger of its floor (the low end of its runs, which
   the machine's slow periods move least, at the profile's speed as far as the profile's
   tail prices the machine's slowdown now) times the profile's tail factor and the upper
   confidence bound of the percentile observed now is checked against the budget with the
   profile's noise floor to spare (``kept_on_ms``, ``kept_under``). A miss is measured once
   more; if it stands, the plan steps down with predictions scaled by the observed ratio. A
   fit within one more noise floor of that limit is measured once more too, and the slower
   look counts (``judged_ms``).
   A bundle well under budget (by more than the margin) steps up to the largest shape the
   observed ratio allows below every shape that measured over; if that misses, the last
   one that fit is kept. Exports are bounded.
4. Measure each fitting candidate's fidelity to the full-shape fp32 model on calibration text
   (:mod:`shaper_deploy.fidelity`). The highest fidelity wins; ties go to the faster.
   An int8 candidate that fails its accuracy gate or the budget drops out with a line saying
   why; the plan fails only when no candidate fits.

With ``for_device`` the plan is for the machine the profile describes, not this one: step 3
is skipped (timing here would check the wrong machine), candidates fit by prediction x
margin alone, int8 is made in that machine's format, and the bundle records that it is
unverified until ``shaperctl verify`` runs there.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .bundle import BundleManifest
from .errors import ExportError, PlannerError, check_choice
from .export import INT8_FILE, MODEL_FILE, ExportOptions, export_bundle
from .heuristics import cigar_family
from .io import atomic_dir, check_output_dir
from .judge import Judge, make_judge
from .profiling.predictor import DeviceProfile, judged_phrase, unpriced_slowdown
from .profiling.profile import graph_differences, graph_record, profile_int8_format
from .promise import (DEFAULT_PERCENTILE, MEASURE_SECONDS, PLAN_CONFIDENCE, Budget,
                      check_percentile)
from .runtime import DEVICE_PRECISIONS, int8_format, int8_formats, precision_problem
from .shape import Shape
from .taskdata import TaskData, read_task_data
from .templates import PLAN_FAMILIES, families_said, shape_family


@dataclass
class Plan:
    """One precision's shape for the budget, before it is exported and measured."""

    shape: Shape
    precision: str
    predicted_ms: float  # the predicted percentile of latency at the workload (x correction)
    upper_ms: float  # with the profile's margin
    budget_ms: float
    batch: int
    seq_len: int
    correction: float = 1.0  # measured/predicted ratio the closed loop applied
    percentile: float = DEFAULT_PERCENTILE
    family: str = "cigar"  # the shape family it was drawn from (templates.PLAN_FAMILIES)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"], d["params"] = list(self.shape.widths), self.shape.params()
        return d


def plan_for_latency(profile: DeviceProfile, budget_ms: float, precision: str,
                     batch: int, seq_len: int, correction: float = 1.0,
                     family: Sequence[Shape] | None = None,
                     percentile: float = DEFAULT_PERCENTILE,
                     dropped: Callable[[Shape], list[str]] | None = None,
                     family_name: str = "cigar") -> Plan | None:
    """The largest family shape whose predicted percentile x margin x correction fits; None
    if none. ``dropped(shape)`` names the projections its export leaves out; ``family_name``
    is recorded in the plan.

    Every family member is predicted (a matrix product per grid point), so the answer is the
    brute-force best, not a search's approximation.
    """
    family = list(family or cigar_family(profile.space))
    gone = [dropped(s) for s in family] if dropped else None
    predicted = profile.predict(family, precision, batch, seq_len, percentile, gone) * correction
    upper = predicted * profile.margin(precision)
    fits = np.flatnonzero(upper <= budget_ms)
    if len(fits) == 0:
        return None
    i = int(fits.max())
    return Plan(family[i], precision, float(predicted[i]), float(upper[i]), budget_ms, batch,
                seq_len, correction, percentile, family_name)


@dataclass
class Candidate:
    """A precision's final shape: predicted, measured, fidelity, and why it won or lost."""

    precision: str
    shape: list[int] | None
    params: int | None
    predicted_ms: float | None
    upper_ms: float | None
    measured_ms: float | None = None
    fidelity: float | None = None
    status: str = "planned"  # chosen, fits, over budget, gate failed, no shape fits
    reason: str = ""
    exports: list[dict[str, Any]] = field(default_factory=list)
    network: str = "supernet"  # or "teacher": the task's full model fine-tuned alone
    family: str | None = None  # the shape family its shape came from (None: the teacher's)

    @property
    def label(self) -> str:
        return self.precision if self.network == "supernet" else f"{self.precision} teacher"

    @property
    def folder(self) -> str:
        """Its bundle's folder in the planner's work space."""
        return self.precision if self.network == "supernet" else f"teacher-{self.precision}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_profile(profile: DeviceProfile, device: str, options: ExportOptions,
                  supernet_config, allow_unreliable: bool, for_device: bool = False) -> None:
    """Refuse a profile that does not describe what would be exported, here (or, with
    ``for_device``, on the machine the profile describes)."""
    profile.check_device(device, for_device)
    if profile.space != supernet_config.space:
        raise PlannerError(f"profile {profile.path} covers another design space than the super "
                           "network; profile it with --supernet")
    isa = profile.header.fingerprint["isa"]
    fmt = profile_int8_format(profile.header)  # a plan makes int8 so, if that ISA uses it
    if fmt["name"] not in [f["name"] for f in int8_formats(isa)]:
        fmt = int8_format(isa)
    wanted = graph_record(supernet_config, isa, options.task, options.optimize, options.opset,
                          int8=fmt)
    differences = graph_differences(profile.header.graph, wanted, "int8" in profile.precisions)
    if differences:
        raise PlannerError(f"profile {profile.path} timed another graph than this export would "
                           f"write ({'; '.join(differences)}); a latency budget is planned for "
                           "optimized feature-extraction exports at the profile's opset")
    profile.check_trust(allow_unreliable)


def allowed_precisions(profile: DeviceProfile, device: str, precision: str) -> list[str]:
    """The precisions a plan compares: ``precision`` (or, for auto, every one the device
    runs and the profile has); refuses one the device or profile lacks."""
    if precision != "auto":
        problem = precision_problem(device, precision)
        if problem:
            raise PlannerError(f"{precision} does not run on {device}: {problem}")
        if precision not in profile.precisions:
            raise PlannerError(f"profile {profile.path} has no {precision} measurements (it has "
                               f"{', '.join(profile.precisions)}); remake it with --precision "
                               f"{','.join(profile.precisions + [precision])}")
    allowed = [p for p in DEVICE_PRECISIONS[device] if p in profile.precisions
               and precision in (p, "auto")]
    if not allowed:
        raise PlannerError(f"profile {profile.path} has no precision that runs on {device} "
                           f"(it has {', '.join(profile.precisions)})")
    return allowed


def plan_candidates(profile: DeviceProfile, budget_ms: float, device: str, precision: str,
                    workload: tuple[int, int], percentile: float = DEFAULT_PERCENTILE,
                    dropped: Callable[[Shape], list[str]] | None = None
                    ) -> dict[str, Plan | None]:
    """Each precision's plan at the workload (None where no shape fits); refuses a precision
    the device or profile lacks, a workload outside the profile, and a budget nothing meets."""
    allowed = allowed_precisions(profile, device, precision)
    family = cigar_family(profile.space)
    plans = {p: plan_for_latency(profile, budget_ms, p, *workload, family=family,
                                 percentile=percentile, dropped=dropped)
             for p in allowed}
    if all(plan is None for plan in plans.values()):
        fastest = family[0]
        gone = [dropped(fastest)] if dropped else None
        times = ", ".join(f"{p} {profile.predict([fastest], p, *workload, percentile, gone)[0]:.2f}"
                          f" ms (x{profile.margin(p):.2f} margin)" for p in allowed)
        raise PlannerError(f"a {budget_ms:.4g} ms budget at p{percentile:g} is unattainable at "
                           f"batch {workload[0]} x {workload[1]} tokens on profile "
                           f"{profile.path}: the fastest shape ({fastest}, "
                           f"{fastest.params() / 1e6:.1f}M params) is predicted at {times}")
    return plans


def check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    """The shape families a plan draws from, checked (None: every one, cigar first)."""
    if families is None:
        return PLAN_FAMILIES
    names = tuple(dict.fromkeys(f.strip() for f in families))
    if not names:
        raise PlannerError(f"--families needs at least one of: {', '.join(PLAN_FAMILIES)}")
    for name in names:
        check_choice("shape family", name, PLAN_FAMILIES, PlannerError)
    return names


def choose_family(supernet, profile: DeviceProfile, plan: Plan, names: Sequence[str],
                  judge: "Judge", scores: dict[tuple[int, ...], float],
                  dropped: Callable[[Shape], list[str]] | None,
                  note: Callable[[str], None]) -> tuple[Plan, tuple[Shape, ...], list[dict]]:
    """One precision's shape family: each family's largest shape predicted to fit (as
    ``plan``), screened by the judge in PyTorch before anything is exported (``scores``
    caches a shape's score across precisions); the best family's plan, its shapes, and the
    table of every family's candidate. The first family named wins ties (cigar by default).
    """
    space = profile.space
    plans = {}
    for name in names:
        p = plan_for_latency(profile, plan.budget_ms, plan.precision, plan.batch, plan.seq_len,
                             family=shape_family(name, space), percentile=plan.percentile,
                             dropped=dropped, family_name=name)
        if p is not None:  # every family starts at the smallest shape: all fit, or none
            plans[name] = p
    if len(plans) > 1:
        for p in plans.values():
            if p.shape.widths not in scores:
                scores[p.shape.widths] = judge.screen(supernet, p.shape)
    table = [{"family": name, "shape": list(p.shape.widths), "params": p.shape.params(),
              "predicted_ms": p.predicted_ms, "upper_ms": p.upper_ms,
              "score": scores.get(p.shape.widths)} for name, p in plans.items()]
    best = max(plans, key=lambda n: (round(scores.get(plans[n].shape.widths, 0.0), 4),
                                     -names.index(n)))
    if len(plans) > 1:
        note(f"{plan.precision}: {len(plans)} shape families screened ({judge.short}, PyTorch "
             f"fp32): {families_said(table)}; exporting {best}")
    return plans[best], shape_family(best, space), table


def export_dropped(supernet) -> Callable[[Shape], list[str]]:
    """``shape -> projections its export drops`` for this super network."""
    from .fusion import bottleneck_orders, dropped_projections

    orders = bottleneck_orders(supernet)
    return lambda shape: dropped_projections(orders, shape)


def export_for_budget(supernet, budget: "Budget | float", profile: DeviceProfile,
                      out: str | Path, device: str = "cpu", precision: str = "auto",
                      workload: tuple[int | None, int | None] | None = None,
                      options: ExportOptions = ExportOptions(),
                      calibration: Sequence[str] | None = None, force: bool = False,
                      allow_unreliable: bool = False, max_exports: int = 4,
                      measure: Callable[..., float] | None = None,
                      progress: Callable[[str], None] | None = None,
                      percentile: float = DEFAULT_PERCENTILE,
                      for_device: bool = False,
                      evaluation: TaskData | None = None,
                      teacher=None,
                      measure_seconds: float = MEASURE_SECONDS,
                      families: Sequence[str] | None = None,
                      calibration_name: str = "--calibration") -> BundleManifest:
    """Plan, export, measure latency and fidelity per precision, keep the best that fits.
    ``families``: the shape families drawn from (default every one in
    ``templates.PLAN_FAMILIES``); with more than one, each precision exports the family whose
    fitting shape the judge scores best in PyTorch (:func:`choose_family`).
    ``workload``: (batch, length), either None for the default (``_workload``: the length
    of the longest text given, else the profile's reference size); ``calibration_name``:
    how the plan names the calibration texts (the CLI: ``--calibration FILE``).
    ``evaluation``: labelled data of a task network's task; candidates are then judged by
    the task's metric on it (:func:`make_judge`). ``teacher``: the task's full model
    fine-tuned alone (``train task``'s ``teacher/``), a candidate at its full shape in every
    precision beside the slices: one plan serves loose budgets and tight ones.

    ``measure(bundle_dir, model_file, precision, workload)`` returns milliseconds at the
    budget's percentile (see the module docstring); the default times the bundle with the
    profile's protocol for ``measure_seconds`` (at least the protocol's rounds) and returns
    ``DeviceProfile.measure``'s ``kept_on_ms`` (the percentile's upper confidence bound).
    Tests pass a scripted one, so the loop's logic is checked without depending on this
    machine's timing.
    """
    note = progress or (lambda message: None)
    out = Path(out)
    check_output_dir(out, force)
    percentile = check_percentile(percentile)
    if not isinstance(budget, Budget):
        budget = Budget(float(budget), False, f"{budget:g}ms")
    batch, seq_len, source, inputs = _workload(supernet, profile, workload, calibration,
                                               evaluation, note, calibration_name)
    names = check_families(families)
    allowed_precisions(profile, device, precision)
    check_profile(profile, device, options, supernet.config, allow_unreliable, for_device)
    dropped = export_dropped(supernet)
    budget_ms = profile.budget_ms(budget, (batch, seq_len), percentile,
                                  dropped(profile.space.largest))
    plans = plan_candidates(profile, budget_ms, device, precision, (batch, seq_len), percentile,
                            dropped)
    family = cigar_family(profile.space)
    target = profile.header.fingerprint
    options = _candidate_options(options, profile_int8_format(profile.header), evaluation,
                                 calibration)
    note(f"budget {budget.text or f'{budget_ms:g} ms'}"
         + (f" = {budget_ms:.2f} ms (of the full fp32 model's p{percentile:g})"
            if budget.relative else "")
         + f" at p{percentile:g}, batch {batch} x {seq_len} tokens"
         + ("" if source == "given" else f" ({source})") + f" on {device}"
         + (f", for {target['cpu_model']} (not measured here)" if for_device else ""))
    measured: list[dict] = []  # every measurement the plan made here (DeviceProfile.measure)
    if measure is None and not for_device:
        measure = _measurer(profile, device, percentile, measure_seconds, note, measured)
    judge = make_judge(supernet, options.task, calibration, seq_len, evaluation)
    candidates: list[Candidate] = []
    screened: dict[str, list[dict]] = {}
    scores: dict[tuple[int, ...], float] = {}
    parent = out.parent if out.parent.exists() else None
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=parent) as work:
        for prec, plan in plans.items():
            if plan is None:
                candidates.append(_nothing_fits(profile, prec, family[0], (batch, seq_len),
                                                percentile, dropped, note))
                continue
            plan, chain, screened[prec] = choose_family(supernet, profile, plan, names, judge,
                                                        scores, dropped, note)
            loop = _predicted_only if for_device else _closed_loop
            candidates.append(loop(supernet, profile, plan, chain, Path(work) / prec,
                                   replace(options, int8=prec == "int8"), measure,
                                   max_exports, note, dropped))
        if teacher is not None:
            for prec in plans:
                candidates.append(_teacher_candidate(
                    teacher, profile, prec, budget_ms, (batch, seq_len), percentile,
                    Path(work) / f"teacher-{prec}", replace(options, int8=prec == "int8"),
                    None if for_device else measure, note))
        _int8_format_advice(candidates, options.int8_format, target["isa"], note)
        best = _choose(candidates, judge, Path(work),
                       f"{budget_ms:.4g} ms at p{percentile:g}, batch {batch} x {seq_len} tokens")
        plan_record = {
            "budget_ms": budget_ms, "budget": budget.to_dict(), "percentile": percentile,
            "batch": batch, "seq_len": seq_len,
            "workload_source": source, "inputs": inputs,
            "device": device, "precision": best.precision, "network": best.network,
            "shape": best.shape,
            "params": best.params, "predicted_ms": best.predicted_ms,
            "predicted_upper_ms": best.upper_ms, "measured_ms": best.measured_ms,
            "fidelity": best.fidelity,
            "fidelity_metric": judge.metric,
            "calibration": judge.used, "profile": str(profile.path),
            "measure_seconds": None if for_device else measure_seconds,
            "profile_trust": profile.trust,
            "target": {"fingerprint": target, "for_device": for_device,
                       "verified": not for_device},
            "verification": None,
            "machine_beyond_priced": _beyond_priced(measured, profile),
            "machine_faster": _faster_than_profiled(measured, profile),
            "candidates": [c.to_dict() for c in candidates],
            "families": {"names": list(names), "by_precision": screened,
                         "screened_on": (None if len(names) == 1 else
                                         f"the first {judge.screened_rows} of "
                                         f"{judge.used}" if judge.labelled else judge.used)},
            "method": _method(names, percentile, judge.short,
                              None if for_device else measure_seconds)}
        chosen = Path(work) / best.folder
        manifest = BundleManifest.read(chosen, PlannerError)
        manifest.plan = plan_record
        manifest.write(chosen)
        with atomic_dir(out, force=force) as tmp:
            for item in chosen.iterdir():
                shutil.move(str(item), tmp / item.name)
    note(f"chose {best.label} {','.join(map(str, best.shape))}: "
         + (f"p{percentile:g} {best.measured_ms:.2f} ms measured here" if not for_device else
            f"p{percentile:g} {best.predicted_ms:.2f} ms predicted there (unverified)")
         + f", {judge.short} {best.fidelity:.4f}")
    if plan_record["machine_beyond_priced"]:
        note(f"WARNING: {plan_record['machine_beyond_priced']['said']}")
    if plan_record["machine_faster"]:
        note(f"NOTE: {plan_record['machine_faster']['said']}")
    if inputs and inputs["longer"]:
        note(f"NOTE: {inputs['said']}")
    return manifest


def _workload(supernet, profile: DeviceProfile, workload: tuple[int | None, int | None] | None,
              calibration: Sequence[str] | None, evaluation: TaskData | None,
              note: Callable[[str], None], calibration_name: str = "--calibration"
              ) -> tuple[int, int, str, dict | None]:
    """The budget's batch and length, where the length came from, and the user's texts'
    lengths (``plan.inputs``; None without texts or a tokenizer). A length given is kept; else,
    with the user's texts (--eval, else --calibration), the longest of them in tokens as
    served (at least the profile's shortest), so that every request of texts like these runs
    at or under the length the budget is promised for; else the profile's reference size.
    Texts longer than a length given run slower than the promise: ``inputs`` says how many."""
    from .runtime import token_lengths

    batch, seq_len = workload or (None, None)
    texts = ((evaluation.texts, evaluation.pairs, f"--eval {evaluation.path}")
             if evaluation is not None else (calibration, None, calibration_name)
             if calibration else None)
    lengths = None if texts is None else token_lengths(supernet.config,
                                                       supernet.tokenizer_files, *texts[:2])
    source = "given"
    if seq_len is None and lengths:
        shortest = min(s for _, s in profile.model.grid)
        seq_len = max(max(lengths), shortest)
        source = (f"the longest of the {len(lengths):,} texts of {texts[2]}" if len(lengths) > 1
                  else f"the one text of {texts[2]}")
        note(f"no --seq-len given: the budget is for {seq_len} tokens, {source} in tokens "
             f"(median {statistics.median(lengths):g})")
    elif seq_len is None:
        seq_len, source = profile.reference_workload[1], "the profile's reference size"
    inputs = None
    if lengths:
        longer = sum(n > seq_len for n in lengths)
        inputs = {"texts": texts[2], "count": len(lengths), "longest": max(lengths),
                  "median": statistics.median(lengths), "longer": longer,
                  "said": f"{longer:,} of the {len(lengths):,} texts of {texts[2]} "
                          f"({longer / len(lengths):.1%}) are longer than the {seq_len} tokens "
                          f"the budget is for (the longest: {max(lengths)}); served, they run "
                          f"slower than the promise, and they were judged cut at {seq_len} "
                          "tokens (leave out --seq-len to plan for them all)"}
    return batch or profile.reference_workload[0], seq_len, source, inputs


def _measurer(profile: DeviceProfile, device: str, percentile: float, seconds: float,
              note: Callable[[str], None], measured: list[dict]) -> Callable[..., float]:
    """The plan's ``measure``: a bundle timed with the profile's protocol for ``seconds``,
    said in a line and kept in ``measured``; what it was kept on (``kept_on_ms``)."""
    def measure(bundle: Path, model_file: str, prec: str, w: tuple[int, int]) -> float:
        note(f"{prec}: timing it for {seconds:g} s at batch {w[0]} x {w[1]} (the profile's "
             "protocol, interleaved with its reference graph)")
        m = profile.measure(bundle / model_file, prec, w, device, percentile, seconds=seconds)
        note(f"{prec}: p{percentile:g} {m['kept_on_ms']:.2f} ms over {m['runs']} runs in "
             f"{m['seconds']:.0f} s ({judged_phrase(m, bound=True)})")
        measured.append(m)
        return m["kept_on_ms"]
    return measure


def _versus(ms: float, relation: str, limit: float) -> str:
    """``ms`` against ``limit`` in milliseconds, with two decimals or as many more (up to four)
    as tell them apart: "measured 10.93 ms > 10.93 ms" read as a contradiction (session 52)."""
    digits = next((d for d in (2, 3) if f"{ms:.{d}f}" != f"{limit:.{d}f}"), 4)
    return f"{ms:.{digits}f} ms {relation} {limit:.{digits}f} ms"


def _nothing_fits(profile: DeviceProfile, prec: str, fastest: Shape, workload: tuple[int, int],
                  percentile: float, dropped: Callable[[Shape], list[str]],
                  note: Callable[[str], None]) -> "Candidate":
    """A precision no shape of which is predicted to fit: a candidate that says so."""
    ms = float(profile.predict([fastest], prec, *workload, percentile, [dropped(fastest)])[0])
    note(f"{prec}: no shape fits ({fastest} predicted {ms:.2f} ms at p{percentile:g}, "
         f"x{profile.margin(prec):.2f} margin)")
    return Candidate(prec, None, None, None, None, status="no shape fits",
                     reason=f"the fastest shape is predicted at {ms:.2f} ms "
                            f"(x{profile.margin(prec):.2f} margin)")


def _beyond_priced(measured: list[dict], profile: DeviceProfile) -> dict | None:
    """Where the machine ran slower, while the plan's candidates were measured, than the
    profile's tail prices (``unpriced_slowdown``): the candidates kept and dropped then
    reflect that period, not the speed the profile describes; what to do about it. None
    where every measurement was within what the tail prices."""
    slow = [m for m in measured if unpriced_slowdown(m) is not None]
    if not slow:
        return None
    drift, beyond = max(m["drift"] for m in slow), max(map(unpriced_slowdown, slow))
    return {"measurements": len(slow), "of": len(measured), "max_drift": drift,
            "max_beyond_priced": beyond,
            "said": (f"the machine ran up to {drift:.2f}x its profiled speed in {len(slow)} of "
                     f"the {len(measured)} measurements of this plan, up to {beyond:.2f}x "
                     "beyond the slowdowns the profile's tail prices, so the shapes kept and "
                     "dropped reflect that period: if it passes, plan again (or shaperctl "
                     "verify the bundle then); if the machine runs so from now on, profile it "
                     f"as it is now (shaperctl profile --from {profile.path} --out DIR) and "
                     "plan with that")}


# A plan whose every measurement saw the machine at most this x the profile's time (the
# reference's floor now over the profile's) says the profile describes a slower machine. Seen
# on the Intel class (session 32): the shipped profile of this fingerprint, made two days
# before, against a host running 0.70-0.78x its time in every measurement of a plan.
FASTER = 0.9


def _faster_than_profiled(measured: list[dict], profile: DeviceProfile) -> dict | None:
    """Where the machine ran faster than the profile describes in every measurement of the
    plan: each candidate was judged at the profile's speed (the larger of that and what was
    observed), so the plan keeps the profile's promise but may buy less than this machine
    allows; a profile of it as it runs now says how much more. None otherwise."""
    drifts = [m["drift"] for m in measured]
    if not drifts or max(drifts) > FASTER:
        return None
    lo, hi = min(drifts), max(drifts)
    span = f"{lo:.2f}x" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}x"
    return {"measurements": len(measured), "min_drift": lo, "max_drift": hi,
            "said": (f"the machine ran at {span} the profile's time in all "
                     f"{len(measured)} measurements of this plan, faster than the profile "
                     "describes; each candidate was judged at the profile's speed, so the "
                     "plan keeps the profile's promise but may buy less than this machine "
                     "allows: to plan for it as it runs now, profile it (shaperctl profile "
                     f"--from {profile.path} --out DIR, a few minutes) and plan with that")}


def _int8_format_advice(candidates: list[Candidate], fmt: dict, isa, note) -> None:
    """Where int8 failed its accuracy gate in a format the profile's probe chose for speed,
    say that the ISA's default, the more faithful (runtime.int8_formats), may pass, and how
    to plan with it. Measured on the Intel class's cores with AVX2 only: a sentiment
    classifier's int8 kept 93.8% of labels in U8S8-reduce-range (gate failed, fp32 chosen)
    and 96.9% in U8U8 (int8 chosen)."""
    default = int8_format(isa)
    if fmt["name"] != default["name"] and any(c.precision == "int8"
                                              and c.status == "gate failed" for c in candidates):
        note(f"int8 in {fmt['name']} (the profile's format, the faster here) failed its accuracy "
             f"gate; {default['name']}, this CPU's more faithful format, may pass: plan with a "
             f"profile made with --int8-format {default['name']}, or judge by accuracy with "
             "--eval")


def _candidate_options(options: ExportOptions, int8: dict,
                       evaluation: TaskData | None,
                       calibration: Sequence[str] | None) -> ExportOptions:
    """The export options every candidate is made with: the graphs the profile timed (int8
    all through, no fp32 fallback: a fallback graph is slower than the profile's int8 model
    says; export --shape makes one), in the profile's int8 format (``int8``: the one it
    timed), judged on the user's texts."""
    options = replace(options, int8_fallback=False, int8_format=int8)
    if evaluation is not None:
        # int8 is judged like every candidate, by its accuracy on the user's data: a label
        # agreement gate would drop an int8 model that flips borderline texts both ways (the
        # full MiniLM sentiment classifier: 7.8% of 256 reviews flipped) whatever its
        # accuracy. The agreement on the user's texts is still recorded.
        return replace(options, judge_texts=tuple(evaluation.texts[:256]),
                       judge_pairs=tuple((evaluation.pairs or [])[:256]),
                       int8_min_agreement=None)
    if calibration:
        return replace(options, judge_texts=tuple(calibration))
    return options


def _choose(candidates: list[Candidate], judge: "Judge", work: Path, request: str
            ) -> Candidate:
    """Score every candidate that fits (its export in ``work``) and mark the best: the
    highest fidelity (to 4 decimals), then the fastest; the others' reasons say why not.
    None fits: one error naming every candidate's status (``request``: budget and size)."""
    fitting = [c for c in candidates if c.status == "fits"]
    for c in fitting:
        c.fidelity = judge.score(work / c.folder, _model_file(c.precision))
    if not fitting:
        raise PlannerError(f"no candidate met {request}: "
                           + "; ".join(f"{c.label}: {c.status} ({c.reason})"
                                       for c in candidates))
    best = max(fitting, key=lambda c: (round(c.fidelity, 4), -(c.measured_ms or c.upper_ms)))
    best.status = "chosen"
    for c in fitting:
        if c is not best:
            c.reason = f"{judge.short} {c.fidelity:.4f} < {best.fidelity:.4f} ({best.label})"
    best.reason = (f"highest {judge.short} within the budget" if len(fitting) > 1 else
                   "the only candidate within the budget")
    return best


def _method(names: Sequence[str], percentile: float, judged_by: str,
            measure_seconds: float | None) -> str:
    """The plan's method in words (``measure_seconds`` None: planned for another device)."""
    return (f"per precision and shape family ({', '.join(names)}) the largest shape "
            f"whose predicted p{percentile:g} x the profile's p95 margin fits"
            + ("; the family whose shape scores the highest "
               f"{judged_by} in PyTorch fp32 is exported; " if len(names) > 1 else "; ")
            + ("not measured (planned for the profile's machine)" if measure_seconds is None
               else f"exported, measured for {measure_seconds:g} s with the profile's "
                    "protocol (floor x the profile's tail factor, or the observed "
                    f"percentile's {PLAN_CONFIDENCE:.0%} upper bound if larger), "
                    "stepped down or up, kept only under budget / (1 + the "
                    "profile's noise floor)")
            + "; highest fidelity among those within budget")


@dataclass(frozen=True)
class BudgetRequest:
    """What ``export --latency`` asks for, as given (see :func:`export_checkpoint_for_budget`)."""

    budget: Budget
    profile: Path
    device: str = "cpu"
    precision: str = "auto"
    batch: int | None = None  # None: the profile's reference workload
    seq_len: int | None = None
    calibration: Path | None = None
    allow_unreliable: bool = False
    percentile: float = DEFAULT_PERCENTILE
    for_device: bool = False
    evaluation: Path | None = None  # labelled data: judge candidates by the task's metric
    teacher: Path | None = None  # train task's teacher/: a candidate beside the slices
    measure_seconds: float = MEASURE_SECONDS  # each candidate's timing (0: the protocol's rounds)
    families: tuple[str, ...] | None = None  # shape families drawn from (None: every one)


def export_checkpoint_for_budget(supernet_path: str | Path, request: BudgetRequest,
                                 out: str | Path, options: ExportOptions = ExportOptions(),
                                 force: bool = False, widths: Sequence[int] | None = None,
                                 progress: Callable[[str], None] | None = None
                                 ) -> BundleManifest:
    """:func:`export_for_budget` from a super network on disk, every check that needs no
    model done before it loads (seconds, not a minute): the profile (another machine or
    graph, trust), the workload, the precision, and whether the budget is attainable at all
    (at the fastest shape with every projection computed)."""
    from .errors import CheckpointError
    from .fidelity import read_calibration
    from .supernet import read_checkpoint_header
    from .supernet.checkpoint import load_supernet

    note = progress or (lambda message: None)
    check_families(request.families)
    profile = DeviceProfile.load(request.profile)
    calibration = read_calibration(request.calibration) if request.calibration else None
    workload = None  # the length, where not given, may come from the texts (_workload)
    if request.batch is not None or request.seq_len is not None:
        workload = (request.batch, request.seq_len)
    config = None
    try:
        config = read_checkpoint_header(supernet_path, widths)["config"]
        check_profile(profile, request.device, options, config, request.allow_unreliable,
                      request.for_device)
    except CheckpointError:
        pass  # not our format (a SuperShaper repo checkpoint): checked after loading
    if request.seq_len is not None or not (request.calibration or request.evaluation):
        w = (request.batch or profile.reference_workload[0],
             request.seq_len or profile.reference_workload[1])
        plan_candidates(profile, profile.budget_ms(request.budget, w, request.percentile),
                        request.device, request.precision, w, request.percentile)
    evaluation = None
    if request.evaluation is not None:
        head = config.task_head if config is not None else None
        if head is None:
            raise PlannerError(f"--eval needs a task super network (shaperctl train task); "
                               f"{supernet_path} has no task head")
        evaluation = read_task_data(request.evaluation, head.text_column, head.label_column,
                                    head.pair_column or None, head.problem == "regression",
                                    trained_on=f"task network {supernet_path}")
    note(f"loading {supernet_path}")
    model = load_supernet(supernet_path, widths)
    teacher = None
    if request.teacher is not None:
        teacher = load_supernet(request.teacher).eval()
        if teacher.config.space != model.config.space or \
                teacher.config.task_head != model.config.task_head:
            raise PlannerError(f"--teacher {request.teacher} is not this task network's teacher "
                               "(another design space or task head); give the teacher/ that "
                               "shaperctl train task wrote beside its supernet/")
    return export_for_budget(model, request.budget, profile, out, request.device,
                             request.precision, workload, options, calibration, force=force,
                             allow_unreliable=request.allow_unreliable, progress=progress,
                             percentile=request.percentile, for_device=request.for_device,
                             evaluation=evaluation, teacher=teacher,
                             measure_seconds=request.measure_seconds,
                             families=request.families,
                             calibration_name=f"--calibration {request.calibration}")


def record_prediction(bundle: str | Path, profile: DeviceProfile, device: str,
                      percentile: float = DEFAULT_PERCENTILE,
                      for_device: bool = False) -> BundleManifest:
    """Add ``profile``'s predicted latency of the bundle's shape at the profile's reference
    size, for each profiled precision, to the bundle's manifest (export --profile, no budget).

    An int8 model that fell back to fp32 in part (export's ``int8_fallback``) is predicted
    between the two: int8 + share x (fp32 - int8), the share being the fp32 nodes' part of
    the quantizable weights (a linear layer's multiply-adds per token). Measured on the
    Intel VNNI class (docs/benchmarks.md), keeping the fused bottlenecks fp32 (7.7% of the full
    MiniLM's weights) cost 7-10% of int8's latency; the share predicts 9% at 1x128."""
    differences = profile.check_device(device, for_device)
    manifest = BundleManifest.read(bundle, PlannerError)
    shape = Shape(tuple(manifest.shape), profile.space)
    b, s = profile.reference_workload
    fallback = (manifest.quantization or {}).get("fallback") or {}
    share = fallback.get("fp32_weight_share", 0.0) if fallback.get("passed") else 0.0
    ms = {p: float(profile.predict([shape], p, b, s, percentile,
                                   [list(manifest.dropped_identities)])[0])
          for p in profile.precisions}
    manifest.predicted_latency = []
    for p in profile.precisions:
        entry = {"profile": str(profile.path), "precision": p, "batch": b, "seq_len": s,
                 "percentile": percentile, "predicted_ms": ms[p],
                 "profile_reliable": profile.trust["reliable"],
                 "profile_machine_differs": differences}
        if p == "int8" and share and "fp32" in ms:
            entry.update(predicted_ms=ms[p] + share * (ms["fp32"] - ms[p]),
                         all_int8_predicted_ms=ms[p], fp32_weight_share=share)
        entry["predicted_upper_ms"] = entry["predicted_ms"] * profile.margin(p)
        manifest.predicted_latency.append(entry)
    manifest.write(bundle)
    return manifest


def _model_file(precision: str) -> str:
    return INT8_FILE if precision == "int8" else MODEL_FILE


def _export(supernet, plan: Plan, folder: Path, options: ExportOptions,
            note: Callable[[str], None], margin: float, measured: bool = True) -> str | None:
    """Export ``plan``'s shape into ``folder``; None, or the reason an int8 export failed its
    accuracy gate (an fp32 failure is an error)."""
    raw = plan.predicted_ms / plan.correction  # the profile's prediction, as the table lists it
    note(f"{plan.precision}: exporting {plan.shape} ({plan.shape.params() / 1e6:.1f}M params, "
         f"predicted p{plan.percentile:g} {raw:.2f} ms, {raw * margin:.2f} ms with the "
         f"x{margin:.2f} margin"
         + ("" if plan.correction == 1 else
            f"; planned at {plan.upper_ms:.2f} ms, scaled by how the shapes measured so far "
            "ran against their predictions")
         + ("" if measured else "; not measured here") + ")")
    try:
        export_bundle(supernet, plan.shape, folder, options,
                      progress=lambda m: None if m.startswith("wrote ") else note(m))
    except ExportError as exc:
        if plan.precision != "int8":
            raise
        return str(exc).split(";")[0]
    return None


def kept_under(profile: DeviceProfile, precision: str, budget_ms: float) -> float:
    """The measured latency a candidate must not exceed to be kept: the budget with the
    profile's noise floor to spare (see _ClosedLoop)."""
    return budget_ms / (1 + profile.noise(precision))


def judged_ms(measure_once: Callable[[], float], label: str, predicted: float, limit: float,
              noise: float, note: Callable[[str], None]) -> float:
    """A candidate's measured latency as the plan judges it, the same for every candidate
    (a slice in the closed loop, the teacher): ``measure_once`` times it once; a miss of
    ``limit`` (``kept_under``) is measured once more and judged on the median of the two; a
    fit the profile's prediction says is over ``limit``, or one within the profile's
    ``noise`` floor under it, on the slower of the two.

    The second look at a miss: no candidate drops out on one window of a shared host alone
    (until session 58 the teacher did: on the Intel family 6 model 207 VM the fine-tuned
    teacher's int8 measured p90 13.40 ms in one 10-s window, where the same shape sliced from
    the task network had measured 5.57 ms a minute before). The second look
    at a fit against the prediction: on the AMD Zen 4 VM (session 51) a step up to the full
    fp32 model at 95% of its own p90 at 1 x 32 measured 7.20 ms under a 7.57 ms budget
    (predicted 7.97) in one 10-s window and 8.25 ms in `verify`'s minute: a fast window
    bought a shape the profile said does not fit. Of 118 budget plans verified in
    benchmarks/results/relative_budgets*.json, verify judged a median 1.00x and a p90 1.08x
    what export had measured, the worst 1.36x. The second look at a fit within the noise
    floor of ``limit``: of the 136 plans verified there by session 59, the 2 that `verify`
    found over had measured at 0.95x and 0.96x their budget at export, none of the 123 under
    0.95x did; and in session 59's demo on the Intel family 6 model 207 VM with its ISA
    masked to AVX2 the int8 full model measured 20.33 ms under a limit of 20.34 (the 20.71
    ms budget with its 1.8% noise floor to spare, predicted 16.62) in one 10-s window and
    p90 21.88 ms in `verify`'s 300 s: one window at the edge may have been a fast one."""
    ms = measure_once()
    if ms > limit:
        note(f"{label}: measured {_versus(ms, '>', limit)}; measuring again to rule out noise")
        return statistics.median([ms, measure_once()])
    if predicted > limit or ms > limit / (1 + noise):
        why = (f"though predicted {predicted:.2f} ms" if predicted > limit else
               f"within its {noise:.1%} noise floor")
        note(f"{label}: measured {_versus(ms, '<=', limit)} {why}; measuring again, the "
             "slower of the two kept")
        return max(ms, measure_once())
    return ms


def _teacher_candidate(teacher, profile: DeviceProfile, prec: str, budget_ms: float,
                       workload: tuple[int, int], percentile: float, folder: Path,
                       options: ExportOptions, measure, note: Callable[[str], None]
                       ) -> Candidate:
    """The teacher's full shape in ``prec``: exported and measured if predicted to fit
    (``measure`` None: planned for another machine, judged by prediction x margin)."""
    full = profile.space.largest
    drop = export_dropped(teacher)(full)
    ms = float(profile.predict([full], prec, *workload, percentile, [drop])[0])
    upper = ms * profile.margin(prec)
    cand = Candidate(prec, list(full.widths), full.params(), ms, upper, network="teacher")
    if upper > budget_ms:
        cand.status = "over budget"
        cand.reason = (f"predicted {ms:.2f} ms, {upper:.2f} ms with the x"
                       f"{profile.margin(prec):.2f} margin")
        note(f"teacher {prec}: not exported ({cand.reason} > {budget_ms:.2f} ms)")
        return cand
    note(f"teacher {prec}: exporting the full fine-tuned model (predicted p{percentile:g} "
         f"{ms:.2f} ms, {upper:.2f} ms with the margin)")
    try:
        export_bundle(teacher, full, folder, options,
                      progress=lambda m: None if m.startswith("wrote ") else note(m))
    except ExportError as exc:
        if prec != "int8":
            raise
        cand.status, cand.reason = "gate failed", str(exc).split(";")[0]
        return cand
    if measure is None:
        cand.status = "fits"
        return cand
    limit = kept_under(profile, prec, budget_ms)
    cand.measured_ms = judged_ms(lambda: measure(folder, _model_file(prec), prec, workload),
                                 f"teacher {prec}", ms, limit, profile.noise(prec), note)
    cand.exports.append({"shape": list(full.widths), "measured_ms": cand.measured_ms,
                         "kept_under_ms": limit})
    if cand.measured_ms <= limit:
        cand.status = "fits"
    else:
        cand.status = "over budget"
        cand.reason = (f"measured {_versus(cand.measured_ms, '>', limit)} ({budget_ms:.2f} "
                       f"ms with the {profile.noise(prec):.1%} noise floor to spare)")
    return cand


def _predicted_only(supernet, profile: DeviceProfile, plan: Plan, family: Sequence[Shape],
                    folder: Path, options: ExportOptions, measure, max_exports: int,
                    note: Callable[[str], None], dropped) -> Candidate:
    """A plan for another machine: the planned shape exported, its fit by prediction x margin
    (nothing measured here). An int8 shape failing its gate drops out."""
    prec = plan.precision
    cand = Candidate(prec, list(plan.shape.widths), plan.shape.params(), plan.predicted_ms,
                     plan.upper_ms, family=plan.family)
    failed = _export(supernet, plan, folder, options, note, profile.margin(prec),
                     measured=False)
    if failed:
        cand.status, cand.reason = "gate failed", failed
        return cand
    cand.exports.append({**plan.to_dict(), "measured_ms": None, "within_budget": None})
    cand.status = "fits"
    return cand


def _closed_loop(supernet, profile: DeviceProfile, plan: Plan, family: Sequence[Shape],
                 folder: Path, options: ExportOptions, measure, max_exports: int,
                 note: Callable[[str], None], dropped=None) -> Candidate:
    """Export and measure one precision's plan until it fits as tightly as the loop allows.

    The fitting bundle ends in ``folder``; returns its candidate (status fits, over budget,
    or gate failed).
    """
    return _ClosedLoop(supernet, profile, plan, family, folder, options, measure, max_exports,
                       note, dropped).run()


class _ClosedLoop:
    """One precision's closed loop (``_closed_loop``): each planned shape exported and
    measured; after a fit, a step up to the largest shape the observed ratio allows; after a
    miss, a re-plan with the predictions scaled by it (or, above a kept shape, one between);
    after an int8 accuracy gate failure, once, the next smaller shape. Every shape is kept
    only if it measures ``limit``: the budget with the profile's noise floor (how far two
    measurements of one model stray) to spare, so that the plan still holds when it is
    measured again later (verify, bench), not only now. (Keeping a shape at anything up to
    the budget itself broke the promise on the AMD Zen 2 class: a plan measured 15.96 ms
    under a 17.27 ms budget, 7.6% to spare at an 8% noise floor, measured 17.52 ms in
    verify.) A shape the profile predicts over ``limit`` that measures under it is measured
    again and judged on the slower of the two (since session 51)."""

    def __init__(self, supernet, profile: DeviceProfile, plan: Plan, family: Sequence[Shape],
                 folder: Path, options: ExportOptions, measure, max_exports: int,
                 note: Callable[[str], None], dropped) -> None:
        self.supernet, self.profile, self.plan, self.family = supernet, profile, plan, family
        self.folder, self.options, self.measure, self.note = folder, options, measure, note
        self.max_exports, self.dropped = max_exports, dropped
        self.prec, self.budget, self.w = plan.precision, plan.budget_ms, (plan.batch,
                                                                          plan.seq_len)
        self.margin = profile.margin(self.prec)
        self.slack = 1 + profile.noise(self.prec)
        self.limit = kept_under(profile, self.prec, self.budget)
        self.index = {s.widths: i for i, s in enumerate(family)}
        self.cand = Candidate(self.prec, list(plan.shape.widths), plan.shape.params(),
                              plan.predicted_ms, plan.upper_ms, family=plan.family)
        self.tried: dict[tuple[int, ...], float] = {}  # measured ms (inf: failed the gate)
        self.best: tuple[Plan, float] | None = None  # the largest shape kept, and its ms

    def run(self) -> Candidate:
        shape_plan: Plan | None = self.plan
        while shape_plan is not None and len(self.tried) < self.max_exports:
            attempt = self.folder.with_name(f"{self.folder.name}.try{len(self.tried)}")
            reason = _export(self.supernet, shape_plan, attempt, self.options, self.note,
                             self.margin)
            shape_plan = (self._gate_failed(shape_plan, reason) if reason
                          else self._measured(shape_plan, attempt))
        if self.cand.status == "gate failed":
            return self.cand
        return self._result()

    def _replan(self, family: Sequence[Shape], correction: float) -> Plan | None:
        return plan_for_latency(self.profile, self.budget, self.prec, *self.w,
                                correction=correction, family=family,
                                percentile=self.plan.percentile, dropped=self.dropped,
                                family_name=self.plan.family)

    def _step_up(self, ratio: float, above: Plan) -> Plan | None:
        """The largest shape ``ratio`` lets fit among those larger than ``above`` (kept) and
        smaller than every shape that measured over, not tried yet: after the first shape
        missed and the re-plan fell far below it, the sizes between are tried too (the
        ratio a miss gave, spikes and all, need not hold for a smaller shape). It is measured
        next, so it is planned with the ratio seen and the noise floor instead of the margin,
        which covers the prediction's error."""
        over = [self.index[k] for k, ms in self.tried.items() if ms > self.limit]
        between = [s for s in self.family[self.index[above.shape.widths] + 1:
                                          min(over, default=len(self.family))]
                   if s.widths not in self.tried]
        return self._replan(between, ratio * self.slack / self.margin) if between else None

    def _gate_failed(self, shape_plan: Plan, reason: str) -> Plan | None:
        """After an export failed int8's accuracy gate: what to export next (None: stop)."""
        cand, note = self.cand, self.note
        cand.exports.append({**shape_plan.to_dict(), "gate_failed": reason})
        if self.best is not None:  # a step up failed the gate: keep the shape that fit
            note(f"int8: {shape_plan.shape} failed the accuracy gate ({reason}); keeping "
                 f"{self.best[0].shape}")
            return None
        # Nothing kept yet and a shape failed the gate (seen at cosine 0.945-0.946 of 0.95 on
        # the AMD Zen 2 class, where smaller shapes passed; once as a first shape, once as the
        # re-plan after a miss): once, the largest smaller shape that fits and was not tried
        # is; the failed one bounds every step up like a shape over budget.
        failures = sum(ms == math.inf for ms in self.tried.values())
        self.tried[shape_plan.shape.widths] = math.inf
        below = [s for s in self.family[:self.index[shape_plan.shape.widths]]
                 if s.widths not in self.tried]
        smaller = self._replan(below, shape_plan.correction) if below else None
        if failures or smaller is None or len(self.tried) >= self.max_exports:
            cand.status, cand.reason = "gate failed", reason
            note(f"int8 dropped: {reason}; fp32 remains")
            return None
        note(f"int8: {shape_plan.shape} failed the accuracy gate ({reason}); trying the next "
             f"smaller shape that fits, {smaller.shape}")
        return smaller

    def _measured(self, shape_plan: Plan, attempt: Path) -> Plan | None:
        """Measure an exported shape, keep it if it fits; what to export next (None: stop)."""
        prec, limit, note = self.prec, self.limit, self.note
        predicted = shape_plan.predicted_ms / shape_plan.correction  # the profile's
        ms = judged_ms(lambda: self.measure(attempt, _model_file(prec), prec, self.w), prec,
                       predicted, limit, self.profile.noise(prec), note)
        ratio = ms / predicted
        self.tried[shape_plan.shape.widths] = ms
        self.cand.exports.append({**shape_plan.to_dict(), "measured_ms": ms,
                                  "within_budget": ms <= self.budget, "kept_under_ms": limit})
        if ms <= limit:
            if self.best is None or shape_plan.shape.params() > self.best[0].shape.params():
                if self.folder.exists():
                    shutil.rmtree(self.folder)
                attempt.rename(self.folder)
                self.best = (shape_plan, ms)
            nxt = self._step_up(ratio, shape_plan)
            if nxt is not None:
                note(f"{prec}: {ms:.2f} ms leaves room for a larger shape (observed / "
                     f"predicted {ratio:.2f}, noise {self.slack - 1:.1%}); stepping up to "
                     f"{nxt.shape}")
            return nxt
        shutil.rmtree(attempt, ignore_errors=True)
        if self.best is not None:  # a step up missed: one between it and the kept shape, if any
            nxt = self._step_up(ratio, self.best[0])
            if nxt is not None:
                note(f"{prec}: {shape_plan.shape} measured {_versus(ms, '>', limit)}; trying "
                     f"{nxt.shape} between it and {self.best[0].shape}")
            return nxt
        correction = max(shape_plan.correction, ratio)
        note(f"{prec}: missed the budget ({_versus(ms, '>', limit)}, the budget with the "
             f"{self.slack - 1:.1%} noise floor to spare); re-planning with predictions scaled "
             f"by {correction:.3f}")
        nxt = self._replan(self.family, correction)
        if nxt is not None and nxt.shape.widths in self.tried:
            smaller = self.index[nxt.shape.widths] - 1
            nxt = replace(nxt, shape=self.family[smaller]) if smaller >= 0 else None
        return nxt

    def _result(self) -> Candidate:
        cand = self.cand
        if self.best is None:
            measured = [ms for ms in self.tried.values() if ms != math.inf]  # not gate failures
            cand.status = "over budget"
            cand.reason = (f"{len(measured)} export(s) measured over {self.limit:.4g} ms "
                           f"({self.budget:.4g} ms with the {self.slack - 1:.1%} noise floor to "
                           "spare)" if measured else "no shape fits after correction")
            return cand
        final, ms = self.best
        cand.shape, cand.params = list(final.shape.widths), final.shape.params()
        cand.predicted_ms, cand.upper_ms, cand.measured_ms = (
            final.predicted_ms / final.correction, final.upper_ms / final.correction, ms)
        cand.status = "fits"
        return cand
