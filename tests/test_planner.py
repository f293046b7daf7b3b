"""The planner's logic, checked with scripted latencies (no wall-clock assertions): real
profiles, real exports and real fidelity on tiny networks; measurement is a function."""

import collections
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import PlannerError, ProfileError
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.fusion import drop_identities, fuse_bottlenecks
from shaper_deploy.heuristics import cigar_family, cigar_shape
from shaper_deploy.planner import export_for_budget, plan_for_latency
from shaper_deploy.promise import parse_budget
from shaper_deploy.quantize import int8_record
from shaper_deploy.profiling.predictor import DeviceProfile
from shaper_deploy.runtime import cpu_model_and_flags, int8_format
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import SuperBert, SuperConfig, save_supernet, supernet_from_hf

from .conftest import PLAN_SPACE, make_inputs, randomize

CONFIG = SuperConfig(PLAN_SPACE, pooler=True)
CIGAR = ("cigar",)  # the closed loop's tests walk the fine cigar family


@pytest.fixture
def supernet():
    return randomize(SuperBert(CONFIG), seed=3).eval()


@pytest.fixture(scope="module")
def reliable_profile(tiny_profile, tmp_path_factory):
    """The tiny profile with a known latency law and marked reliable. Its measured latencies
    are sub-millisecond overhead and noise, flat across shapes; these tests script the
    measured latencies, so the law only has to grow with the shape: sum_i (d_i/D)^2 ms at 16
    tokens, proportional to tokens, int8 at half the fp32 cost. Trust is tested apart."""
    import hashlib

    from shaper_deploy.profiling.predictor import feature_names

    out = tmp_path_factory.mktemp("reliable") / "tiny"
    shutil.copytree(tiny_profile, out)
    meta = json.loads((out / "predictor.json").read_text())
    header = json.loads((out / "profile.json").read_text())
    names = feature_names(PLAN_SPACE)
    for precision, points in meta["coef"].items():
        for key in points:
            b, s = map(int, key.split("x"))
            coef = [0.0] * len(names)
            coef[names.index("layer_width_sq")] = b * s / 16 * (1.0 if precision == "fp32" else 0.5)
            coef[names.index("constant")] = 0.05
            points[key] = coef
    for precision in meta["metrics"]:
        meta["metrics"][precision]["held_out"]["mape"] = 0.02
        meta["margin"][precision] = 1.05
        header["summary"]["precisions"][precision]["noise_floor"]["median_abs_rel_diff"] = 0.01
        slow = header["summary"]["precisions"][precision].get("slow_floors")
        if slow:  # a calm machine: no floor from a slow group (the gate is tested apart)
            slow.update(slow=0, median_slowdown=None)
        # a known spread of request latency: the median = the floor, p90 = 1.2 x the floor
        meta["tail"][precision] = {"levels": [50, 75, 90, 95, 99], "median_ms": [0.1, 10.0],
                                   "factor": [[1.0, 1.1, 1.2, 1.3, 1.5]] * 2, "records": 99}
    data = (json.dumps(meta, indent=2) + "\n").encode()
    (out / "predictor.json").write_bytes(data)
    header["files"]["predictor.json"] = hashlib.sha256(data).hexdigest()
    (out / "profile.json").write_text(json.dumps(header))
    return out


@pytest.fixture
def profile(reliable_profile):
    return DeviceProfile.load(reliable_profile)


class Scripted:
    """Latency = the profile's prediction x a factor per precision (a lying predictor when
    the factor is not 1); records every call."""

    def __init__(self, profile, factors):
        self.profile, self.factors, self.calls = profile, factors, []

    def __call__(self, bundle, model_file, precision, workload):
        from shaper_deploy.bundle import BundleManifest
        from shaper_deploy.shape import Shape

        manifest = BundleManifest.read(bundle)

        shape = Shape(tuple(manifest.shape), self.profile.space)
        ms = (float(self.profile.predict([shape], precision, *workload, 90.0)[0])
              * self.factors[precision])
        self.calls.append((tuple(manifest.shape), precision, workload, model_file))
        return ms


@pytest.mark.parametrize("text, ms", [("20ms", 20.0), ("0.02s", 20.0), ("20", 20.0),
                                      ("500us", 0.5), (" 1.5 S ", 1500.0)])
def test_parse_budget(text, ms):
    budget = parse_budget(text)
    assert budget.value == pytest.approx(ms) and not budget.relative


@pytest.mark.parametrize("text", ["fast", "-1ms", "0", "20 minutes", "nan", "inf"])
def test_parse_budget_errors(text):
    with pytest.raises(PlannerError, match="latency budget"):
        parse_budget(text)


@pytest.mark.parametrize("workload", [(1, 16), (2, 12), (1, 8)])
def test_plan_is_the_brute_force_best_at_the_workload(profile, workload):
    family = cigar_family(PLAN_SPACE)
    for precision in ("fp32", "int8"):
        upper = profile.predict(family, precision, *workload, 90.0) * profile.margin(precision)
        budget = float(np.median(upper))
        plan = plan_for_latency(profile, budget, precision, *workload)
        best = max(i for i, u in enumerate(upper) if u <= budget)
        assert plan.shape == family[best] and plan.upper_ms <= budget
        assert (plan.batch, plan.seq_len) == workload
    assert plan_for_latency(profile, 1e-6, "fp32", 1, 16) is None
    with pytest.raises(ProfileError, match="outside the profiled range"):
        plan_for_latency(profile, 10, "fp32", 1, 40)


def _budget_for(profile, precision, index, workload=(1, 16)):
    """A budget that the family member at ``index`` just meets with the margin."""
    family = cigar_family(PLAN_SPACE)
    up = profile.predict(family, precision, *workload, 90.0) * profile.margin(precision)
    return float(up[index]) * 1.0001


def test_closed_loop_steps_down_when_the_predictor_is_optimistic(profile, supernet, tmp_path):
    budget = _budget_for(profile, "fp32", len(cigar_family(PLAN_SPACE)) * 2 // 3)
    measure = Scripted(profile, {"fp32": 1.5})  # everything 50% slower than predicted
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, progress=notes.append, families=CIGAR)
    c = manifest.plan["candidates"][0]
    assert len(c["exports"]) >= 2 and not c["exports"][0]["within_budget"]
    assert c["exports"][-1]["within_budget"] and c["exports"][-1]["correction"] > 1
    assert c["params"] < c["exports"][0]["params"] and c["measured_ms"] <= budget
    assert any("measuring again to rule out noise" in n for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no attempts left behind


def test_closed_loop_steps_up_when_far_under_budget(profile, supernet, tmp_path):
    budget = _budget_for(profile, "fp32", 2)
    measure = Scripted(profile, {"fp32": 0.6})  # everything 40% faster than predicted
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, families=CIGAR)
    c = manifest.plan["candidates"][0]
    assert c["exports"][0]["params"] < c["params"]  # it stepped up
    assert c["measured_ms"] <= budget and c["status"] == "chosen"
    assert manifest.shape == c["shape"]
    assert len(c["exports"]) <= 4


def _noisy_host(profile, tmp_path, margin=1.5, noise=0.025):
    """The reliable profile with a noisy host's margin and noise floor."""
    import hashlib

    wide = tmp_path / "wide"
    shutil.copytree(profile.path, wide)
    meta = json.loads((wide / "predictor.json").read_text())
    meta["margin"] = {p: margin for p in meta["margin"]}
    data = json.dumps(meta).encode()
    (wide / "predictor.json").write_bytes(data)
    header = json.loads((wide / "profile.json").read_text())
    header["files"]["predictor.json"] = hashlib.sha256(data).hexdigest()
    for summary in header["summary"]["precisions"].values():
        summary["noise_floor"]["median_abs_rel_diff"] = noise
    (wide / "profile.json").write_text(json.dumps(header))
    return DeviceProfile.load(wide)


def test_a_step_up_must_fit_with_the_noise_floor_to_spare(profile, supernet, tmp_path):
    """A step up aimed at the budget that measures just under it (within the noise floor) is
    not kept: one between it and the shape that fit is tried instead, if the family has one."""
    profile = _noisy_host(profile, tmp_path)
    budget = _budget_for(profile, "fp32", 2)
    slack = 1 + profile.noise("fp32")
    scripted = Scripted(profile, {"fp32": 1.1})
    shapes = []

    def measure(bundle, model_file, precision, workload):
        ms = scripted(bundle, model_file, precision, workload)
        shape = scripted.calls[-1][0]
        if shape not in shapes:
            shapes.append(shape)
        first_step_up = len(shapes) > 1 and shape == shapes[1]
        return max(ms, budget * 0.995) if first_step_up else ms  # just under the budget

    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, families=CIGAR)
    c = manifest.plan["candidates"][0]
    ex = c["exports"]
    assert ex[1]["within_budget"] and ex[1]["measured_ms"] > budget / slack  # not kept
    family = cigar_family(PLAN_SPACE)
    between = [s for s in family
               if ex[0]["params"] < s.params() < ex[1]["params"]]
    if between:  # a shape between the kept one and the miss is tried next
        assert len(ex) >= 3 and ex[0]["params"] < ex[2]["params"] < ex[1]["params"]
    assert c["measured_ms"] <= budget / slack and c["params"] != ex[1]["params"]


def test_a_shape_predicted_over_the_budget_is_kept_only_if_measured_under_it_twice(
        profile, supernet, tmp_path):
    """Every first measurement runs in a fast window (0.6x the prediction), every second at
    the profile's speed: the step up the fast window allows reaches shapes the profile
    predicts over the budget, and each of those is measured again and judged on the slower
    of the two, so none is kept (session 51: a 10-s window bought the full fp32 model at 95%
    of its own p90, which `verify`'s minute then judged over)."""
    budget = _budget_for(profile, "fp32", 2)
    limit = budget / (1 + profile.noise("fp32"))
    scripted = Scripted(profile, {"fp32": 1.0})
    seen = collections.Counter()

    def measure(bundle, model_file, precision, workload):
        ms = scripted(bundle, model_file, precision, workload)
        seen[scripted.calls[-1][0]] += 1
        return ms * (0.6 if seen[scripted.calls[-1][0]] == 1 else 1.0)

    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, progress=notes.append, families=CIGAR)
    c = manifest.plan["candidates"][0]
    confirmed = [e for e in c["exports"] if e["predicted_ms"] / e["correction"] > limit]
    assert confirmed, notes  # the step up reached a shape predicted over the limit ...
    for e in confirmed:  # ... measured twice, judged on the slower: over, not kept
        assert seen[tuple(e["shape"])] == 2
        assert e["measured_ms"] == pytest.approx(e["predicted_ms"] / e["correction"])
        assert e["measured_ms"] > e["kept_under_ms"]
    assert c["predicted_ms"] <= limit and c["measured_ms"] <= limit
    assert any("measuring again, the slower of the two kept" in n for n in notes)


def test_the_teacher_is_judged_by_the_same_second_look_as_the_slices(profile, supernet,
                                                                     tmp_path):
    """A teacher whose first window runs slow (1.1x its prediction, over the limit) and whose
    second runs at 0.95x is kept on their median, as a slice would be (session 58: the
    teacher was judged on its one window); one slow window still over after the second look
    drops it, with the note of both."""
    teacher = randomize(SuperBert(CONFIG), seed=5).eval()
    full = PLAN_SPACE.largest
    budget = float(profile.predict([full], "fp32", 1, 16, 90.0)[0]) * profile.margin("fp32")
    budget *= 1.0001
    for second, kept in ((0.95, True), (1.2, False)):
        scripted, looks = Scripted(profile, {"fp32": 1.0}), collections.Counter()

        def measure(bundle, model_file, precision, workload):
            ms = scripted(bundle, model_file, precision, workload)
            if "teacher" not in Path(bundle).name:
                return ms
            looks["teacher"] += 1
            return ms * (1.1 if looks["teacher"] == 1 else second)

        notes = []
        manifest = export_for_budget(supernet, budget, profile, tmp_path / f"b{second}",
                                     precision="fp32", measure=measure, progress=notes.append,
                                     families=CIGAR, teacher=teacher, workload=(1, 16))
        t = next(c for c in manifest.plan["candidates"] if c["network"] == "teacher")
        assert looks["teacher"] == 2, notes
        assert any(n.startswith("teacher fp32: measured") and "measuring again" in n
                   for n in notes)
        assert (t["status"] in ("chosen", "fits")) == kept, t
        assert t["measured_ms"] == pytest.approx(
            float(profile.predict([full], "fp32", 1, 16, 90.0)[0]) * (1.1 + second) / 2)


def test_after_a_miss_the_sizes_between_are_tried(profile, supernet, tmp_path):
    """The first shape misses by far (x1.6: its p90's upper bound on a host's spikes), so the
    re-plan, scaled by that ratio, falls several sizes below; that one measures as predicted,
    and the loop steps back up between the two rather than keeping the smallest."""
    family = cigar_family(PLAN_SPACE)
    budget = _budget_for(profile, "fp32", len(family) * 2 // 3)
    scripted = Scripted(profile, {"fp32": 1.0})
    first = []

    def measure(bundle, model_file, precision, workload):
        ms = scripted(bundle, model_file, precision, workload)
        first[:] = first or [scripted.calls[-1][0]]
        return ms * 1.6 if scripted.calls[-1][0] == first[0] else ms

    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, progress=notes.append, families=CIGAR)
    c = manifest.plan["candidates"][0]
    ex = c["exports"]
    assert not ex[0]["within_budget"] and ex[1]["within_budget"], notes
    assert ex[1]["params"] < ex[2]["params"] < ex[0]["params"], notes  # between the two
    assert c["params"] > ex[1]["params"] and c["measured_ms"] <= ex[2]["kept_under_ms"]
    assert len(ex) <= 4 and tuple(c["shape"]) != first[0]


def test_the_first_shape_must_fit_with_the_noise_floor_to_spare(profile, supernet, tmp_path):
    """A first shape that measures under the budget but within the noise floor of it is not
    kept (a later measurement would cross the budget about as often as not): another is,
    under budget / (1 + noise floor), and the table says where the limit was."""
    profile = _noisy_host(profile, tmp_path, noise=0.08)
    budget = _budget_for(profile, "fp32", len(cigar_family(PLAN_SPACE)) * 2 // 3)
    scripted = Scripted(profile, {"fp32": 1.0})
    first = []

    def measure(bundle, model_file, precision, workload):
        ms = scripted(bundle, model_file, precision, workload)
        first[:] = first or [scripted.calls[-1][0]]
        return budget * 0.97 if scripted.calls[-1][0] == first[0] else ms  # just under

    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, progress=notes.append, families=CIGAR,
                                 allow_unreliable=True)
    c = manifest.plan["candidates"][0]
    ex, limit = c["exports"], budget / 1.08
    assert ex[0]["within_budget"] and ex[0]["measured_ms"] > ex[0]["kept_under_ms"]
    assert ex[0]["kept_under_ms"] == pytest.approx(limit)
    assert c["shape"] != ex[0]["shape"] and c["measured_ms"] <= limit
    assert any("8.0% noise floor to spare" in n for n in notes)


def test_a_fit_within_the_noise_floor_of_the_limit_is_measured_again(profile, supernet,
                                                                      tmp_path):
    """A first shape measured just under the limit (the budget with the noise floor to spare)
    is within one noise floor of it, as likely a fast window as not (session 59: the int8 full
    model at 20.33 ms under 20.34, 21.88 ms in `verify`): it is measured again and the slower
    look counts. Over the limit on that look, it is not kept; under it again, it is, at the
    slower of its two. A fit well under the limit is measured once."""
    profile = _noisy_host(profile, tmp_path, noise=0.08)
    budget = _budget_for(profile, "fp32", len(cigar_family(PLAN_SPACE)) * 2 // 3)
    limit = budget / 1.08
    for second, kept in ((1.02, False), (0.99, True)):
        scripted, looks = Scripted(profile, {"fp32": 1.0}), collections.Counter()
        first = []

        def measure(bundle, model_file, precision, workload):
            ms = scripted(bundle, model_file, precision, workload)
            first[:] = first or [scripted.calls[-1][0]]
            if scripted.calls[-1][0] != first[0]:
                return ms
            looks["first"] += 1
            return limit * (0.995 if looks["first"] == 1 else second)

        notes = []
        manifest = export_for_budget(supernet, budget, profile, tmp_path / f"b{second}",
                                     precision="fp32", measure=measure,
                                     progress=notes.append, families=CIGAR,
                                     allow_unreliable=True)
        c = manifest.plan["candidates"][0]
        assert looks["first"] == 2, notes
        assert any("within its 8.0% noise floor; measuring again, the slower of the two kept"
                   in n for n in notes), notes
        first_export = c["exports"][0]
        assert first_export["measured_ms"] == pytest.approx(limit * max(0.995, second))
        assert (tuple(c["shape"]) == first[0]) == kept, notes
        # the rule fires for the exports measured within the band and for no other
        edge = [e for e in c["exports"][1:] if limit / 1.08 < e["measured_ms"] <= limit]
        assert sum("noise floor; measuring again" in n for n in notes) == 1 + len(edge)


def test_closed_loop_steps_up_when_the_prediction_was_right_but_the_margin_wide(
        profile, supernet, tmp_path):
    """Measured 10% over its prediction, the first shape uses 1.1/1.5 of the budget: the
    margin is for the prediction's error, which the measurement has just removed, so the loop
    steps up to a shape planned with the observed ratio and the noise floor (it used to stop
    unless the measurement was a whole margin under the budget)."""
    profile = _noisy_host(profile, tmp_path)
    family = cigar_family(PLAN_SPACE)
    budget = _budget_for(profile, "fp32", 2)
    measure = Scripted(profile, {"fp32": 1.1})
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=measure, progress=notes.append, families=CIGAR)
    c = manifest.plan["candidates"][0]
    assert c["exports"][0]["measured_ms"] * profile.margin("fp32") > budget  # the old stop
    assert c["exports"][0]["params"] < c["params"] and c["measured_ms"] <= budget
    slack = 1 + profile.noise("fp32")
    predicted = profile.predict(family, "fp32", 1, 16, 90.0) * 1.1
    fits = [s for s, p in zip(family, predicted) if p * slack <= budget]
    assert c["params"] == max(s.params() for s in fits)  # the largest that fits, measured
    assert any("leaves room for a larger shape" in n for n in notes)
    # the log's "predicted" for the step up is the profile's, as the table lists it, and it
    # says what the loop planned with instead (the "say which")
    said = next(n for n in notes if n.startswith("fp32: exporting") and "planned at" in n
                and f"({c['params'] / 1e6:.1f}M params" in n)
    assert f"predicted p90 {c['predicted_ms']:.2f} ms, {c['upper_ms']:.2f} ms with the" in said
    assert "scaled by how the shapes measured so far ran against their predictions" in said


def test_auto_keeps_the_candidate_closest_to_the_full_model(profile, supernet, tmp_path):
    family = cigar_family(PLAN_SPACE)
    # fp32 can afford a mid-size shape, int8 (scripted 3x faster) the full one.
    budget = _budget_for(profile, "fp32", len(family) // 2)
    measure = Scripted(profile, {"fp32": 1.0, "int8": 1.0})
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b",
                                 options=ExportOptions(int8_min_cosine=0.5), measure=measure,
                                 progress=notes.append)
    plan = manifest.plan
    cands = {c["precision"]: c for c in plan["candidates"]}
    assert set(cands) == {"fp32", "int8"}
    fitting = [c for c in cands.values() if c["measured_ms"] is not None
               and c["measured_ms"] <= budget]
    best = max(fitting, key=lambda c: c["fidelity"])
    assert plan["precision"] == best["precision"] and best["status"] == "chosen"
    assert plan["fidelity"] == best["fidelity"] and 0 < plan["fidelity"] <= 1.0 + 1e-6
    expected_model = "model_quantized.onnx" if best["precision"] == "int8" else "model.onnx"
    assert manifest.default_model == expected_model
    on_disk = json.loads((tmp_path / "b" / "shaper.json").read_text())
    assert on_disk["plan"]["candidates"] == plan["candidates"]
    assert plan["batch"] == 1 and plan["seq_len"] == 16
    assert plan["workload_source"] == "the profile's reference size" and plan["inputs"] is None
    assert "random token ids" in plan["calibration"]


def test_full_shape_fidelity_is_one(profile, supernet, tmp_path):
    budget = 1e6  # everything fits: the full shape at both precisions
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b",
                                 options=ExportOptions(int8_min_cosine=0.5),
                                 measure=Scripted(profile, {"fp32": 1.0, "int8": 1.0}))
    cands = {c["precision"]: c for c in manifest.plan["candidates"]}
    assert cands["fp32"]["shape"] == list(PLAN_SPACE.largest.widths)
    assert cands["fp32"]["fidelity"] == pytest.approx(1.0, abs=1e-5)
    assert cands["int8"]["fidelity"] < cands["fp32"]["fidelity"]
    assert manifest.plan["precision"] == "fp32"


def test_int8_that_fails_its_gate_falls_back_to_fp32(profile, supernet, tmp_path):
    budget = _budget_for(profile, "fp32", 3)
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b",
                                 options=ExportOptions(int8_min_cosine=1.0),
                                 measure=Scripted(profile, {"fp32": 1.0, "int8": 1.0}),
                                 progress=notes.append)
    cands = {c["precision"]: c for c in manifest.plan["candidates"]}
    assert cands["int8"]["status"] == "gate failed"
    assert "int8 model is too far from fp32" in cands["int8"]["reason"]
    assert manifest.plan["precision"] == "fp32"
    assert any(n.startswith("int8 dropped") for n in notes)


def test_int8_over_budget_falls_back_and_nothing_fits_fails(profile, supernet, tmp_path):
    budget = _budget_for(profile, "fp32", 3)
    measure = Scripted(profile, {"fp32": 1.0, "int8": 50.0})  # int8 never fits
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b",
                                 options=ExportOptions(int8_min_cosine=0.5), measure=measure,
                                 max_exports=2)
    cands = {c["precision"]: c for c in manifest.plan["candidates"]}
    assert cands["int8"]["status"] == "over budget" and manifest.plan["precision"] == "fp32"
    with pytest.raises(PlannerError, match="no candidate met"):
        export_for_budget(supernet, budget, profile, tmp_path / "c", precision="fp32",
                          measure=Scripted(profile, {"fp32": 50.0}), max_exports=2)
    assert not (tmp_path / "c").exists()


def test_an_unreliable_profiles_refusal_names_what_helps_for_the_gate_it_missed(profile,
                                                                               monkeypatch):
    """A held-out MAPE over the limit wants more shapes; only a noise floor over it (the
    machine's speed moved while the profile was made: test_planner_refusals) wants a calmer
    period. The refusal says which, and --allow-unreliable still lets it through."""
    from shaper_deploy.profiling import predictor

    profile.check_trust(False)  # the fixture's profile passes both gates
    monkeypatch.setattr(predictor, "MAX_MAPE", 0.0)
    assert profile.trust["missed"] == ["max_mape"]
    with pytest.raises(ProfileError, match=r"held-out MAPE [0-9.]+% > 0%.*; remake it with a "
                                           r"larger --minutes \(more shapes\); or pass "
                                           r"--allow-unreliable") as refused:
        profile.check_trust(False)
    assert "calmer period" not in str(refused.value)
    profile.check_trust(True)


def test_planner_refusals(profile, supernet, tmp_path):
    with pytest.raises(PlannerError, match=r"0.0001 ms budget at p90 is unattainable at batch 1 "
                                           r"x 16 tokens on profile .*the fastest shape \(20x3, "
                                           r"0.1M params\) is predicted at fp32 0.15 ms \(x1.05 "
                                           r"margin\), int8 0.10 ms"):
        export_for_budget(supernet, 1e-4, profile, tmp_path / "b")
    with pytest.raises(ProfileError, match="outside the profiled range"):
        export_for_budget(supernet, 10, profile, tmp_path / "b", workload=(4, 16))
    with pytest.raises(PlannerError, match=r"task 'feature-extraction' \(profile\) vs "
                                           r"'fill-mask' \(export\)"):
        export_for_budget(supernet, 10, profile, tmp_path / "b",
                          options=ExportOptions(task="fill-mask"))
    with pytest.raises(PlannerError, match=r"optimized True \(profile\) vs False"):
        export_for_budget(supernet, 10, profile, tmp_path / "b",
                          options=ExportOptions(optimize=False))
    with pytest.raises(PlannerError, match="int8 does not run on cuda"):
        export_for_budget(supernet, 10, profile, tmp_path / "b", device="cuda",
                          precision="int8")
    noisy = tmp_path / "noisy"
    shutil.copytree(profile.path, noisy)
    header = json.loads((noisy / "profile.json").read_text())
    header["summary"]["precisions"]["fp32"]["noise_floor"]["median_abs_rel_diff"] = 0.5
    (noisy / "profile.json").write_text(json.dumps(header))
    with pytest.raises(ProfileError, match=r"is unreliable \(fp32 noise floor 50.0% > 3%\); "
                                           r"its shapes timed twice disagree.*calmer period.*"
                                           r"pass --allow-unreliable"):
        export_for_budget(supernet, 10, DeviceProfile.load(noisy), tmp_path / "b")
    manifest = export_for_budget(supernet, 1e6, DeviceProfile.load(noisy), tmp_path / "b",
                                 precision="fp32", allow_unreliable=True,
                                 measure=Scripted(profile, {"fp32": 1.0}))
    assert manifest.plan["profile_trust"]["reliable"] is False
    assert not any(p.name.startswith(".b.") for p in tmp_path.iterdir())


def _scripted_plan(supernet, profile, tmp_path) -> list[str]:
    """An fp32 plan's command line under a budget every shape meets, each candidate measured
    once (the tests script DeviceProfile.measure's machine speed)."""
    save_supernet(supernet, tmp_path / "super")
    return ["export", "--supernet", str(tmp_path / "super"), "--latency", "10s", "--profile",
            str(profile.path), "--precision", "fp32", "--measure-seconds", "0"]


def test_a_plan_measured_while_the_machine_ran_beyond_its_profile_says_so(
        profile, supernet, tmp_path, monkeypatch):
    """Every measurement of the plan seeing the machine 2x past what the profile's tail
    prices (a busy neighbour): the plan records it and both outputs warn, with what to do."""
    from shaper_deploy.profiling.predictor import DeviceProfile

    real = DeviceProfile.measure

    def slowed(self, *args, **kwargs):
        m = real(self, *args, **kwargs)
        priced = max(1.0, m.get("priced_drift", 1.0))
        return {**m, "drift": 2 * priced, "priced_drift": priced}

    monkeypatch.setattr(DeviceProfile, "measure", slowed)
    args = _scripted_plan(supernet, profile, tmp_path)
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    beyond = json.loads(r.stdout)["plan"]["machine_beyond_priced"]
    assert beyond["measurements"] == beyond["of"] >= 1
    assert beyond["max_beyond_priced"] == pytest.approx(2.0)
    assert f"profile it as it is now (shaperctl profile --from {profile.path}" in beyond["said"]
    assert "WARNING: the machine ran up to" in r.stderr
    human = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b2")])
    assert human.exit_code == 0, human.output
    assert re.search(r"^WARNING +the machine ran up to", human.stdout, re.M), human.stdout
    # within what the tail prices (a speed-up included, and a slowdown up to it): no warning
    from shaper_deploy.planner import _beyond_priced

    within = [{"drift": 0.9, "priced_drift": 0.9}, {"drift": 1.3, "priced_drift": 1.3}]
    assert _beyond_priced(within, profile) is None
    mixed = _beyond_priced(within + [{"drift": 1.8, "priced_drift": 1.2}], profile)
    assert (mixed["measurements"], mixed["of"]) == (1, 3)
    assert mixed["max_beyond_priced"] == pytest.approx(1.5)


def test_over_budget_advice_tells_a_slow_window_from_a_missed_prediction():
    """Over the budget, three causes and three remedies: a slowdown beyond what the profile's
    tail prices (profile the machine as it runs now); a model within the budget at the
    profiled speed that ran over only in the window just timed, a slowdown the tail prices
    (measure longer); a model over at the profiled speed (plan again). Without a budget the
    second cannot be told, and the advice is the third's."""
    from shaper_deploy.profiling.predictor import over_budget_advice

    m = {"profile": "P", "estimated_ms": 11.78, "observed_ms": 17.50, "judged_ms": 17.50,
         "drift": 1.22, "priced_drift": 1.22, "seconds": 11.0, "percentile": 90.0}
    window = over_budget_advice(m, 16.69)
    assert window.startswith("within the budget at the speed P priced (11.78 ms), over only "
                             "in the 11 s just timed (17.50 ms, the machine 1.22x")
    assert "measure longer (shaperctl verify BUNDLE --duration 60) to judge the p90" in window
    assert "prediction missed" not in window
    # a minute already timed: five; five already timed: another hour, not the same window
    assert "--duration 300" in over_budget_advice({**m, "seconds": 60.0}, 16.69)
    later = over_budget_advice({**m, "seconds": 300.0}, 16.69)
    assert "--duration" not in later and "verify again in another hour" in later
    assert "its prediction missed" in over_budget_advice(m, 11.0)  # over at the profiled speed
    assert "its prediction missed" in over_budget_advice(m)
    beyond = over_budget_advice({**m, "drift": 1.8}, 16.69)  # the tail prices up to 1.22x
    assert beyond.startswith("the machine runs 1.80x slower than when P was made")


def test_a_plan_on_a_machine_faster_than_its_profile_says_so(
        profile, supernet, tmp_path, monkeypatch):
    """Every measurement seeing the machine at 0.75x the profile's time (a host faster than
    the one profiled): the plan keeps the profile's promise, records it and notes that a
    profile of this machine may buy more; one measurement at the profile's speed: no note."""
    from shaper_deploy.planner import _faster_than_profiled
    from shaper_deploy.profiling.predictor import DeviceProfile

    real = DeviceProfile.measure
    monkeypatch.setattr(DeviceProfile, "measure",
                        lambda self, *a, **k: {**real(self, *a, **k), "drift": 0.75,
                                               "priced_drift": 0.75})
    args = _scripted_plan(supernet, profile, tmp_path)
    r = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    faster = json.loads(r.stdout)["plan"]["machine_faster"]
    assert faster["measurements"] >= 1 and faster["max_drift"] == faster["min_drift"] == 0.75
    assert f"profile it (shaperctl profile --from {profile.path} --out DIR" in faster["said"]
    assert "NOTE: the machine ran at 0.75x the profile's time in all" in r.stderr
    assert json.loads(r.stdout)["plan"]["machine_beyond_priced"] is None
    human = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "b2")])
    assert re.search(r"^NOTE +the machine ran at 0.75x the", human.stdout, re.M), human.output
    assert _faster_than_profiled([{"drift": 0.8}, {"drift": 0.95}], profile) is None
    assert _faster_than_profiled([], profile) is None
    assert _faster_than_profiled([{"drift": 0.7}, {"drift": 0.9}], profile)["min_drift"] == 0.7


def test_budget_on_a_measured_device_end_to_end(profile, supernet, tmp_path):
    """Real measurement (the profile's protocol) under a budget every shape meets, so the
    outcome does not depend on this machine's speed. Each candidate is timed for
    --measure-seconds, and bench re-times the bundle as long."""
    save_supernet(supernet, tmp_path / "super")
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--latency",
                                  "10s", "--profile", str(profile.path), "--batch", "2",
                                  "--seq-len", "12", "--measure-seconds", "1.5",
                                  "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert plan["measure_seconds"] == 1.5 and "measured for 1.5 s" in plan["method"]
    timed = re.findall(r"over (\d+) runs in (\d+) s", r.stderr)
    assert timed and all(int(s) >= 1 for _, s in timed), r.stderr
    assert (plan["batch"], plan["seq_len"], plan["workload_source"]) == (2, 12, "given")
    assert plan["shape"] == list(PLAN_SPACE.largest.widths) and plan["precision"] == "fp32"
    assert 0 < plan["measured_ms"] < 10_000 and plan["fidelity"] == pytest.approx(1, abs=1e-5)
    human = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                      "--latency", "10s", "--profile", str(profile.path),
                                      "--precision", "fp32", "--measure-seconds", "0",
                                      "--out", str(tmp_path / "b2")])
    assert human.exit_code == 0, human.output
    assert "candidates:" in human.stdout and "* fp32" in human.stdout
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--duration", "0.3",
                                      "--batch", "1", "--seq-len", "12", "--json"])
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.stdout)
    assert data["plan"]["budget_ms"] == 10_000 and data["profile_protocol"]["batch"] == 2
    assert data["profile_protocol"]["seconds"] >= 1.5
    assert data["profile_protocol"]["advice"] is None  # within: nothing to do
    # batch 1 is not the plan's workload (2 x 12): its percentiles are not held to the budget
    assert data["load_is_planned"] is False
    planned = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--duration", "0.3",
                                        "--batch", "2", "--seq-len", "12"])
    assert planned.exit_code == 0 and "note" not in planned.stdout, planned.output
    # without --batch/--seq-len, the load is the plan's (one request at a time at 2 x 12)
    default = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--duration", "0.3",
                                        "--json"])
    assert default.exit_code == 0, default.output
    data = json.loads(default.stdout)
    assert (data["batch"], data["seq_len"], data["load_is_planned"]) == (2, 12, True)
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    manifest["plan"]["budget_ms"] = 1e-6
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(manifest))
    over = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--duration", "0.3",
                                     "--batch", "1", "--seq-len", "12"])
    assert over.exit_code == 0, over.output
    assert "OVER the" in over.stdout and "plan again" in over.stdout
    assert ("note        the budget is for one request at a time at batch 2 x 12; this load's "
            "latency above is not held to it (the next line is)") in over.stdout


def test_a_budget_without_profile_plans_with_this_machines_profile(
        reliable_profile, supernet, tmp_path, monkeypatch):
    """export --latency without --profile takes the profile profiles list marks for this
    machine and the super network's design space in ./profiles, and says so; with none
    there, one line says how to make one."""
    save_supernet(supernet, tmp_path / "super")
    args = ["export", "--supernet", str(tmp_path / "super"), "--latency", "10s",
            "--precision", "fp32", "--measure-seconds", "0", "--json"]
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    r = CliRunner().invoke(main, [*args, "--out", "b"])
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.splitlines() == [
        f"Error: --latency needs a profile of this machine, and profiles/ holds no reliable cpu "
        f"profile of it for {tmp_path / 'super'}'s design space (shaperctl profiles list says "
        f"why): make one, shaperctl profile --device cpu --supernet {tmp_path / 'super'} --out "
        "P (add --from profiles for a transfer in a few minutes), then pass --profile P"]
    shutil.copytree(reliable_profile, tmp_path / "here" / "profiles" / "tiny")
    r = CliRunner().invoke(main, [*args, "--out", "b"])
    assert r.exit_code == 0, r.output
    assert ("no --profile given: planning with profiles/tiny, the profile of this machine for "
            "this design space in profiles/") in r.stderr
    assert json.loads(r.stdout)["plan"]["profile"] == "profiles/tiny"
    if shutil.which("nvidia-smi") is None:  # a device this machine lacks, in its own words
        r = CliRunner().invoke(main, [*args, "--device", "cuda", "--out", "c"])
        assert r.exit_code == 1 and "no NVIDIA GPU is visible" in r.stderr, r.output


def test_predict_without_profile_takes_this_machines_profile_holding_the_shape(
        reliable_profile, tmp_path, monkeypatch):
    """predict without --profile takes, of the profiles profiles list marks for this machine
    in ./profiles, the one whose design space holds the shape, and says so; none holding it
    is one line naming the spaces there."""
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    args = ["predict", "--shape", "128x3", "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.splitlines() == [
        "Error: --profile not given, and profiles/ holds no reliable cpu profile of this "
        "machine whose design space holds shape '128x3' (this machine's there: none); pass "
        "--profile P, or make one: shaperctl profile --device cpu --supernet S --out P"]
    shutil.copytree(reliable_profile, tmp_path / "here" / "profiles" / "tiny")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("no --profile given: predicting with profiles/tiny, the profile "
                               "of this machine whose design space holds the shape")
    data = json.loads(r.stdout)
    assert data["profile"] == "profiles/tiny" and data["shape"] == [128, 128, 128]
    r = CliRunner().invoke(main, ["predict", "--shape", "128x4"])
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1, r.output
    assert (f"holds no reliable cpu profile of this machine whose design space holds shape "
            f"'128x4' (this machine's there: profiles/tiny: {PLAN_SPACE.describe()})") in r.stderr
    r = CliRunner().invoke(main, ["predict", "--shape", "128x3", "--device", "cuda"])
    assert r.exit_code == 1 and len(r.stderr.splitlines()) == 1, r.output


def test_shapes_with_a_profile_use_its_design_space(reliable_profile, tiny_supernet, tmp_path):
    """shapes --profile without --supernet draws its shapes from the profile's design space
    (not the paper's, which it cannot predict); a --supernet of another space is one line
    naming both."""
    r = CliRunner().invoke(main, ["shapes", "--profile", str(reliable_profile), "--steps", "2",
                                  "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["shapes"]
    assert [row["shape"] for row in rows] == [[PLAN_SPACE.widths[0]] * 3,
                                              [PLAN_SPACE.widths[-1]] * 3]
    assert json.loads(r.stdout)["profile"]["this_machine"] == {"matches": True,
                                                               "differences": []}
    assert all(set(row["predicted_ms"]) == {"fp32", "int8"} for row in rows)
    save_supernet(tiny_supernet, tmp_path / "tiny")
    r = CliRunner().invoke(main, ["shapes", "--profile", str(reliable_profile), "--supernet",
                                  str(tmp_path / "tiny")])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"Error: --profile {reliable_profile} covers another design space "
        f"({PLAN_SPACE.describe()}) than --supernet {tmp_path / 'tiny'} "
        f"({tiny_supernet.config.space.describe()}); give a profile of the super network's "
        "space, or leave out --supernet to use the profile's"], r.output


def test_cli_budget_errors(reliable_profile, supernet, tmp_path, monkeypatch):
    tiny_profile = reliable_profile
    save_supernet(supernet, tmp_path / "super")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                    "--out", str(tmp_path / "out"), *map(str, args)])
    r = run("--latency", "5ms", "--shape", "8x3")
    assert r.exit_code == 2 and "give exactly one of --shape, --params or --latency" in r.stderr
    r = run("--latency", "5ms", "--profile", tiny_profile, "--int8")
    assert r.exit_code == 2 and "--int8 does not go with --latency" in r.stderr
    r = run("--shape", "32x3", "--seq-len", "32")
    assert r.exit_code == 2 and "--seq-len go(es) with --latency" in r.stderr
    r = run("--shape", "32x3", "--measure-seconds", "5")
    assert r.exit_code == 2 and "--measure-seconds go(es) with --latency" in r.stderr
    r = run("--latency", "5ms", "--profile", tiny_profile, "--measure-seconds", "-1")
    assert r.exit_code == 2 and "-1.0 is not in the range 0<=x<=600" in r.stderr
    r = run("--latency", "0.0001ms", "--profile", tiny_profile)
    assert r.exit_code == 1 and "unattainable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("--latency", "5ms", "--profile", tiny_profile, "--seq-len", "500")
    assert r.exit_code == 1 and "outside the profiled range" in r.stderr
    r = run("--latency", "5ms", "--profile", tiny_profile, "--task", "fill-mask")
    assert r.exit_code == 1 and "timed another graph" in r.stderr
    r = run("--latency", "5ms", "--profile", tiny_profile, "--no-optimize")
    assert r.exit_code == 1 and "optimized True (profile) vs False (export)" in r.stderr
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    r = run("--latency", "5ms", "--profile", tiny_profile, "--calibration", tmp_path / "bad.txt")
    assert r.exit_code == 1 and "is not UTF-8 text" in r.stderr
    r = run("--params", "250K", "--profile", tiny_profile, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["params"]["fused"] <= 250_000
    assert [p["precision"] for p in data["predicted_latency"]] == ["fp32", "int8"]
    # the prediction is recorded in the bundle's manifest, as printed
    from shaper_deploy.bundle import BundleManifest

    assert BundleManifest.read(tmp_path / "out").predicted_latency == data["predicted_latency"]
    assert {p["percentile"] for p in data["predicted_latency"]} == {90}
    assert all(p["profile_reliable"] and p["profile_machine_differs"] == []
               for p in data["predicted_latency"])
    # a fixed shape predicted by an unreliable profile: the one trust rule, then the percentile
    import shaper_deploy.profiling.predictor as predictor

    monkeypatch.setattr(predictor, "MAX_MAPE", 0.0)
    r = run("--params", "250K", "--profile", tiny_profile, "--force")
    assert r.exit_code == 1 and "is unreliable" in r.stderr and "--allow-unreliable" in r.stderr
    r = run("--params", "250K", "--profile", tiny_profile, "--allow-unreliable", "--percentile",
            "99", "--force", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["predicted_latency"]
    assert {p["percentile"] for p in rows} == {99} and not rows[0]["profile_reliable"]
    r = run("--params", "250K", "--profile", tiny_profile, "--allow-unreliable", "--force")
    assert r.exit_code == 0 and ", UNRELIABLE)" in r.stdout, r.output
    monkeypatch.undo()
    shapes = json.loads(runner.invoke(main, ["shapes", "--supernet", str(tmp_path / "super"),
                                             "--profile", str(tiny_profile), "--json"]).stdout)
    space = supernet.config.space
    for row in shapes["shapes"]:  # each the cigar shape of its target, predicted per precision
        shape = cigar_shape(row["target"], space)
        assert row["shape"] == list(shape.widths) and row["params"] == shape.params()
        loaded = DeviceProfile.load(tiny_profile)
        assert row["predicted_ms"]["fp32"] == pytest.approx(float(loaded.predict(
            [shape], "fp32", *loaded.reference_workload, 90.0)[0]), rel=1e-6)
    assert all(set(r["predicted_ms"]) == {"fp32", "int8"} for r in shapes["shapes"])


def test_identity_projections_are_dropped_and_outputs_unchanged(tiny_bert_dir, tmp_path):
    supernet = supernet_from_hf(tiny_bert_dir).eval()
    full = supernet.config.space.largest
    kept = fuse_bottlenecks(slice_subnet(supernet, full))
    pruned = fuse_bottlenecks(slice_subnet(supernet, full))
    dropped = drop_identities(pruned)
    n = supernet.config.space.num_layers
    assert dropped == ["proj_in", "proj_out", *(f"transitions.{i}" for i in range(n - 1))]
    ids, mask, types = make_inputs(97)
    with torch.no_grad():
        a, b = kept(ids, mask, types), pruned(ids, mask, types)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    manifest = export_bundle(supernet, full, tmp_path / "b")
    assert manifest.dropped_identities == dropped
    # The plain BERT graph: per layer the attention output and FFN in/out (QKV is in Attention)
    assert manifest.operators["MatMul"] == 3 * n
    # In an identity network every equal-width transition is a slice of I, and dropped;
    # projections that change the width stay.
    small = export_bundle(supernet, supernet.config.space.smallest, tmp_path / "s")
    assert small.dropped_identities == [f"transitions.{i}" for i in range(n - 1)]
    # A network whose bottlenecks are not identities keeps every matrix.
    trained = export_bundle(randomize(supernet), full, tmp_path / "t")
    assert trained.dropped_identities == [] and trained.operators["MatMul"] == 4 * n + 1


def _int8_gate(monkeypatch, fails):
    """Export as the planner does, with int8's accuracy gate failing on the n-th int8 export
    (from 1) where ``fails(n)``; returns the int8 shapes exported, in order."""
    import shaper_deploy.planner as planner
    from shaper_deploy.errors import ExportError

    real, int8_exports = planner.export_bundle, []

    def export(model, shape, out, options, **kw):
        if options.int8:
            int8_exports.append(shape)
            if fails(len(int8_exports)):
                raise ExportError("int8 model is too far from fp32: mean token cosine 0.946 < "
                                  "required 0.95; lower --int8-min-cosine")
        return real(model, shape, out, options, **kw)

    monkeypatch.setattr(planner, "export_bundle", export)
    return int8_exports


def test_a_step_up_that_fails_the_int8_gate_keeps_the_shape_that_fit(profile, supernet,
                                                                      tmp_path, monkeypatch):
    int8_exports = _int8_gate(monkeypatch, lambda n: n == 2)
    budget = _budget_for(profile, "int8", 2)
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="int8",
                                 options=ExportOptions(int8_min_cosine=0.5),
                                 measure=Scripted(profile, {"int8": 0.6}))
    c = manifest.plan["candidates"][0]
    assert len(int8_exports) == 2 and c["status"] == "chosen"
    assert c["shape"] == list(int8_exports[0].widths)  # the first, which fit
    assert "gate_failed" in c["exports"][-1]
    assert manifest.default_model == "model_quantized.onnx"


@pytest.mark.parametrize("failing, factor, size", [(1, 0.6, 1 / 2), (2, 1.5, 2 / 3)],
                         ids=["first shape", "re-plan after a miss"])
def test_an_int8_shape_that_fails_the_gate_gives_way_to_a_smaller_one(profile, supernet, tmp_path,
                                                                      monkeypatch, failing,
                                                                      factor, size):
    """Nothing kept yet, and an int8 shape fails the gate: the first shape, or the re-plan after
    the first missed (the predictor 50% optimistic; a clean-clone demo on the AMD Zen 2 class
    dropped int8 there). Once, the largest smaller untried shape that fits is tried, and the
    failed one bounds the step ups (nothing at or above it is exported again)."""
    int8_exports = _int8_gate(monkeypatch, lambda n: n == failing)
    budget = _budget_for(profile, "int8", int(len(cigar_family(PLAN_SPACE)) * size))
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="int8",
                                 options=ExportOptions(int8_min_cosine=0.5),
                                 measure=Scripted(profile, {"int8": factor}),
                                 progress=notes.append)
    c = manifest.plan["candidates"][0]
    failed = int8_exports[failing - 1]
    assert len(int8_exports) > failing and c["status"] == "chosen", notes
    assert all("measured_ms" in e for e in c["exports"][:failing - 1])  # the miss, if any
    assert "gate_failed" in c["exports"][failing - 1] and c["params"] < failed.params()
    assert all(s.params() < failed.params() for s in int8_exports[failing:])
    assert any("trying the next smaller shape that fits" in n for n in notes)


def test_int8_that_fails_the_gate_twice_drops_out(profile, supernet, tmp_path, monkeypatch):
    _int8_gate(monkeypatch, lambda n: True)
    budget = _budget_for(profile, "int8", len(cigar_family(PLAN_SPACE)) // 2)
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b2", precision="auto",
                                 options=ExportOptions(int8_min_cosine=0.5),
                                 measure=Scripted(profile, {"fp32": 1.0, "int8": 0.6}))
    cands = {c["precision"]: c for c in manifest.plan["candidates"]}
    assert cands["int8"]["status"] == "gate failed" and len(cands["int8"]["exports"]) == 2


def _foreign(profile, tmp_path, **fields):
    """A copy of ``profile`` whose fingerprint says it was measured on another machine."""
    out = tmp_path / "foreign"
    shutil.copytree(profile.path, out)
    header = json.loads((out / "profile.json").read_text())
    # The other machine's vector class is never this one's, whatever CPU runs the tests: an
    # AVX2 CPU without VNNI (U8U8 int8) here on a VNNI CPU, an AVX-512 VNNI CPU elsewhere.
    here = set(cpu_model_and_flags()[1])
    isa = (["avx", "avx2", "fma"] if here & {"avx512_vnni", "avx_vnni"} else
           ["avx", "avx2", "avx512bw", "avx512f", "avx512_vnni", "fma"])
    header["fingerprint"].update({"cpu_model": "Some Other CPU", "isa": isa, **fields})
    # as that machine's profile timed int8: its ISA's default format (a probe on a CPU without
    # VNNI may have chosen 7-bit weights for this profile, which a VNNI CPU does not use)
    header["graph"]["int8"] = int8_record(int8_format(isa))
    (header.get("probe") or {}).pop("int8_format", None)
    (out / "profile.json").write_text(json.dumps(header))
    return DeviceProfile.load(out)


def test_a_plan_makes_int8_in_the_format_its_profile_timed(profile, supernet, tmp_path):
    from shaper_deploy.runtime import int8_formats

    def copy(name, isa, fmt, why):
        out = tmp_path / name
        shutil.copytree(profile.path, out)
        header = json.loads((out / "profile.json").read_text())
        header["fingerprint"].update({"cpu_model": "Some Other CPU", "isa": isa})
        header["graph"]["int8"] = int8_record(fmt)
        header["probe"] = {**(header.get("probe") or {}), "int8_format": {**fmt, "why": why}}
        (out / "profile.json").write_text(json.dumps(header))
        return DeviceProfile.load(out)

    # an AVX2 machine without VNNI whose probe found U8S8 with 7-bit weights the faster
    avx2 = ["avx", "avx2", "fma"]
    chosen = copy("avx2", avx2, int8_formats(avx2)[1], "measured 1.25x faster")
    manifest = export_for_budget(supernet, 1e6, chosen, tmp_path / "b", precision="int8",
                                 for_device=True)
    q = manifest.quantization
    assert (q["weight_type"], q["reduce_range"]) == ("QInt8", True)
    assert q["format_reason"] == "measured 1.25x faster"
    # int8 that fails its gate in that format: fp32 kept, and the more faithful one named
    seen = []
    strict = export_for_budget(supernet, 1e6, chosen, tmp_path / "s", for_device=True,
                               options=ExportOptions(int8_min_cosine=1.0), progress=seen.append)
    assert strict.plan["precision"] == "fp32"
    assert any(m.startswith("int8 in U8S8-reduce-range (the profile's format, the faster here) "
                            "failed its accuracy gate; U8U8") and "--int8-format U8U8" in m
               for m in seen), seen
    # a format the profiled ISA would not use (7-bit weights on a VNNI CPU): another graph
    vnni = copy("vnni", ["avx2", "avx512f", "avx512_vnni"], int8_formats(avx2)[1], "?")
    with pytest.raises(PlannerError, match=r"timed another graph .*int8 .*'reduce_range': True"):
        export_for_budget(supernet, 1e6, vnni, tmp_path / "c", for_device=True)


def test_a_profile_of_another_machine_is_refused_or_planned_for_it(profile, supernet,
                                                                    tmp_path):
    foreign = _foreign(profile, tmp_path)
    assert any(d.startswith("cpu_model: 'Some Other CPU'") for d in foreign.foreign_fields())
    assert not profile.foreign_fields()
    with pytest.raises(ProfileError, match=r"measured on another machine \(cpu_model: 'Some "
                                           r"Other CPU' vs .*isa: .*--for-device"):
        export_for_budget(supernet, 1e6, foreign, tmp_path / "b")
    save_supernet(supernet, tmp_path / "super")
    r = CliRunner().invoke(main, ["predict", "--profile", str(foreign.path), "--shape", "60x3"])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "cpu_model: 'Some Other CPU'" in r.stderr and "--for-device" in r.stderr
    r = CliRunner().invoke(main, ["predict", "--profile", str(foreign.path), "--shape", "60x3",
                                  "--for-device", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["this_machine"]["matches"] is False
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--latency",
                                  "5ms", "--profile", str(foreign.path), "--out",
                                  str(tmp_path / "x")])
    assert r.exit_code == 1 and "--for-device" in r.stderr and not (tmp_path / "x").exists()

    def never(*args):
        raise AssertionError("a plan for another machine measured on this one")

    # for that machine: nothing measured here, int8 in its format
    manifest = export_for_budget(supernet, 1e6, foreign, tmp_path / "b", measure=never,
                                 for_device=True)
    plan = manifest.plan
    assert plan["target"] == {"fingerprint": foreign.header.fingerprint, "for_device": True,
                              "verified": False}
    assert plan["measured_ms"] is None and plan["shape"] == list(PLAN_SPACE.largest.widths)
    int8 = [c for c in plan["candidates"] if c["precision"] == "int8"][0]
    assert int8["status"] in ("fits", "chosen") and int8["measured_ms"] is None
    # verify on this machine refuses: the plan is for the other one
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5"])
    assert r.exit_code == 1 and "this machine is not the one profile" in r.stderr
    # deployed elsewhere, the plan says it is unchecked on its machine
    r = CliRunner().invoke(main, ["triton", str(tmp_path / "b"), "--out", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1] == (
        f"  plan: p90 <= 1000000.00 ms at batch 1 x 16 ({plan['precision']}, fidelity "
        f"{plan['fidelity']:.4f}) on Some Other CPU: NOT verified on that machine; run "
        f"shaperctl verify {tmp_path / 'b'} there")
    # the export command's own summary: the prediction, the fidelity, then what to do there
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--latency",
                                  "1000000ms", "--profile", str(foreign.path), "--for-device",
                                  "--seq-len", "16", "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    chosen = next(line for line in r.stdout.splitlines() if line.startswith("chosen"))
    assert re.search(r"ms predicted \([\d.]+ with the margin\), [\d.]+ \(.*\); UNVERIFIED: run "
                     r"shaperctl verify on Some Other CPU$", chosen), chosen
    # shapes and search apply the same rule
    r = CliRunner().invoke(main, ["shapes", "--supernet", str(tmp_path / "super"), "--profile",
                                  str(foreign.path)])
    assert r.exit_code == 1 and "--for-device" in r.stderr
    r = CliRunner().invoke(main, ["shapes", "--supernet", str(tmp_path / "super"), "--profile",
                                  str(foreign.path), "--for-device", "--steps", "2"])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0].startswith(
        f"latency: p90 at batch 1 x 16 tokens predicted by {foreign.path}, FOR ANOTHER MACHINE "
        "(cpu_model: 'Some Other CPU' vs ")
    listed = CliRunner().invoke(main, ["profiles", "list", str(tmp_path), "--json"])
    rows = {Path(p["path"]).name: p for p in json.loads(listed.stdout)["profiles"]}
    assert rows["foreign"]["matches_this_machine"] is False and not rows["foreign"]["use_here"]
    human = CliRunner().invoke(main, ["profiles", "show", str(foreign.path)])
    assert "ANOTHER MACHINE (cpu_model: 'Some Other CPU'" in human.stdout


def test_profiles_list_marks_one_profile_per_space_to_use_the_most_specific_then_newest(
        profile, tmp_path):
    # three profiles of this machine: an older one with a cpu_id, a newer one with it, and
    # the newest of all from before fingerprints named the CPU model (no cpu_id)
    for name, created, drop_id in (("a-older", "2026-01-01T00:00:00+00:00", False),
                                   ("b-newer", "2026-06-01T00:00:00+00:00", False),
                                   ("c-no-cpu-id", "2027-01-01T00:00:00+00:00", True)):
        shutil.copytree(profile.path, tmp_path / name)
        header = json.loads((tmp_path / name / "profile.json").read_text())
        header["created"] = created
        if drop_id:
            del header["fingerprint"]["cpu_id"]
        (tmp_path / name / "profile.json").write_text(json.dumps(header))
    assert profile.trust["reliable"] and profile.header.fingerprint.get("cpu_id")
    listed = CliRunner().invoke(main, ["profiles", "list", str(tmp_path), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {Path(p["path"]).name: p for p in json.loads(listed.stdout)["profiles"]}
    assert all(rows[n]["matches_this_machine"] for n in ("a-older", "b-newer", "c-no-cpu-id"))
    assert [n for n, p in rows.items() if p["use_here"]] == ["b-newer"]
    human = CliRunner().invoke(main, ["profiles", "list", str(tmp_path)]).stdout
    assert [line.split()[0] for line in human.splitlines() if line.endswith("  USE HERE")] == [
        str(tmp_path / "b-newer")]
    assert "\nUSE HERE: per design space and device, the reliable profile" in human


def test_percentile_and_device_relative_budgets(profile, supernet, tmp_path):
    shape = PLAN_SPACE.largest
    p50 = float(profile.predict([shape], "fp32", 1, 16)[0])
    assert float(profile.predict([shape], "fp32", 1, 16, 90)[0]) == pytest.approx(1.2 * p50)
    assert float(profile.predict([shape], "fp32", 1, 16, 99)[0]) == pytest.approx(1.5 * p50)
    assert float(profile.predict([shape], "fp32", 1, 16, 92.5)[0]) == pytest.approx(1.25 * p50)
    budget = parse_budget("80%")
    assert budget.relative and budget.value == pytest.approx(0.8)
    assert profile.budget_ms(budget, (1, 16), 90) == pytest.approx(0.8 * 1.2 * p50)
    for bad in ("0%", "2000%", "%", "80 %%"):
        with pytest.raises(PlannerError, match="budget"):
            parse_budget(bad)
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 measure=Scripted(profile, {"fp32": 1.0}), percentile=90)
    plan = manifest.plan
    assert plan["budget"] == {"text": "80%", "value": 0.8, "relative": True}
    assert plan["percentile"] == 90 and plan["budget_ms"] == pytest.approx(0.96 * p50)
    assert plan["shape"] != list(shape.widths) and plan["measured_ms"] <= plan["budget_ms"]
    with pytest.raises(PlannerError, match="--percentile must be between 50 and 99"):
        export_for_budget(supernet, budget, profile, tmp_path / "c", percentile=99.9)
    r = CliRunner().invoke(main, ["predict", "--profile", str(profile.path), "--shape", "128x3",
                                  "--percentile", "30"])
    assert r.exit_code == 2 and "--percentile" in r.stderr


def test_verify_measures_a_plan_here_and_records_it(profile, supernet, tmp_path):
    manifest = export_for_budget(supernet, 1e6, profile, tmp_path / "b", precision="fp32",
                                 measure=Scripted(profile, {"fp32": 1.0}))
    assert manifest.promise["checked"] == {"by": "export", "when": manifest.created,
                                           "ms": manifest.plan["measured_ms"],
                                           "within_budget": True}
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5", "--json"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.stdout)["verification"]
    assert v["within_budget"] and v["runs"] >= 10 and v["percentile"] == 90
    assert v["estimated_ms"] == pytest.approx(v["intrinsic_ms"] / v["priced_drift"] * 1.2)
    assert v["judged_ms"] == max(v["estimated_ms"], v["observed_ms"])
    from shaper_deploy.bundle import BundleManifest

    recorded = BundleManifest.read(tmp_path / "b").plan
    assert recorded["verification"] == v and recorded["target"]["verified"] is True
    promise = BundleManifest.read(tmp_path / "b").promise
    assert promise["checked"] == {"by": "verify", "when": v["when"], "ms": v["judged_ms"],
                                  "within_budget": True}
    assert promise["machine"] == profile.header.fingerprint["cpu_model"]
    # a budget the bundle cannot meet: exit status 3, recorded as not verified
    manifest = BundleManifest.read(tmp_path / "b")
    manifest.plan["budget_ms"] = 1e-6
    manifest.write(tmp_path / "b")
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5"])
    assert r.exit_code == 3 and "OVER the" in r.stdout
    t = CliRunner().invoke(main, ["triton", str(tmp_path / "b"), "--out", str(tmp_path / "r")])
    assert t.exit_code == 0, t.output
    assert re.search(r"^  plan: p90 <= 0\.00 ms at batch 1 x 16 \(fp32, fidelity [0-9.]+\) on "
                     r".+: [0-9.]+ ms by verify, 20[0-9T:+-]+, OVER the budget$", t.stdout,
                     re.M), t.stdout
    assert "advice" in r.stdout and "its prediction missed" in r.stdout  # the machine as profiled
    recorded = BundleManifest.read(tmp_path / "b").plan
    assert recorded["target"]["verified"] is False
    assert "plan again" in recorded["verification"]["advice"]
    # a verdict written before judged_ms (2026-12-02) is still served with its number
    old = BundleManifest.read(tmp_path / "b")
    del old.plan["verification"]["judged_ms"]
    old.write(tmp_path / "b")
    promise = BundleManifest.read(tmp_path / "b").promise
    assert promise["checked"]["ms"] == old.plan["verification"]["measured_ms"]
    assert promise["checked"]["within_budget"] is False


def test_verify_on_a_machine_without_the_plans_profile(profile, supernet, tmp_path,
                                                       monkeypatch):
    """A bundle copied to its target (or verified from another folder) finds no profile at the
    plan's path: verify takes the one profiles list marks for this machine and the bundle's
    design space in ./profiles and says so; with none, one line says what to pass. bench says
    it did not compare."""
    export_for_budget(supernet, 1e6, profile, tmp_path / "b", precision="fp32",
                      measure=Scripted(profile, {"fp32": 1.0}))
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    manifest["plan"]["profile"] = "profiles/on-the-laptop"
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(manifest))
    (tmp_path / "target").mkdir()
    monkeypatch.chdir(tmp_path / "target")
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5", "--json"])
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert r.stderr.splitlines() == [
        f"Error: bundle {tmp_path / 'b'} was planned with profile profiles/on-the-laptop, which "
        "is not here, and profiles/ holds no reliable cpu profile of this machine for its "
        "design space; pass --profile with a profile of this machine (verify times the bundle "
        "with its protocol and reference graph)"]
    bench = ["bench", str(tmp_path / "b"), "--duration", "0.3", "--seq-len", "12", "--json"]
    r = CliRunner().invoke(main, bench[:-1])
    assert r.exit_code == 0, r.output
    assert ("profile     the plan's profiles/on-the-laptop is not here, nor a profile of this "
            "machine for its design space in ./profiles: not compared") in r.stdout
    shutil.copytree(profile.path, tmp_path / "target" / "profiles" / "mine")
    said = ("the plan's profile profiles/on-the-laptop is not here: measuring with "
            "profiles/mine, the profile of this machine for the bundle's design space")
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5", "--json"])
    assert r.exit_code == 0 and said in r.stderr, r.output
    verification = json.loads(r.stdout)["verification"]
    assert verification["within_budget"] is True and verification["profile"] == "profiles/mine"
    r = CliRunner().invoke(main, bench)
    assert r.exit_code == 0 and said in r.stderr, r.output
    data = json.loads(r.stdout)
    assert data["plan"]["measured_with_profile"] == "profiles/mine"
    assert data["profile_protocol"]["percentile"] == 90
    r = CliRunner().invoke(main, [*bench, "--profile", str(profile.path)])  # named: no word
    assert r.exit_code == 0 and r.stderr == "", r.output
    assert json.loads(r.stdout)["plan"]["measured_with_profile"] == str(profile.path)
    foreign = _foreign(profile, tmp_path)
    r = CliRunner().invoke(main, [*bench, "--profile", str(foreign.path)])
    assert r.exit_code == 1 and r.stdout == "" and len(r.stderr.splitlines()) == 1, r.output
    assert (f"Error: --profile {foreign.path} describes another machine (cpu_model: 'Some "
            "Other CPU'") in r.stderr
    unplanned = tmp_path / "unplanned"
    export_bundle(supernet, PLAN_SPACE.smallest, unplanned, ExportOptions(optimize=False))
    r = CliRunner().invoke(main, ["bench", str(unplanned), "--profile", str(profile.path)])
    assert r.exit_code == 2 and "--profile goes with a planned bundle" in r.stderr, r.output
    # a plan for another device kind (here: cuda), benched on cpu: said, not compared
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    manifest["plan"]["device"] = "cuda"
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(manifest))
    r = CliRunner().invoke(main, bench[:-1])
    assert r.exit_code == 0, r.output
    assert ("profile     the plan is for cuda, this load ran on cpu: not compared (bench "
            "--device cuda compares)") in r.stdout and "now " not in r.stdout
    r = CliRunner().invoke(main, [*bench, "--profile", str(profile.path)])
    assert r.exit_code == 2 and "bench it with --device cuda" in r.stderr, r.output


@pytest.mark.parametrize("drift, priced, within", [
    (1.4, 1.4, True),   # a slow window the profile's groups saw: not counted twice
    (0.8, 0.8, True),   # a fast window: judged at the profiled speed
    (3.0, 1.5, False),  # beyond every slowdown the profile saw: the excess lifts the estimate
])
def test_a_slowdown_the_profile_priced_is_not_counted_twice(profile, supernet, tmp_path,
                                                           monkeypatch, drift, priced, within):
    """The model's floor is 0.7 ms at the profile's speed, so 0.84 ms at p90 (the scripted
    tail 1.2) against a 1 ms budget. verify times it while the machine runs ``drift`` x its
    profiled speed, every run at the floor now: a slowdown up to the profile's own 90th
    percentile (1.5x here) is taken out of the floor before the tail is applied (the rule
    that judged a demo's plan OVER at 1.50x had counted it twice: in the floor, then in the
    tail); a speed-up is taken out too; beyond 1.5x the rest stays in, and the requests just
    timed are over the budget anyway: exit 3."""
    import shaper_deploy.profiling.predictor as predictor

    export_for_budget(supernet, 1e6, profile, tmp_path / "b", precision="fp32",
                      measure=Scripted(profile, {"fp32": 1.0}))
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    manifest["plan"]["budget_ms"] = 1.0
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(manifest))
    floor_now = 0.7 * drift

    def timed(model, header, ref_ms, precision, workload, device, seconds, extend=None):
        return {"measured_ms": floor_now, "intrinsic_ms": floor_now, "drift": drift,
                "times": [floor_now] * 50, "seconds": 1.0, "batch": workload[0],
                "seq_len": workload[1]}

    monkeypatch.setattr(predictor, "measure_model", timed)
    monkeypatch.setattr(predictor.DeviceProfile, "machine_speed",
                        lambda self: {"groups": 8, "median": 1.1, "p90": 1.5, "max": 2.0})
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5", "--json"])
    assert r.exit_code == (0 if within else 3), r.output
    v = json.loads(r.stdout)["verification"]
    assert v["priced_drift"] == pytest.approx(priced)
    assert v["estimated_ms"] == pytest.approx(floor_now / priced * 1.2)
    assert v["observed_ms"] == pytest.approx(floor_now)
    assert v["judged_ms"] == pytest.approx(max(floor_now / priced * 1.2, floor_now))
    assert v["within_budget"] is within
    # over because the machine is slower than the profile priced: profile it as it runs now
    assert (v["advice"] is None) is within
    if not within:
        assert f"runs {drift:.2f}x slower" in v["advice"] and "beyond the x1.50" in v["advice"]
        assert f"shaperctl profile --from {profile.path} --out DIR" in v["advice"]
    if drift == 1.4:  # the old rule, floor now x tail: 1.18 ms, OVER
        assert floor_now * 1.2 > 1.0
    human = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "5"])
    assert "at the profiled speed" in human.stdout
    assert ("beyond the slowdowns the profile's tail prices" in human.stdout) is (drift == 3.0)
    # a profile that kept no record of its machine's speed: nothing is taken out
    assert predictor.priced_drift(drift, None) == 1.0


def test_longer_window_follows_the_advice_to_measure_longer():
    """Over only in the window just timed (within at the profiled speed, a slowdown the tail
    prices): the next of 60 s and 300 s well over what was timed; every other verdict
    stands."""
    from shaper_deploy.profiling.predictor import longer_window

    m = {"estimated_ms": 0.84, "observed_ms": 1.2, "judged_ms": 1.2, "drift": 1.4,
         "priced_drift": 1.4, "seconds": 20.2}
    assert longer_window(m, 1.0) == 60
    assert longer_window({**m, "seconds": 45.0}, 1.0) == 300  # 60 is not well over 45
    assert longer_window({**m, "seconds": 300.4}, 1.0) is None  # five minutes: it stands
    assert longer_window(m, 1.3) is None  # within
    assert longer_window({**m, "estimated_ms": 1.1, "judged_ms": 1.2}, 1.0) is None
    assert longer_window({**m, "drift": 2.1}, 1.0) is None  # beyond what the tail prices
    assert longer_window(m, 1.0, longest=45) == 45  # --longest caps the ladder
    assert longer_window({**m, "seconds": 45.0}, 1.0, longest=45) is None


def test_verify_times_on_while_over_only_in_a_slow_window(profile, supernet, tmp_path,
                                                          monkeypatch):
    """The model's floor is 0.7 ms at the profiled speed (0.84 ms at p90, the scripted tail
    1.2) against a 1 ms budget. Its first 20 s run with the machine 1.4x slow, a slowdown the
    profile's tail prices (its groups' p90 1.5x): 50 runs at 1.2 ms, a p90 over the budget in
    the requests just timed alone. verify times on to 60 s (70 runs at 0.75 ms: the p90 of
    all 120 still 1.2 ms), then to 300 s (480 more: 1.2 ms is now 8% of the runs), and judges
    all 600: within (0.84 ms, the floor at the profiled speed x the tail). --longest 60
    stops at the minute: OVER, exit 3, with the advice to measure five minutes."""
    import shaper_deploy.profiling.predictor as predictor

    export_for_budget(supernet, 1e6, profile, tmp_path / "b", precision="fp32",
                      measure=Scripted(profile, {"fp32": 1.0}))
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    manifest["plan"]["budget_ms"] = 1.0
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(manifest))
    asked = []

    def timed(model, header, ref_ms, precision, workload, device, seconds, extend=None):
        times, total = [], seconds
        while True:  # the runs of each window: 50 slow ones, then calm
            times += [1.2] * 50 if not times else [0.75] * (2 * round(total) - len(times))
            m = {"measured_ms": float(np.median(times)), "intrinsic_ms": 0.98 if total < 50
                 else 0.75, "drift": 1.4 if total < 50 else 1.07, "times": list(times),
                 "seconds": float(total), "batch": workload[0], "seq_len": workload[1]}
            more = extend(m) if extend is not None else None
            asked.append(more)
            if more is None:
                return m
            total = more

    monkeypatch.setattr(predictor, "measure_model", timed)
    monkeypatch.setattr(predictor.DeviceProfile, "machine_speed",
                        lambda self: {"groups": 8, "median": 1.1, "p90": 1.5, "max": 2.0})
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "25", "--json"])
    assert r.exit_code == 0, r.output
    assert asked == [60.0, 300.0, None]
    v = json.loads(r.stdout)["verification"]
    assert v["within_budget"] is True and v["advice"] is None
    assert (v["runs"], v["seconds"]) == (600, 300.0)
    assert v["observed_ms"] == pytest.approx(0.75)
    assert [(w["seconds"], w["runs"], w["judged_ms"]) for w in v["windows"]] == [
        (25.0, 50, pytest.approx(1.2)), (60.0, 120, pytest.approx(1.2)),
        (300.0, 600, pytest.approx(0.75 / 1.07 * 1.2))]
    assert v["windows"][0]["estimated_ms"] == pytest.approx(0.98 / 1.4 * 1.2)
    told = [line for line in r.stderr.splitlines() if "timing on" in line]
    assert len(told) == 2 and told[0].startswith("p90 1.20 ms in the 25 s timed, over the "
                                                 "1.00 ms budget; 0.84 ms at the profiled "
                                                 "speed (the machine 1.40x it")
    assert told[0].endswith("timing on to 60 s, judged on all the runs"), told
    human = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "25"])
    assert re.search(r"^windows +25 s: p90 1\.20 ms \(OVER; .*; 60 s: .*; 300 s: p90 0\.84 ms "
                     r"\(within; ", human.stdout, re.M), human.stdout
    asked.clear()
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "25",
                                  "--longest", "60", "--json"])
    assert r.exit_code == 3 and asked == [60, None], r.output
    v = json.loads(r.stdout)["verification"]
    assert v["seconds"] == 60.0 and len(v["windows"]) == 2
    assert "verify BUNDLE --duration 300" in v["advice"]
    # one window as long as --longest: nothing more
    asked.clear()
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "b"), "--duration", "60",
                                  "--longest", "60", "--json"])
    assert r.exit_code == 3 and asked == [None], r.output


def test_measure_model_times_on_with_the_same_sessions(profile, supernet, tmp_path):
    """The real timing loop: asked for more when its seconds are up, it goes on and returns
    all the runs; each window it was asked at is kept with the runs up to its end."""
    export_for_budget(supernet, 1e6, profile, tmp_path / "b", precision="fp32",
                      measure=Scripted(profile, {"fp32": 1.0}))
    from shaper_deploy.bundle import BundleManifest

    model = tmp_path / "b" / BundleManifest.read(tmp_path / "b").default_model
    seen = []

    def go_on(m):
        seen.append(m)
        return 0.6 if len(seen) == 1 else None
    m = profile.measure(model, "fp32", (1, 16), "cpu", seconds=0.2, go_on=go_on)
    assert len(seen) == 2 and seen[0]["runs"] < seen[1]["runs"] == m["runs"]
    assert seen[0]["seconds"] >= 0.2 and m["seconds"] >= 0.6
    assert [w["runs"] for w in m["windows"]] == [seen[0]["runs"], m["runs"]]
    assert m["windows"][-1]["judged_ms"] == m["judged_ms"]
    assert "windows" not in profile.measure(model, "fp32", (1, 16), "cpu", seconds=0.2)


def test_an_int8_fallback_is_predicted_between_int8_and_fp32(reliable_profile, supernet,
                                                               tmp_path):
    save_supernet(supernet, tmp_path / "super")

    def export(out, *args):
        r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                      "--params", "250K", "--profile", str(reliable_profile),
                                      "--int8", "--out", str(tmp_path / out), *args, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    plain = export("plain", "--int8-min-cosine", "0.5")
    base = plain["quantization"]["mean_token_cosine"]
    assert plain["quantization"]["fallback"] is None
    data = export("fb", "--int8-min-cosine", str(base + (1 - base) / 4))
    fallback = data["quantization"]["fallback"]
    assert fallback["passed"] and 0 < fallback["fp32_weight_share"] < 1
    pred = {p["precision"]: p for p in data["predicted_latency"]}
    fp32, int8 = pred["fp32"]["predicted_ms"], pred["int8"]
    share = int8["fp32_weight_share"]
    assert share == fallback["fp32_weight_share"]
    assert int8["predicted_ms"] == pytest.approx(
        int8["all_int8_predicted_ms"] + share * (fp32 - int8["all_int8_predicted_ms"]))
    assert int8["all_int8_predicted_ms"] == pytest.approx(
        {p["precision"]: p for p in plain["predicted_latency"]}["int8"]["predicted_ms"])
    human = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                      "--params", "250K", "--profile", str(reliable_profile),
                                      "--int8", "--int8-min-cosine",
                                      str(base + (1 - base) / 4), "--out", str(tmp_path / "h")])
    assert human.exit_code == 0, human.output
    assert "kept fp32" in human.stdout and "of the way to fp32" in human.stdout


def test_each_shape_family_is_screened_and_the_best_one_exported(profile, supernet, tmp_path):
    """Per precision, every family's largest shape predicted to fit is scored by the judge in
    PyTorch before anything is exported; the best family's shape is exported, and ONNX Runtime
    scores it as the screen did (parity). One family named: no screen."""
    from shaper_deploy.planner import export_dropped
    from shaper_deploy.templates import PLAN_FAMILIES, shape_family

    def never(*args):
        raise AssertionError("measured")

    budget = _budget_for(profile, "fp32", len(cigar_family(PLAN_SPACE)) // 2)
    notes = []
    manifest = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                                 workload=(1, 16), measure=never, for_device=True,
                                 progress=notes.append)
    families = manifest.plan["families"]
    assert families["names"] == list(PLAN_FAMILIES)
    assert families["screened_on"].startswith("8 rows of random token ids")
    rows = families["by_precision"]["fp32"]
    assert [r["family"] for r in rows] == list(PLAN_FAMILIES)
    dropped = export_dropped(supernet)
    for r in rows:  # each family's largest shape predicted to fit, as for the cigar alone
        plan = plan_for_latency(profile, budget, "fp32", 1, 16, family=shape_family(
            r["family"], PLAN_SPACE), dropped=dropped)
        assert r["shape"] == list(plan.shape.widths) and r["upper_ms"] <= budget
        assert 0 < r["score"] <= 1
    assert len({round(r["score"], 4) for r in rows}) > 1  # the shapes differ in fidelity
    best = max(rows, key=lambda r: (round(r["score"], 4), -PLAN_FAMILIES.index(r["family"])))
    chosen = manifest.plan["candidates"][0]
    assert (chosen["family"], chosen["shape"]) == (best["family"], best["shape"])
    assert manifest.shape == best["shape"] and chosen["exports"][0]["family"] == best["family"]
    assert chosen["fidelity"] == pytest.approx(best["score"], abs=1e-3)  # ONNX = PyTorch
    assert any("shape families screened" in n and f"exporting {best['family']}" in n
               for n in notes)
    one = export_for_budget(supernet, budget, profile, tmp_path / "u", precision="fp32",
                            workload=(1, 16), measure=never, for_device=True,
                            families=["upper-triangle"], progress=notes.append)
    upper = plan_for_latency(profile, budget, "fp32", 1, 16, family=shape_family(
        "upper-triangle", PLAN_SPACE), dropped=dropped)
    assert one.shape == list(upper.shape.widths)
    assert one.plan["candidates"][0]["family"] == "upper-triangle"
    assert one.plan["families"]["screened_on"] is None
    assert one.plan["families"]["by_precision"]["fp32"][0]["score"] is None
    with pytest.raises(PlannerError, match=r"unknown shape family 'banana'; allowed: cigar, "
                                           r"rectangle, lower-triangle"):
        export_for_budget(supernet, budget, profile, tmp_path / "x", families=["banana"])
    save_supernet(supernet, tmp_path / "super")
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--latency",
                                  "5ms", "--profile", str(profile.path), "--families",
                                  "cigar,banana", "--out", str(tmp_path / "y")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "unknown shape family 'banana'" in r.stderr and not (tmp_path / "y").exists()
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                                  "60x3", "--families", "cigar", "--out", str(tmp_path / "z")])
    assert r.exit_code == 2 and "--families go(es) with --latency" in r.output


def test_a_plans_bundle_as_shape_exports_the_plans_precision(profile, supernet, tmp_path):
    """The paper's last step: a planned slice fine-tuned alone is exported again at the
    plan's shape (``--shape B/shaper.json``). Where the plan chose int8, int8 is the graph
    whose latency it measured: written and served by default, said on stderr; an fp32 plan's
    shape exports fp32 alone."""
    save_supernet(supernet, tmp_path / "super")
    budget = _budget_for(profile, "int8", len(cigar_family(PLAN_SPACE)) // 2)
    for prec in ("int8", "fp32"):
        export_for_budget(supernet, budget if prec == "int8" else 1e6, profile,
                          tmp_path / f"plan-{prec}", precision=prec,
                          options=ExportOptions(int8_min_cosine=0.5),
                          measure=Scripted(profile, {prec: 1.0}))
        r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                      "--shape", str(tmp_path / f"plan-{prec}" / "shaper.json"),
                                      "--int8-min-cosine", "0.5",
                                      "--out", str(tmp_path / f"again-{prec}"), "--json"])
        assert r.exit_code == 0, r.output
        again = json.loads(r.stdout)
        planned = json.loads((tmp_path / f"plan-{prec}" / "shaper.json").read_text())
        assert again["shape"] == planned["shape"]
        said = "plan chose int8 at this shape: writing int8 too" in r.stderr
        if prec == "int8":
            assert said and again["default_model"] == "model_quantized.onnx", r.stderr
        else:
            assert not said and "model_quantized.onnx" not in again["files"], r.stderr


def test_search_limits_latency_as_export_means_it(reliable_profile, tmp_path):
    """``search --latency 80%`` is 80% of the full fp32 model as export prices it (the graph
    export writes: an identity network's identity projections dropped), at the workload and
    precision given; the table says the limit, the workload and whose predictions. ``shapes
    --supernet --profile`` prices its shapes the same way."""
    import hashlib

    from shaper_deploy.planner import export_dropped
    from shaper_deploy.profiling.predictor import feature_names
    from shaper_deploy.shape import Shape
    from shaper_deploy.training.quality import fit_quality

    from .conftest import random_shapes

    shutil.copytree(reliable_profile, tmp_path / "profile")  # projections cost time too
    meta = json.loads((tmp_path / "profile" / "predictor.json").read_text())
    for points in meta["coef"].values():
        for coef in points.values():
            coef[feature_names(PLAN_SPACE).index("bottlenecks")] = 1.0
    data = (json.dumps(meta) + "\n").encode()
    (tmp_path / "profile" / "predictor.json").write_bytes(data)
    header = json.loads((tmp_path / "profile" / "profile.json").read_text())
    header["files"]["predictor.json"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "profile" / "profile.json").write_text(json.dumps(header))
    profile = DeviceProfile.load(tmp_path / "profile")

    net = SuperBert(CONFIG).eval()
    with torch.no_grad():  # an identity super network, as supernet init makes from a BERT
        for layer in net.layers:
            for lin in (layer.input_bottleneck, layer.output_bottleneck):
                lin.weight.copy_(torch.eye(*lin.weight.shape))
                lin.bias.zero_()
    save_supernet(net, tmp_path / "super")
    shapes = random_shapes(PLAN_SPACE, 24)
    fit_quality(shapes, [s.params() / 1e6 for s in shapes], "cosine").save(tmp_path / "q")
    dropped = export_dropped(net)
    full = PLAN_SPACE.largest
    assert dropped(full)  # what makes the limit differ from an undropped full model's
    search = ["search", "--supernet", str(tmp_path / "super"), "--quality-predictor",
              str(tmp_path / "q"), "--profile", str(profile.path), "--latency", "80%",
              "--batch", "2", "--seq-len", "16", "--precision", "int8", "--iterations", "5"]
    r = CliRunner().invoke(main, search + ["--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    limit = 0.8 * float(profile.predict([full], "fp32", 2, 16, 90.0, [dropped(full)])[0])
    assert d["latency_limit"]["ms"] == pytest.approx(limit)
    assert limit < 0.8 * float(profile.predict([full], "fp32", 2, 16, 90.0)[0])
    best = Shape(tuple(d["best"]["shape"]), PLAN_SPACE)
    assert d["best"]["latency_ms"] == pytest.approx(float(profile.predict(
        [best], "int8", 2, 16, 90.0, [dropped(best)])[0]) * profile.margin("int8"))
    assert d["best"]["latency_ms"] <= limit
    assert d["export"] == (f"shaperctl export --supernet {tmp_path / 'super'} --shape "
                           f"{','.join(map(str, best.widths))} --int8 --profile "
                           f"{profile.path} --percentile 90 --out DIR")
    r = CliRunner().invoke(main, search)
    assert r.stdout.startswith(f"latency       p90 <= {limit:.2f} ms (80% of the full fp32 "
                               f"model) at batch 2 x 16 in int8, predicted by {profile.path} "
                               "times its x1.05 margin"), r.output
    r = CliRunner().invoke(main, search[:5] + ["--precision", "int8"])
    assert r.exit_code == 2 and "--precision go with a profile" in r.stderr
    # shapes --supernet --profile prices its cigar shapes as export writes them too
    r = CliRunner().invoke(main, ["shapes", "--supernet", str(tmp_path / "super"), "--profile",
                                  str(profile.path), "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["shapes"]
    for row in rows:
        shape = Shape(tuple(row["shape"]), PLAN_SPACE)
        assert row["predicted_ms"]["fp32"] == pytest.approx(float(profile.predict(
            [shape], "fp32", *profile.reference_workload, 90.0, [dropped(shape)])[0]))
        assert row["dropped_projections"] == len(dropped(shape))
    assert rows[-1]["shape"] == list(full.widths) and rows[-1]["dropped_projections"]
    r = CliRunner().invoke(main, ["shapes", "--supernet", str(tmp_path / "super"), "--profile",
                                  str(profile.path)])
    assert "its exact identity projections dropped" in r.stdout.splitlines()[1], r.output
    # and predict --supernet predicts the graph export writes from it
    predict = ["predict", "--profile", str(profile.path), "--shape",
               ",".join(map(str, full.widths)), "--precision", "fp32", "--batch", "2",
               "--seq-len", "16", "--json"]
    r = CliRunner().invoke(main, predict + ["--supernet", str(tmp_path / "super")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["predictions"][0]["predicted_ms"] == pytest.approx(
        float(profile.predict([full], "fp32", 2, 16, 90.0, [dropped(full)])[0]))
    assert d["dropped_projections"] == len(dropped(full))
    r = CliRunner().invoke(main, predict)  # without: every projection computed
    assert json.loads(r.stdout)["predictions"][0]["predicted_ms"] == pytest.approx(
        float(profile.predict([full], "fp32", 2, 16, 90.0)[0]))
    from dataclasses import replace

    save_supernet(SuperBert(SuperConfig(replace(PLAN_SPACE, widths=PLAN_SPACE.widths[:2]))),
                  tmp_path / "other")
    r = CliRunner().invoke(main, predict + ["--supernet", str(tmp_path / "other")])
    assert r.exit_code == 1 and r.stderr.splitlines() == [
        f"Error: --profile {profile.path} covers another design space "
        f"({PLAN_SPACE.describe()}) than --supernet {tmp_path / 'other'} "
        f"({replace(PLAN_SPACE, widths=PLAN_SPACE.widths[:2]).describe()}); give a profile of "
        "the super network's space"], r.output


def test_the_budgets_length_comes_from_the_users_texts(profile, supernet, tmp_path):
    """Texts given (--calibration or --eval) and no --seq-len: the budget is for the longest
    of them in tokens as served, so every request of texts like these runs at or under the
    length promised. A --seq-len shorter than some of them is kept, and the plan says how
    many run longer than the promise."""
    from .conftest import tiny_tokenizer_json

    supernet.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    texts = ["the model is fast"] * 5 + [" ".join(["the small bert model on device"] * 2)]
    # [CLS] + 4 words + [SEP]; the long one 2 x 6 words + 2 (the tokenizer's whole words)
    budget = _budget_for(profile, "fp32", 2, workload=(1, 14))
    notes = []
    m = export_for_budget(supernet, budget, profile, tmp_path / "b", precision="fp32",
                          calibration=texts, measure=Scripted(profile, {"fp32": 1.0}),
                          progress=notes.append, measure_seconds=1)  # bench's protocol: 1 s
    plan = m.plan
    assert (plan["batch"], plan["seq_len"]) == (1, 14), notes
    assert plan["workload_source"] == "the longest of the 6 texts of --calibration"
    assert plan["inputs"]["longest"] == 14 and plan["inputs"]["longer"] == 0
    assert any(n.startswith("no --seq-len given: the budget is for 14 tokens") for n in notes)
    notes.clear()
    m = export_for_budget(supernet, budget, profile, tmp_path / "c", precision="fp32",
                          workload=(None, 8), calibration=texts, measure_seconds=1,
                          measure=Scripted(profile, {"fp32": 1.0}), progress=notes.append)
    assert (m.plan["seq_len"], m.plan["workload_source"], m.plan["inputs"]["longer"]) == (
        8, "given", 1)
    assert ("NOTE: 1 of the 6 texts of --calibration (16.7%) are longer than the 8 tokens the "
            "budget is for (the longest: 14); served, they run slower than the promise, and "
            "they were judged cut at 8 tokens (leave out --seq-len to plan for them all)") in notes
    # bench --texts: the texts as requests, tokenized as served; their percentile is held to
    # the budget of the plan made for them, and not to one planned shorter
    (tmp_path / "texts.txt").write_text("\n".join(texts))
    bench = ["bench", "--texts", str(tmp_path / "texts.txt"), "--duration", "0.3", "--json"]
    r = CliRunner().invoke(main, bench + [str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["texts"]["count"] == 6 and d["texts"]["tokens"]["max"] == 14
    assert d["texts"]["tokens"]["median"] == 6 and d["seq_len"] is None
    assert d["texts"]["within_budget"] == (d["latency_ms"]["p90"] <= d["plan"]["budget_ms"])
    r = CliRunner().invoke(main, bench[:-1] + [str(tmp_path / "c")])
    assert r.exit_code == 0 and ("note        the budget is for 8 tokens; your texts run to 14, "
                                 "so their latency above is not held to it") in r.stdout
    assert "texts       p90" not in r.stdout


def test_families_that_all_reach_one_shape_are_one_line():
    """The screen's table and the planner's progress line: where the budget lets every family
    reach the same shape (a loose int8 budget: the full one), one line says so instead of
    eight identical entries."""
    from shaper_deploy.cli.export import candidates_table

    row = lambda family, shape, score: {"family": family, "shape": shape,  # noqa: E731
                                        "params": 23_600_000, "score": score}
    plan = {"percentile": 90, "fidelity_metric": "accuracy on val.csv", "candidates": [],
            "families": {"screened_on": "the first 512 of val.csv", "by_precision": {
                "fp32": [row("cigar", [300, 240], 0.61), row("rectangle", [264, 264], 0.66)],
                "int8": [row(f, [384, 384], 0.7227) for f in ("cigar", "rectangle", "bottle")]}}}
    lines = candidates_table(plan).splitlines()
    assert lines[-2:] == ["  fp32      rectangle 0.6600 (23.6M), cigar 0.6100 (23.6M)",
                          "  int8      every family: 384,384 0.7227 (23.6M)"]
    from shaper_deploy.templates import families_said  # the planner's progress line too
    assert families_said(plan["families"]["by_precision"]["int8"]) == \
        "every family: 384,384 0.7227 (23.6M)"


def test_a_measurement_and_its_limit_print_apart_where_two_decimals_would_not():
    from shaper_deploy.planner import _versus

    assert _versus(12.0149, ">", 10.93) == "12.01 ms > 10.93 ms"
    assert _versus(10.934, ">", 10.9301) == "10.934 ms > 10.930 ms"  # not "10.93 ms > 10.93 ms"
    assert _versus(10.93012, "<=", 10.93037) == "10.9301 ms <= 10.9304 ms"
