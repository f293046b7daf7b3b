"""Picking the sub-network for a latency budget, and checking it on the device after export.

1. Plan: search over parameter counts (bisection) for the largest count whose cigar shape's
   predicted latency, plus the predictor's held-out 95th-percentile error, fits the budget.
   The prediction is of the cigar shape itself (per-layer widths are features), so the plan
   does not assume that latency depends on the parameter count alone.
2. Export that shape.
3. Measure the bundle with the profile's protocol, interleaved with the profile's reference
   model, so the number is on the profile's scale with today's drift divided out.
4. A miss is measured once more; if it stands, the plan is redone with the predictor scaled
   by the observed measured/predicted ratio. A miss caused by noise therefore costs one
   re-measurement, not a step down.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from .errors import PlannerError
from .export import ExportOptions, export_bundle
from .heuristics import cigar_shape
from .io import atomic_dir, atomic_write_bytes, check_output_dir
from .predictor import LatencyPredictor
from .profiling.fingerprint import device_fingerprint, fingerprint_differences
from .profiling.profile import GraphSessions, read_header, read_measurements
from .profiling.protocol import Protocol, inputs_for, measure_interleaved
from .runtime import make_session
from .shape import Shape
from .supernet.config import SuperConfig
from .supernet.model import SuperBert

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|us)?\s*$", re.IGNORECASE)


def parse_budget(text: str) -> float:
    """'20ms', '0.02s', '20' (milliseconds), '500us' -> milliseconds."""
    m = _BUDGET.match(str(text))
    if not m:
        raise PlannerError(f"cannot read latency budget {text!r}: expected a number with an "
                           "optional unit ms, s or us, like 20ms, 0.02s or 20")
    value = float(m.group(1)) * {"ms": 1.0, "s": 1000.0, "us": 0.001, None: 1.0}[
        (m.group(2) or "").lower() or None]
    if value <= 0:
        raise PlannerError(f"latency budget must be positive, got {text!r}")
    return value


@dataclass
class Plan:
    shape: Shape
    predicted_ms: float  # the predictor's median latency
    upper_ms: float  # with the held-out p95 error margin (and any closed-loop correction)
    budget_ms: float
    precision: str
    profile: str
    evaluations: int  # distinct shapes whose latency was predicted during the search

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape.widths)
        d["params"] = self.shape.params()
        return d


def plan_for_latency(predictor: LatencyPredictor, budget_ms: float, profile: str = "",
                     correction: float = 1.0) -> Plan:
    """The cigar shape with the most parameters whose safe latency fits the budget.

    ``correction`` multiplies every prediction (the closed loop's measured/predicted ratio).
    """
    space = predictor.space
    predicted: dict[tuple[int, ...], tuple[float, float]] = {}

    def safe(shape: Shape) -> tuple[float, float]:
        # Many parameter counts map to one cigar shape: predict each shape once.
        if shape.widths not in predicted:
            median = float(predictor.predict([shape])[0]) * correction
            predicted[shape.widths] = (median, median * predictor.margin)
        return predicted[shape.widths]

    lo_p, hi_p = space.smallest.params(), space.largest.params()
    fastest = cigar_shape(lo_p, space)
    median, upper = safe(fastest)
    if upper > budget_ms:
        raise PlannerError(
            f"a {budget_ms:g} ms budget is unattainable on profile {profile or 'given'}: the "
            f"fastest shape ({fastest}, {fastest.params() / 1e6:.1f}M params) is predicted at "
            f"{median:.2f} ms, {upper:.2f} ms with the p95 error margin")
    best = (fastest, median, upper)
    top = cigar_shape(hi_p, space)
    m_top, u_top = safe(top)
    if u_top <= budget_ms:
        best = (top, m_top, u_top)
    else:
        while hi_p - lo_p > max(1, space.hidden_size):  # parameter counts, not shapes
            mid = (lo_p + hi_p) // 2
            shape = cigar_shape(mid, space)
            m, u = safe(shape)
            if u <= budget_ms:
                lo_p, best = mid, max(best, (shape, m, u), key=lambda b: b[0].params())
            else:
                hi_p = mid
    shape, median, upper = best
    precision = predictor.meta["protocol"]["precision"]
    return Plan(shape, median, upper, budget_ms, precision, profile, len(predicted))


def load_profile_predictor(profile: str | Path, device: str,
                           warn: Callable[[str], None]) -> LatencyPredictor:
    """The profile's predictor, refusing another device kind and warning on another machine."""
    header = read_header(profile)
    fp = header["fingerprint"]
    if fp["device"] != device:
        raise PlannerError(f"profile {profile} was measured on {fp['device']}, but --device is "
                           f"{device}; pass --device {fp['device']} or a {device} profile")
    differences = fingerprint_differences(fp, device_fingerprint(device))
    if differences:
        warn(f"WARNING: profile {profile} was measured on another machine "
             f"({'; '.join(differences[:3])}); its predictions may not hold here")
    return LatencyPredictor.load(profile)


def choose_precision(plans: dict[str, Plan]) -> tuple[Plan, str]:
    """The plan that fits the most parameters; and why."""
    best = max(plans.values(), key=lambda p: (p.shape.params(), p.precision == "fp32"))
    if len(plans) == 1:
        return best, f"only a {best.precision} profile was given"
    others = ", ".join(f"{p.precision}: {p.shape.params() / 1e6:.1f}M params "
                       f"({p.upper_ms:.2f} ms)" for p in plans.values() if p is not best)
    return best, (f"{best.precision} fits {best.shape.params() / 1e6:.1f}M params within "
                  f"{best.budget_ms:g} ms ({best.upper_ms:.2f} ms with margin); {others}")


def measure_bundle(bundle: str | Path, profile: str | Path, device: str) -> dict[str, Any]:
    """The bundle's latency under the profile's protocol, on the profile's scale.

    The bundle and the profile's reference model are timed interleaved; the bundle's median
    is scaled by (the reference's median in the profile) / (the reference's median now).
    """
    bundle, profile = Path(bundle), Path(profile)
    header = read_header(profile)
    protocol = Protocol.from_dict(header["protocol"])
    config = SuperConfig.from_dict(header["config"])
    manifest = json.loads((bundle / "shaper.json").read_text())
    model_file = manifest["default_model"]
    feeds = inputs_for(protocol, config.space.vocab_size)
    session = make_session(bundle / model_file, device, threads=protocol.threads)
    names = [o.name for o in session.get_outputs()]
    with tempfile.TemporaryDirectory(prefix="shaper-measure-") as work:
        sessions = GraphSessions(Path(work), config, protocol, device)
        reference = sessions.build(Shape(tuple(header["reference_shape"]), config.space))
        results = measure_interleaved({"bundle": lambda: session.run(names, feeds),
                                       "reference": reference}, protocol, seed=7)
    ref_profile = statistics.median(r["reference_ms"] for r in read_measurements(profile))
    ref_now = results["reference"]["median_ms"]
    raw = results["bundle"]["median_ms"]
    return {"measured_ms": raw * ref_profile / ref_now, "raw_ms": raw,
            "reference_ms_now": ref_now, "reference_ms_profile": ref_profile,
            "cv": results["bundle"]["cv"], "model": model_file,
            "protocol": protocol.to_dict()}


def make_plan(budget_ms: float, profiles: list[str | Path], device: str, precision: str,
              space, warn: Callable[[str], None]
              ) -> tuple[Plan, str, dict[str, tuple[LatencyPredictor, str]]]:
    """Load the profiles, plan per precision, choose one: (plan, why, predictors)."""
    if precision not in ("fp32", "int8", "auto"):
        raise PlannerError(f"unknown precision {precision!r}; allowed: fp32, int8, auto")
    if not profiles:
        raise PlannerError("a latency budget needs --profile (a profile of this device)")
    predictors: dict[str, tuple[LatencyPredictor, str]] = {}
    for path in profiles:
        predictor = load_profile_predictor(path, device, warn)
        if predictor.space != space:
            raise PlannerError(f"profile {path} covers another design space than the super "
                               "network; profile it with --supernet")
        p = predictor.meta["protocol"]["precision"]
        if p in predictors:
            raise PlannerError(f"two {p} profiles given; give at most one per precision")
        predictors[p] = (predictor, str(path))
    wanted = [p for p in predictors if precision in (p, "auto")]
    if not wanted:
        raise PlannerError(f"no {precision} profile given (have: {', '.join(predictors)}); "
                           f"measure one with: shaperctl profile --device {device}"
                           f"{' --int8' if precision == 'int8' else ''} --out DIR")
    plans = {p: plan_for_latency(predictors[p][0], budget_ms, predictors[p][1]) for p in wanted}
    plan, why = choose_precision(plans)
    return plan, why, predictors


def export_for_budget(supernet: SuperBert, budget_ms: float, profiles: list[str | Path],
                      out: str | Path, device: str = "cpu", precision: str = "fp32",
                      options: ExportOptions = ExportOptions(), force: bool = False,
                      max_attempts: int = 4,
                      progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Plan, export, measure, and step down until the bundle meets the budget on this device."""
    note = progress or (lambda message: None)
    out = Path(out)
    check_output_dir(out, force)
    plan, why, predictors = make_plan(budget_ms, profiles, device, precision,
                                      supernet.config.space, note)
    note(f"plan: {plan.shape} ({plan.shape.params() / 1e6:.1f}M params, {plan.precision}), "
         f"predicted {plan.predicted_ms:.2f} ms ({plan.upper_ms:.2f} ms with margin); {why}")
    predictor, profile = predictors[plan.precision]
    export_opts = replace(options, int8=plan.precision == "int8")
    attempts: list[dict[str, Any]] = []
    correction = 1.0
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent if
                                     out.parent.exists() else None) as work:
        for attempt in range(max_attempts):
            candidate = Path(work) / f"attempt{attempt}"
            # Attempts live in a temporary folder; only the accepted one is moved to --out.
            export_bundle(supernet, plan.shape, candidate, export_opts,
                          progress=lambda m: None if m.startswith("wrote ") else note(m))
            note(f"measuring {plan.shape} on {device} with the profile's protocol")
            m = measure_bundle(candidate, profile, device)
            if m["measured_ms"] > budget_ms:
                note(f"measured {m['measured_ms']:.2f} ms > {budget_ms:g} ms; measuring again "
                     "to rule out noise")
                again = measure_bundle(candidate, profile, device)
                m["measured_ms"] = statistics.median([m["measured_ms"], again["measured_ms"]])
                m["remeasured"] = True
            record = {**plan.to_dict(), **{k: m[k] for k in ("measured_ms", "raw_ms", "cv")},
                      "correction": correction, "within_budget": m["measured_ms"] <= budget_ms}
            attempts.append(record)
            if record["within_budget"]:
                return _finish(candidate, out, force, plan, m, attempts, why, device, budget_ms)
            ratio = m["measured_ms"] / (plan.predicted_ms / correction)
            correction = max(correction, ratio)
            note(f"missed the budget ({m['measured_ms']:.2f} ms); re-planning with predictions "
                 f"scaled by {correction:.3f}")
            # measured > budget >= the plan's upper bound, so the ratio exceeds the old
            # correction and this shape cannot be chosen again.
            plan = plan_for_latency(predictor, budget_ms, profile, correction)
    raise PlannerError(f"no export met {budget_ms:g} ms after {max_attempts} attempts; last: "
                       f"{attempts[-1]['shape']} measured {attempts[-1]['measured_ms']:.2f} ms")


def _finish(candidate: Path, out: Path, force: bool, plan: Plan, m: dict[str, Any],
            attempts: list[dict[str, Any]], why: str, device: str, budget_ms: float
            ) -> dict[str, Any]:
    manifest = json.loads((candidate / "shaper.json").read_text())
    manifest["plan"] = {
        "budget_ms": budget_ms, "device": device, "precision": plan.precision,
        "precision_reason": why, "profile": plan.profile, "shape": list(plan.shape.widths),
        "params": plan.shape.params(), "predicted_ms": plan.predicted_ms,
        "predicted_upper_ms": plan.upper_ms, "measured_ms": m["measured_ms"],
        "measured_raw_ms": m["raw_ms"], "measurement": m, "attempts": attempts,
        "method": "largest cigar shape whose predicted latency + held-out p95 error fits; "
                  "measured after export with the profile's protocol"}
    atomic_write_bytes(candidate / "shaper.json", (json.dumps(manifest, indent=2) + "\n").encode())
    with atomic_dir(out, force=force) as tmp:
        for item in candidate.iterdir():
            shutil.move(str(item), tmp / item.name)
    return manifest
