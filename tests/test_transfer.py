"""Profile transfer (``shaperctl profile --from``): exact recovery on synthetic devices made
by a known transform of a source, the refusals, the trust report, and the command."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import ProfileError
from shaper_deploy.profiling.predictor import DeviceProfile, feature_names, features, fit_profile
from shaper_deploy.profiling.folder import read_header, shape_key, workload_key
from shaper_deploy.profiling.profile import DIRECT_MINUTES, held_out_keys, run_profile
from shaper_deploy.shape import DesignSpace
from shaper_deploy.supernet import SuperConfig
from shaper_deploy.templates import sample_shapes
from shaper_deploy.profiling.transfer import (fit_transfer, load_sources, prior_fit,
                                             target_protocol, transfer_advice)

from .conftest import PLAN_SPACE, cgroup_tree, fast_protocol


def law(scale: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    """Known coefficients per precision and grid point: a latency that grows with the shape
    and the tokens (``scale`` weighs the terms: another device's structure)."""
    names = feature_names(PLAN_SPACE)
    out = {}
    for precision, factor in (("fp32", 1.0), ("int8", 0.6)):
        out[precision] = {}
        for b, s in ((1, 8), (1, 16), (2, 8), (2, 16)):
            coef = [0.0] * len(names)
            for name, weight in scale.items():
                coef[names.index(name)] = weight * factor * b * s / 16
            coef[names.index("constant")] = 0.05
            out[precision][workload_key((b, s))] = coef
    return out


def source_record(coef, name="src") -> dict:
    return {"profile": name, "fingerprint": {}, "created": "", "predictor_sha256": "0" * 64,
            "held_out_mape": {"fp32": 0.02, "int8": 0.02}, "coef": coef}


def synthetic_records(header, truth, n=12, seed=5):
    """Measurement lines of ``n`` shapes whose floor is exactly ``truth(shape,
    precision, workload)`` (the reference constant: no drift), held-out shapes also at the
    check sizes."""
    shapes = sample_shapes(PLAN_SPACE, n, seed)
    held = held_out_keys(shapes)
    records = []
    for precision in header.protocol.precisions:
        for shape in shapes:
            k = shape_key(shape.widths)
            for w in header.protocol.grid + (header.protocol.checks if k in held else []):
                ms = truth(shape, precision, w)
                records.append({
                    "shape": list(shape.widths), "shape_key": k, "precision": precision,
                    "batch": w[0], "seq_len": w[1], "phase": "main", "retry": False,
                    "group": 0, "params": shape.params(), "reference_ms": 1.0,
                    "median_ms": ms, "p90_ms": ms, "cv": 0.0, "round_medians": [ms, ms],
                    "dropped": []})
    return shapes, records


def bilinear(coef, precision, w):
    """The law at any size inside the grid (what the profile interpolates)."""
    (b, s) = w
    keys = {(1, 8), (1, 16), (2, 8), (2, 16)}
    if w in keys:
        return np.asarray(coef[precision][workload_key(w)])
    tb, ts = (b - 1), (s - 8) / 8
    get = lambda bb, ss: np.asarray(coef[precision][workload_key((bb, ss))])  # noqa: E731
    return ((1 - tb) * (1 - ts) * get(1, 8) + (1 - tb) * ts * get(1, 16)
            + tb * (1 - ts) * get(2, 8) + tb * ts * get(2, 16))


@pytest.fixture(scope="module")
def header(tiny_profile):
    return read_header(tiny_profile)


# Per-width costs (layers_W) make the laws something a direct fit of a few shapes cannot
# recover (it pulls per-width corrections towards zero); the scaled prior can.
A = law({"layer_width_sq": 1.0, "layers": 0.2, "bottlenecks": 0.3, "layers_40": 0.5,
         "layers_100": 0.3})
B = law({"layer_width": 0.8, "layers": 0.1, "bottlenecks": 0.4, "layers_60": 0.6,
         "layers_88": 0.2})


def test_a_scaled_source_is_recovered_exactly(header):
    """Target = 1.7 x source + 0.3 ms at every size: the transfer predicts it exactly on
    shapes it never measured, and says the prior was used."""
    h = replace(header, transfer={"method": "", "ridges": [0, 1, 3, 10], "differences": [[]],
                                  "sources": [source_record(A)], "direct_default_minutes": 3.0})

    def truth(shape, precision, w):
        return float(1.7 * features([shape])[0] @ bilinear(A, precision, w) + 0.3)

    _, records = synthetic_records(h, truth)
    model = fit_transfer(h, records)
    others = sample_shapes(PLAN_SPACE, 30, seed=99)
    for precision in ("fp32", "int8"):
        for w in ((1, 8), (2, 16), (1, 12)):
            got = model.predict(others, precision, *w)
            want = np.array([truth(s, precision, w) for s in others])
            assert np.max(np.abs(got / want - 1)) < 1e-6
        info = model.metrics[precision]["transfer"]
        assert info["fit"] == "prior"
        assert info["prior_held_out"]["mape"] < 1e-6
        assert model.metrics[precision]["held_out"]["mape"] < 1e-6
        mix = info["by_workload"]["1x8"]["mix"]
        assert mix[0] == pytest.approx(1.7, rel=1e-4) and mix[1] == pytest.approx(0.3, abs=1e-4)


def test_two_sources_are_mixed_when_the_device_lies_between_them(header):
    h = replace(header, transfer={"method": "", "ridges": [0, 1, 3, 10],
                                  "differences": [[], []], "direct_default_minutes": None,
                                  "sources": [source_record(A, "a"), source_record(B, "b")]})

    def truth(shape, precision, w):
        x = features([shape])[0]
        return float(0.6 * x @ bilinear(A, precision, w) + 0.9 * x @ bilinear(B, precision, w))

    _, records = synthetic_records(h, truth)
    model = fit_transfer(h, records)
    others = sample_shapes(PLAN_SPACE, 30, seed=77)
    got = model.predict(others, "fp32", 2, 16)
    want = np.array([truth(s, "fp32", (2, 16)) for s in others])
    assert np.max(np.abs(got / want - 1)) < 1e-6
    assert model.metrics["fp32"]["transfer"]["by_workload"]["2x16"]["sources"] == [0, 1]
    # one source alone cannot explain it: its scaled prediction misses
    one = replace(h, transfer={**h.transfer, "sources": [source_record(A)],
                               "differences": [[]]})
    alone = fit_transfer(one, records)
    assert alone.metrics["fp32"]["transfer"]["prior_held_out"]["mape"] > 0.01


def test_a_source_whose_structure_does_not_hold_falls_back_to_the_direct_fit(header):
    """This device's latency follows another law than the source's (a smooth one, which the
    direct fit recovers): the leave-one-shape-out choice does not use the prior, and the
    scaled source's held-out error says it did not transfer."""
    h = replace(header, transfer={"method": "", "ridges": [0, 1, 3, 10], "differences": [[]],
                                  "sources": [source_record(B)], "direct_default_minutes": 3.0})
    smooth = law({"layer_width_sq": 1.0, "layers": 0.2, "bottlenecks": 0.3})

    def truth(shape, precision, w):
        return float(features([shape])[0] @ bilinear(smooth, precision, w))

    _, records = synthetic_records(h, truth, n=16)
    model = fit_transfer(h, records)
    for precision in ("fp32", "int8"):
        info = model.metrics[precision]["transfer"]
        assert info["loo_mape"]["direct"] <= min(info["loo_mape"].values())
        assert info["fit"] == "direct"
        assert info["prior_held_out"]["mape"] > 0.05


def test_ridge_towards_the_prior_keeps_an_unmeasured_width_at_its_prior():
    """A width no fitted shape uses still costs what the (scaled) prior says."""
    space = PLAN_SPACE
    coef = np.asarray(A["fp32"]["1x16"])
    names = feature_names(space)
    coef = coef.copy()
    coef[names.index(f"layers_{space.widths[-1]}")] = 0.7  # a per-width cost
    shapes = [s for s in sample_shapes(space, 40, 3) if space.widths[-1] not in s.widths][:8]
    x = features(shapes)
    y = 2.0 * x @ coef
    from shaper_deploy.profiling.transfer import penalty_scale

    fitted, mix = prior_fit(x, y, [coef], penalty_scale(x, space), 3.0)
    assert mix[0] == pytest.approx(2.0, rel=1e-6)
    assert fitted[names.index(f"layers_{space.widths[-1]}")] == pytest.approx(1.4, rel=1e-3)


def test_an_unreliable_transfer_says_what_a_direct_profile_would_take(header):
    h = replace(header, transfer={"method": "", "ridges": [0, 1, 3, 10], "differences": [[]],
                                  "sources": [source_record(A)], "direct_default_minutes": 7.5})
    rng = np.random.default_rng(0)

    def truth(shape, precision, w):  # +-30% noise: nothing can be predicted within 5%
        return float(features([shape])[0] @ bilinear(A, precision, w)) * rng.uniform(0.7, 1.3)

    def slow_floors(slow: int):  # the share of floors timed slow, 0-10 of 10
        record = {"points": 10, "slow": slow, "median_slowdown": 1.5 if slow else None}
        return replace(h, summary={"precisions": {
            p: {**(h.summary or {}).get("precisions", {}).get(p, {}), "slow_floors": record}
            for p in h.protocol.precisions}})

    h = slow_floors(0)
    _, records = synthetic_records(h, truth)
    model = fit_transfer(h, records)
    advice = transfer_advice(h, model, "P")
    # the tiny grid stops at 32 tokens: the direct profile priced is of those sizes
    assert advice is not None and ("or profile this device directly (profile without --from, "
                                   "--max-tokens 32: up to about 8 min here)") in advice
    assert "held-out MAPE" in advice and "the scaled source alone" in advice
    assert "calmer period" not in advice
    legacy = {**h.transfer, "direct_minutes": 79.0}  # made before session 46: 40 shapes' price
    del legacy["direct_default_minutes"]
    assert "(about 79 min for 40 shapes, --max-tokens 32)" in transfer_advice(
        replace(h, transfer=legacy), model, "P")

    def kernels(here, *sources):  # this CPU's ISA flags, and the sources'
        return transfer_advice(replace(h, fingerprint={**h.fingerprint, "isa": here}, transfer={
            **h.transfer, "sources": [{**source_record(A), "fingerprint": {"isa": isa}}
                                      for isa in sources]}), model, "P")

    avx2, vnni, amx = ["avx2", "fma"], ["avx2", "avx512_vnni"], ["avx512_vnni", "amx_int8"]
    # int8 failed, and no source runs this CPU's int8 kernels: add one that does
    assert ("int8's sources ran AMX int8 kernels, this CPU runs x86 without VNNI: add to --from "
            "a profile of a CPU that runs x86 without VNNI") in kernels(avx2, amx)
    assert "sources ran AMX and VNNI int8 kernels, this CPU runs x86" in kernels(avx2, amx, vnni)
    assert "int8 kernels" not in kernels(avx2, amx, avx2) + kernels(vnni, vnni)
    advice = transfer_advice(slow_floors(9), model, "P")  # one slow period under nearly all of it
    assert "floors timed while the machine ran slow (median x1.50) > 70%" in advice
    assert ("): retake its 18 floor(s) timed while the machine ran slow, each once it runs "
            "calm: shaperctl profiles retake P, measure longer with --minutes") in advice


def test_a_transfer_tail_is_raised_to_this_machine_sources_only():
    """A transfer's own tail rests on its minutes of the machine's time; a source measured on
    this very machine (its tail frozen in the record) raises it where larger, bin by bin; a
    source from another machine (no frozen tail) does not. The raised tail prices the
    slowdowns the source's groups saw (its frozen ``speed_p90``), the largest of them."""
    from shaper_deploy.profiling.transfer import same_machine_tails

    levels = [50, 75, 90, 95, 99]
    own = {"levels": levels, "median_ms": [1.0, 10.0], "records": 40,
           "factor": [[1.0, 1.05, 1.1, 1.2, 1.3], [1.0, 1.02, 1.04, 1.05, 1.1]]}
    here = {"levels": levels, "median_ms": [1.0, 10.0], "records": 400,
            "factor": [[1.0, 1.02, 1.05, 1.1, 1.4], [1.1, 1.3, 1.5, 1.6, 2.0]]}
    record = {"sources": [{"profile": "elsewhere"}, {"profile": "here", "tail": {"int8": here},
                                                     "speed_p90": 1.6}]}
    raised = same_machine_tails({"fp32": own, "int8": own}, record)
    assert raised["fp32"] == own  # no frozen fp32 tail: as it was
    assert raised["int8"]["same_machine"] == ["here"]
    assert np.allclose(raised["int8"]["factor"], np.maximum(own["factor"], here["factor"]))
    assert raised["int8"]["priced_slowdown"] == 1.6
    record["sources"].append({"profile": "here too", "tail": {"int8": here}, "speed_p90": 1.3})
    both = same_machine_tails({"int8": own}, record)["int8"]
    assert both["same_machine"] == ["here", "here too"] and both["priced_slowdown"] == 1.6
    # a source frozen before speeds were: its tail raises, no slowdown is claimed for it
    assert "priced_slowdown" not in same_machine_tails(
        {"int8": own}, {"sources": [{"profile": "old", "tail": {"int8": here}}]})["int8"]
    assert same_machine_tails({"int8": own}, {"sources": [{"profile": "elsewhere"}]}) == {
        "int8": own}
    # a source made before tails reached p99 (the shipped Intel profiles: p50..p90) raises
    # p95 and p99 to at least its p90, and p50..p90 as before (the demo's transfer on that
    # class failed here: "percentile 95 is outside what this profile measured")
    older = {"levels": [50, 75, 90], "median_ms": [1.0, 10.0], "records": 400,
             "factor": [[1.0, 1.02, 1.05], [1.1, 1.3, 1.5]]}
    raised = same_machine_tails({"int8": own}, {"sources": [{"profile": "older", "tail": {
        "int8": older}}]})["int8"]
    assert raised["levels"] == levels and np.allclose(raised["factor"], [
        [1.0, 1.05, 1.1, 1.2, 1.3], [1.1, 1.3, 1.5, 1.5, 1.5]])


def test_a_source_measured_without_parked_threads_lends_no_tail(tiny_profile):
    """A profile of this machine made before profiles waited for ONNX Runtime's threads to
    stop spinning (park_ms 0) is a prior, but its tail is not frozen: the spin inflated
    short runs' tails (x2.5 at p90 where this machine's parked profile measured x1.26)."""
    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.profiling.transfer import transfer_record

    source = DeviceProfile.load(tiny_profile)
    assert source.header.protocol.park_ms == 0  # fast_protocol's
    said = []
    record = transfer_record([source], source.header.protocol, device_fingerprint("cpu"),
                             said.append)
    assert record["differences"] == [[]]  # this very machine
    assert "tail" not in record["sources"][0] and "speed_p90" not in record["sources"][0]
    assert record["sources"][0]["coef"].keys() == set(source.precisions)  # still a prior
    assert len(said) == 1 and "its latency tail is not used" in said[0]
    r = CliRunner().invoke(main, ["profiles", "show", str(tiny_profile)])  # and it says so
    protocol = next(line for line in r.stdout.splitlines() if line.startswith("protocol"))
    assert "did not wait for ONNX Runtime's threads to stop spinning" in protocol, r.output
    # a header written before park_ms existed reads as measured without it (it read 500)
    from shaper_deploy.profiling.folder import ProfileHeader

    data = json.loads((tiny_profile / "profile.json").read_text())
    del data["protocol"]["park_ms"]
    assert ProfileHeader.from_dict(data, tiny_profile).protocol.park_ms == 0


def test_a_source_whose_fingerprint_predates_cpu_id_lends_no_tail(tiny_profile):
    """A parked profile whose fingerprint has no cpu_id matches this machine on the fields it
    has, as any CPU of its model name and ISA would (the AMD Zen 2 profile matched the Zen 4
    cores masked to AVX2): a prior, but its tail is not frozen as this machine's, and the note
    says why instead of calling it this machine's."""
    from dataclasses import replace

    from shaper_deploy.profiling.fingerprint import device_fingerprint
    from shaper_deploy.profiling.transfer import transfer_record

    here = device_fingerprint("cpu")
    assert "cpu_id" in here
    source = DeviceProfile.load(tiny_profile)
    source.header.protocol = replace(source.header.protocol, park_ms=50.0)
    said = []
    record = transfer_record([source], source.header.protocol, here, said.append)
    assert "tail" in record["sources"][0] and said == []  # this very machine, parked: priced
    source.header.fingerprint = {k: v for k, v in here.items() if k != "cpu_id"}
    said = []
    record = transfer_record([source], source.header.protocol, here, said.append)
    assert record["differences"] == [[]]  # it matches on every field it has
    assert "tail" not in record["sources"][0] and "speed_p90" not in record["sources"][0]
    assert record["sources"][0]["coef"].keys() == set(source.precisions)  # still a prior
    assert len(said) == 1 and "predates cpu_id" in said[0], said
    assert "measured on this machine" not in said[0] and "spinning" not in said[0]


def test_transfer_across_kinds_and_spaces_is_refused(tiny_profile, tmp_path):
    cuda = tmp_path / "cuda"
    shutil.copytree(tiny_profile, cuda)
    header = json.loads((cuda / "profile.json").read_text())
    header["fingerprint"]["device"] = "cuda"
    (cuda / "profile.json").write_text(json.dumps(header))
    with pytest.raises(ProfileError, match="across device kinds has not been shown"):
        load_sources([str(cuda)], "cpu", None)
    other = DesignSpace.for_model(96, 4, 3, vocab_size=97, max_positions=64,
                                  intermediate_size=384)
    with pytest.raises(ProfileError, match="across design\\s+spaces has not been shown"):
        load_sources([str(tiny_profile)], "cpu", other)
    with pytest.raises(ProfileError, match="same profile twice"):
        load_sources([str(tiny_profile), str(tiny_profile)], "cpu", None)
    # sources whose grids share no size around the first one's reference (1 x 16) are refused
    two = tmp_path / "batch-2"
    run_profile(two, "cpu", fast_protocol(batches=(2,), reference_batch=2,
                                          check_workloads=((2, 12),)),
                SuperConfig(PLAN_SPACE, pooler=True), samples=12)
    fit_profile(two)
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(tiny_profile),
                                  "--from", str(two), "--out", str(tmp_path / "w")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert (f"{two} does not cover batch 1 x 16 tokens of {tiny_profile}'s grid, and the grid "
            "the --from profiles share lacks the reference size") in r.stderr
    assert not (tmp_path / "w").exists()
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(cuda), "--out",
                                  str(tmp_path / "x")])
    assert r.exit_code == 1 and "across device kinds" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(tiny_profile),
                                  "--seq-len", "8", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "--seq-len cannot be given with --from" in r.stderr
    # --max-tokens narrows the source's grid (32 tokens, reference 1 x 16), never widens it
    for tokens in ("64", "8"):
        r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(tiny_profile),
                                      "--max-tokens", tokens, "--out", str(tmp_path / "z")])
        assert r.exit_code == 1 and f"--max-tokens {tokens} is outside" in r.stderr
        assert "allowed 16..32" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "z").exists()


def test_transfer_command_end_to_end_and_resume(tiny_profile, tmp_path):
    out = tmp_path / "t"
    # the source as if measured with the threads parked (the tiny profile skips the wait to
    # stay fast); its tail is frozen below, which one measured without parking's is not
    parked = tmp_path / "parked"
    shutil.copytree(tiny_profile, parked)
    header = json.loads((parked / "profile.json").read_text())
    header["protocol"]["park_ms"] = 500.0
    (parked / "profile.json").write_text(json.dumps(header, indent=2) + "\n")
    tiny_profile = parked
    # only the sizes served: the source's grid (1x8, 1x16, 2x8, 2x16) up to 16 tokens
    args = ["profile", "--device", "cpu", "--from", str(tiny_profile), "--samples", "8",
            "--max-tokens", "16", "--out", str(out), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output + r.stderr
    data = json.loads(r.stdout)
    assert data["protocol"]["max_tokens"] == 16
    assert set(data["transfer"]["sources"][0]["coef"]["fp32"]) == {"1x8", "1x16", "2x8"}
    measured = {(m["batch"], m["seq_len"]) for m in map(json.loads, (out / "measurements.jsonl")
                                                         .read_text().splitlines())}
    assert measured and all(b * s <= 16 for b, s in measured)
    # each shape looked at in 2 sweeps, one after the other, then 1 calm look at what the
    # reference says ran slow (sweep index 2), counted in the summary
    assert data["protocol"]["sweeps"] == 2 and data["protocol"]["calm_looks"] == 1
    sweeps = [m["sweep"] for m in map(json.loads, (out / "measurements.jsonl").read_text()
                                      .splitlines())]
    assert {0, 1} <= set(sweeps) <= {0, 1, 2}
    assert data["summary"]["calm_looks"] == sweeps.count(2)
    # the source was measured on this machine: its tail is frozen in the record, and the
    # transfer's is raised to it where larger
    source = DeviceProfile.load(tiny_profile)
    assert data["transfer"]["sources"][0]["tail"].keys() == source.model.tail.keys()
    speed = source.machine_speed()["p90"]
    assert data["transfer"]["sources"][0]["speed_p90"] == pytest.approx(speed, abs=1e-6)
    fitted = DeviceProfile.load(out)
    # a fleet is measured on the grid its members share, in either order, and says so when
    # that is less than the first one's
    told: list[str] = []
    for order in ([tiny_profile, out], [out, tiny_profile]):
        shared = target_protocol(load_sources(list(map(str, order)), "cpu", None), 2, None,
                                 note=told.append)
        assert shared.grid == fitted.header.protocol.grid == [(1, 8), (1, 16), (2, 8)]
    assert len(told) == 1 and told[0].startswith(f"the --from profiles share {tiny_profile}'s "
                                                 "grid up to 16 tokens (3 of 4 sizes; ")
    assert f"{out} lacks batch 2 x 16)" in told[0]
    with pytest.raises(ProfileError, match=r"--max-tokens 32 .* allowed 16\.\.16 .* the grid "
                                           "they share"):
        target_protocol(load_sources([str(tiny_profile), str(out)], "cpu", None), 2, None,
                        max_tokens=32)
    for precision in fitted.precisions:  # verify takes out what the source's tail prices
        assert fitted.priced_slowdown(precision) == pytest.approx(
            max(speed, fitted.machine_speed()["p90"]), abs=1e-6)
    for precision, tail in fitted.model.tail.items():
        assert tail["same_machine"] == [str(tiny_profile)]
        ms = np.array(tail["median_ms"])
        assert np.all(fitted.tail_factor(precision, 90, ms)
                      >= source.tail_factor(precision, 90, ms) - 1e-9)
    r = CliRunner().invoke(main, ["predict", "--profile", str(out), "--shape",
                                  "128x3", "--batch", "2", "--seq-len", "16",
                                  "--allow-unreliable"])
    assert r.exit_code == 1 and "outside the profiled range" in r.stderr
    assert data["transfer"]["sources"][0]["profile"] == str(tiny_profile)
    assert data["transfer"]["direct_default_minutes"] >= DIRECT_MINUTES  # the default's
    assert data["sampling"]["samples"] == 8 and data["templates"] == {}
    for precision in data["protocol"]["precisions"]:
        m = data["predictor"][precision]
        assert m["trained_on"] == 6 and m["held_out_shapes"] == 2
        assert m["transfer"]["fit"] in ("direct", "prior")
    assert set(data["trust"]) >= {"reliable", "reasons"}
    p = DeviceProfile.load(out)
    assert p.model.method.startswith("transfer")
    assert "coef" in data["transfer"]["sources"][0]
    lines = (out / "measurements.jsonl").read_text()
    r = CliRunner().invoke(main, args)  # finished: nothing measured again
    assert r.exit_code == 0 and (out / "measurements.jsonl").read_text() == lines
    # a profile resumes with the sweeps it began with (made before a default changed)
    r = CliRunner().invoke(main, args + ["--sweeps", "1"])
    assert r.exit_code == 0 and json.loads(r.stdout)["protocol"]["sweeps"] == 2
    assert (out / "measurements.jsonl").read_text() == lines
    shown = CliRunner().invoke(main, ["profiles", "show", str(out)])
    assert "transferred from" in shown.stdout and str(tiny_profile) in shown.stdout
    assert "raised where larger to the tail of this machine's" in shown.stdout
    # what no measurement within a transfer's minutes can show is said, not hidden
    assert "A transfer's few minutes may all fall in one slow period" in shown.stdout
    # without a source of this machine, the tail says it rests on the transfer's minutes alone
    from shaper_deploy.cli.profile import _profile_text, profile_data

    alone = profile_data(p)
    alone["tail"] = {k: {f: v for f, v in t.items() if f not in ("same_machine",
                                                                 "priced_slowdown")}
                     for k, t in alone["tail"].items()}
    assert "own minutes of the machine's time alone" not in shown.stdout
    assert _profile_text(alone).count("own minutes of the machine's time alone") == len(
        p.precisions)
    # a source of this machine's fields says whether it could compare the CPU id
    assert f"{tiny_profile} (" in shown.stdout and "the same machine fields)" in shown.stdout
    alone["transfer"]["sources"][0]["fingerprint"].pop("cpu_id")
    assert "the same machine fields (it predates cpu_id)" in _profile_text(alone)
    direct = CliRunner().invoke(main, ["profile", "--device", "cpu", "--out", str(out),
                                       "--samples", "12"])
    assert direct.exit_code == 1 and "cannot be mixed with this run" in direct.stderr
    # a predictor of an older format is refused with the command that refits it; for a
    # transfer whose source was refitted since (here: its coefficients x1.1), that command
    # takes the source's current fit and refits, measuring nothing
    import hashlib

    def rewrite(folder, meta=None, **fields):
        header = json.loads((folder / "profile.json").read_text())
        if meta is not None:
            data = (json.dumps(meta, indent=2) + "\n").encode()
            (folder / "predictor.json").write_bytes(data)
            header["files"]["predictor.json"] = hashlib.sha256(data).hexdigest()
        (folder / "profile.json").write_text(json.dumps({**header, **fields}, indent=2) + "\n")

    meta = json.loads((tiny_profile / "predictor.json").read_text())
    meta["coef"] = {p: {k: [1.1 * v for v in c] for k, c in points.items()}
                    for p, points in meta["coef"].items()}
    rewrite(tiny_profile, meta)
    old = json.loads((out / "predictor.json").read_text())
    rewrite(out, {**old, "format_version": 3})
    with pytest.raises(ProfileError, match=rf"older shaper-deploy \(predictor format 3; this "
                                           rf"one reads 4: .* again with --out {out}$"):
        DeviceProfile.load(out)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.stderr
    assert "refitted since this transfer froze them" in r.stderr
    assert (out / "measurements.jsonl").read_text() == lines
    refitted = DeviceProfile.load(out).header.transfer["sources"][0]
    assert refitted["predictor_sha256"] == DeviceProfile.load(tiny_profile).header.files[
        "predictor.json"]
    # frozen as transfer_record writes them: rounded to 10 decimals (a coefficient of ~7e-6
    # lost 4e-6 of itself to it, which the default relative tolerance of 1e-6 counted a miss)
    assert refitted["coef"]["fp32"]["1x8"] == pytest.approx(
        [round(v, 10) for v in meta["coef"]["fp32"]["1x8"]])
    # the same folder made anew (another creation time and fit) is another source: refused
    meta["coef"] = {p: {k: [1.1 * v for v in c] for k, c in points.items()}
                    for p, points in meta["coef"].items()}
    rewrite(tiny_profile, meta, created="2026-12-06T00:00:00+00:00")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1 and "cannot be mixed with this run" in r.stderr


def _another_space_copy(tiny_profile, dest):
    """``tiny_profile`` relabelled as another design space (its vocabulary), consistently:
    a finished profile that ``DeviceProfile.load`` accepts."""
    import hashlib

    shutil.copytree(tiny_profile, dest)
    header = json.loads((dest / "profile.json").read_text())
    header["config"]["space"]["vocab_size"] += 1
    meta = json.loads((dest / "predictor.json").read_text())
    meta["design_space"]["vocab_size"] += 1
    data = (json.dumps(meta, indent=2) + "\n").encode()
    (dest / "predictor.json").write_bytes(data)
    header["files"]["predictor.json"] = hashlib.sha256(data).hexdigest()
    (dest / "profile.json").write_text(json.dumps(header))
    DeviceProfile.load(dest)


def test_a_folder_of_profiles_is_every_one_of_this_kind_and_space(tiny_profile, tmp_path):
    from shaper_deploy.profiling.transfer import expand_sources

    fleet = tmp_path / "fleet"
    fleet.mkdir()
    for name in ("b", "a", "mine"):
        shutil.copytree(tiny_profile, fleet / name)
    cuda = fleet / "gpu"
    shutil.copytree(tiny_profile, cuda)
    header = json.loads((cuda / "profile.json").read_text())
    header["fingerprint"]["device"] = "cuda"
    (cuda / "profile.json").write_text(json.dumps(header))
    (fleet / "broken").mkdir()
    (fleet / "broken" / "profile.json").write_text("{")
    space = DeviceProfile.load(tiny_profile).space
    notes = []
    got = expand_sources([fleet], "cpu", space, out=fleet / "mine", note=notes.append)
    # in name order, the profile being made (--out) never among them, the rest named
    assert got == [str(fleet / "a"), str(fleet / "b")]
    assert len(notes) == 1 and "2 profile(s)" in notes[0]
    assert "gpu (a cuda profile)" in notes[0] and "broken (" in notes[0]
    # a profile folder given as such is kept as given (load_sources checks it)
    assert expand_sources([tiny_profile], "cpu", None) == [str(tiny_profile)]
    assert len(load_sources(got, "cpu", space)) == 2
    # without --supernet, a folder of two design spaces is refused, naming both
    _another_space_copy(tiny_profile, fleet / "other")
    with pytest.raises(ProfileError, match="2 design spaces .*other.*give --supernet"):
        expand_sources([fleet], "cpu", None)
    other = DeviceProfile.load(fleet / "other").space
    assert expand_sources([fleet], "cpu", other) == [str(fleet / "other")]
    # nothing usable: one line, nothing created
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)
    (empty / "x" / "profile.json").write_text("{")
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(empty),
                                  "--out", str(tmp_path / "new")])
    assert r.exit_code == 1 and "holds no finished cpu profile" in r.stderr
    assert "skipped: x (" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()
    # --out inside the folder is allowed (it is not a source); --out as a source is not
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(fleet / "a"),
                                  "--out", str(fleet / "a")])
    assert r.exit_code == 1 and "is the input --from" in r.stderr


@pytest.fixture
def one_usable_core(monkeypatch):
    """This process as if it could run on one core only (a 1-CPU container or VM, or
    ``taskset -c 0``): joblib's cpu_count honours LOKY_MAX_CPU_COUNT as it does affinity and
    cgroup quotas."""
    from shaper_deploy import runtime

    if runtime.usable_cores() == 1:
        pytest.skip("this machine already gives the process one core")
    monkeypatch.setenv("LOKY_MAX_CPU_COUNT", "1")
    runtime.usable_cores.cache_clear()
    yield
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT")
    runtime.usable_cores.cache_clear()


def test_one_usable_core_is_another_device_profiled_with_one_thread(one_usable_core,
                                                                    tiny_profile, tmp_path):
    """Two intra-op threads on one usable core ran twice as slow as one thread: a profile made
    with every core does not describe the same CPU behind a one-core quota (refused, the field
    named), a profile made there defaults to one thread, and --threads is bounded by the
    cores this process may use."""
    from shaper_deploy.errors import DeviceError
    from shaper_deploy.profiling.fingerprint import fingerprint_differences
    from shaper_deploy.runtime import check_threads, default_threads

    assert default_threads() == 1
    with pytest.raises(DeviceError, match=r"--threads 5 is outside 1\.\.4 .*it may use 1\)"):
        check_threads(5)
    before = json.loads((tiny_profile / "profile.json").read_text())["fingerprint"]
    older = {k: v for k, v in before.items() if k != "usable_cores"}  # read as logical_cores
    here = dict(before, usable_cores=1)
    assert fingerprint_differences(older, here) == [
        f"usable_cores: {before['logical_cores']} vs 1"]
    assert fingerprint_differences(older, dict(here, usable_cores=before["logical_cores"])) == []
    r = CliRunner().invoke(main, ["predict", "--profile", str(tiny_profile), "--shape", "60x3",
                                  "--seq-len", "16"])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
    assert f"usable_cores: {before['usable_cores']} vs 1" in r.stderr, r.stderr
    out = tmp_path / "one-core"
    r = CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(tiny_profile),
                                  "--samples", "8", "--max-tokens", "16", "--out", str(out),
                                  "--json"])
    assert r.exit_code == 0, r.output + r.stderr
    data = json.loads(r.stdout)
    assert data["protocol"]["threads"] == 1 and data["fingerprint"]["usable_cores"] == 1
    assert data["transfer"]["differences"] == [[
        f"usable_cores: {before['usable_cores']} vs 1"]]
    shown = CliRunner().invoke(main, ["profiles", "show", str(out)])
    assert f"{data['fingerprint']['logical_cores']} cores (1 usable" in shown.stdout
    assert CliRunner().invoke(main, ["profile", "--device", "cpu", "--from", str(tiny_profile),
                                     "--threads", "5", "--out", str(tmp_path / "x")]
                              ).exit_code == 1


def test_a_cpu_quota_on_the_process_cgroup_counts_as_fewer_cores(tmp_path, monkeypatch):
    """A CPU bandwidth limit (docker --cpus, a systemd unit's CPUQuota, a Kubernetes limit) in
    v1 and v2, the lowest over the cgroup's folder and those above it: 1.5 CPUs is 1 usable
    core (rounded down: a thread beyond the quota is throttled), half a CPU is 1."""
    import joblib

    from shaper_deploy import runtime

    def tree(name, cgroup, files):
        return cgroup_tree(tmp_path / name, cgroup, files)

    unit = "sys/fs/cgroup/cpu/system.slice/shaper.service"
    v1 = tree("v1", "2:cpu,cpuacct:/system.slice/shaper.service\n0::/\n",
              {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
               "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
               f"{unit}/cpu.cfs_quota_us": "150000", f"{unit}/cpu.cfs_period_us": "100000"})
    assert runtime.cgroup_cpu_quota(v1) == pytest.approx(1.5)
    v2 = tree("v2", "0::/ctr\n", {"sys/fs/cgroup/cgroup.controllers": "cpu memory",
                                  "sys/fs/cgroup/cpu.max": "max 100000",
                                  "sys/fs/cgroup/ctr/cpu.max": "50000 100000"})
    assert runtime.cgroup_cpu_quota(v2) == pytest.approx(0.5)
    free = tree("free", "0::/ctr\n", {"sys/fs/cgroup/cgroup.controllers": "cpu",
                                      "sys/fs/cgroup/ctr/cpu.max": "max 100000"})
    assert runtime.cgroup_cpu_quota(free) is None
    assert runtime.cgroup_cpu_quota(tmp_path / "no-proc") is None
    for quota, cores in ((0.5, 1), (1.5, 1), (2.0, 2)):
        monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda q=quota: q)
        runtime.usable_cores.cache_clear()
        assert runtime.usable_cores() == min(cores, joblib.cpu_count())
    runtime.usable_cores.cache_clear()


def test_a_folder_of_more_profiles_than_a_transfer_mixes_keeps_the_closest(tiny_profile,
                                                                            tmp_path):
    """`--from profiles` with a user's own profile beside the 8 shipped MiniLM ones was 9, and
    refused (session 52): a folder is cut to the 8 closest to this machine, named."""
    from shaper_deploy.profiling.transfer import MAX_SOURCES, expand_sources

    fleet = tmp_path / "fleet"
    fleet.mkdir()
    names = [f"p{i}" for i in range(MAX_SOURCES + 1)]
    for name in names:
        shutil.copytree(tiny_profile, fleet / name)
    here = json.loads((tiny_profile / "profile.json").read_text())["fingerprint"]
    for name, changed in (("p3", {"cpu_model": "Another CPU", "isa": ["avx2"]}),
                          ("p5", {"cpu_model": "Another CPU"})):
        header = json.loads((fleet / name / "profile.json").read_text())
        header["fingerprint"].update(changed)
        (fleet / name / "profile.json").write_text(json.dumps(header))
    space = DeviceProfile.load(tiny_profile).space
    notes = []
    got = expand_sources([fleet], "cpu", space, note=notes.append, here=here)
    # the farthest (two fields differ) left out, the rest in name order, the cut named
    assert got == [str(fleet / n) for n in names if n != "p3"]
    assert "left out: p3 (cpu_model, isa differ)" in notes[-1]
    assert len(load_sources(got, "cpu", space)) == MAX_SOURCES
    # named one by one, more than a transfer mixes is refused, saying what a folder does
    with pytest.raises(ProfileError, match=f"at most {MAX_SOURCES} profiles, got 9: name "
                                           "fewer .a folder given to --from keeps the 8"):
        load_sources([str(fleet / n) for n in names], "cpu", space)
