import collections
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from shaper_deploy.errors import DeviceError, ProfileError
from shaper_deploy.export import INPUT_NAMES, export_bundle, op_counts, sample_inputs
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.predictor import (DeviceProfile, LatencyModel, feature_names, features,
                                     fit_point)
from shaper_deploy.profiling.graph import GRAPH_ACTIVATIONS, RandomWeightFile, build_deploy_graph
from shaper_deploy.profiling.profile import (MEASUREMENTS, read_measurements, run_profile,
                                             workload_key)
from shaper_deploy.profiling.protocol import Protocol, grid_cell, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.shape import PAPER_SPACE, DesignSpace, Shape
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import SuperBert, SuperConfig
from shaper_deploy.supernet.config import ACTIVATIONS
from shaper_deploy.templates import FAMILIES, fit_family, sample_shapes, template_shapes

from .conftest import PLAN_SPACE, TINY_SPACE, fast_protocol, randomize

TINY = SuperConfig(TINY_SPACE, pooler=True)


def test_every_config_activation_has_a_profiling_graph():
    assert set(GRAPH_ACTIVATIONS) == set(ACTIVATIONS)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("pooler", [False, True])
def test_built_graph_is_the_exported_graph(tmp_path, pooler, activation):
    config = SuperConfig(TINY_SPACE, pooler=pooler, hidden_act=activation)
    model = randomize(SuperBert(config)).eval()
    shape = Shape((16, 36, 8), TINY_SPACE)
    export_bundle(model, shape, tmp_path / "b")
    fused = fuse_bottlenecks(slice_subnet(model, shape))
    state = {k: v.detach().numpy() for k, v in fused.state_dict().items()}
    graph = build_deploy_graph(model.config, shape, state=state)
    onnx.checker.check_model(graph, full_check=True)
    exported = op_counts(tmp_path / "b" / "model.onnx")
    exported.pop("Constant", None)  # the exporter's [CLS] index; ours is an initializer
    assert dict(collections.Counter(n.op_type for n in graph.graph.node)) == exported
    feeds = sample_inputs(97, batch=4, seq_len=19, padding="mixed")
    got = make_session(graph.SerializeToString()).run(None, feeds)
    with torch.no_grad():
        ref = [t for t in fused(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
               if t is not None]
    for out, r in zip(got, ref, strict=True):
        assert np.abs(out - r.numpy()).max() < 1e-4


def test_random_graphs_give_every_weight_its_own_memory(tmp_path):
    config = SuperConfig(PAPER_SPACE)
    random = RandomWeightFile(tmp_path)
    graph = build_deploy_graph(config, PAPER_SPACE.largest, random=random)
    # The 116M matrix weights live in the shared file; only vectors are inline.
    assert graph.ByteSize() < 1_000_000
    regions = []
    for t in graph.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            regions.append((int(info["offset"]), int(info["offset"]) + int(info["length"])))
    regions.sort()
    assert len(regions) > 50
    # No two weights share bytes (they did, at offset 0, and ran 9% faster than real models).
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(regions, regions[1:]))
    assert random.n_bytes >= regions[-1][1]
    onnx.save(graph, str(tmp_path / "m.onnx"))
    out = make_session(tmp_path / "m.onnx").run(
        None, sample_inputs(PAPER_SPACE.vocab_size, 1, 8, padding="none"))[0]
    assert out.shape == (1, 8, 768) and np.isfinite(out).all()


def test_templates_and_sampling():
    t = template_shapes(PAPER_SPACE)
    assert set(t) == set(FAMILIES)
    lower = t["lower-triangle"]
    assert list(lower.widths) == sorted(lower.widths) and abs(lower.params() - 64.2e6) < 1e6
    assert list(t["upper-triangle"].widths) == sorted(t["upper-triangle"].widths, reverse=True)
    diamond = fit_family(FAMILIES["diamond"], 17_000_000, DesignSpace.for_model(384, 12, 6))
    assert diamond.widths[0] < diamond.widths[2] > diamond.widths[-1]
    shapes = sample_shapes(PAPER_SPACE, 50, seed=3, include=t)
    assert len({s.widths for s in shapes}) == 50
    assert PAPER_SPACE.smallest in shapes and PAPER_SPACE.largest in shapes
    assert all(s in shapes for s in t.values())
    assert sample_shapes(PAPER_SPACE, 50, seed=3, include=t) == shapes  # deterministic
    params = np.array([s.params() for s in shapes])
    lo, hi = PAPER_SPACE.smallest.params(), PAPER_SPACE.largest.params()
    deciles = np.histogram(params, bins=10, range=(lo, hi))[0]
    assert (deciles > 0).all()  # the whole range is covered


def test_protocol_grid_and_refusals():
    p = Protocol()
    assert (1, 512) in p.grid and (4, 256) in p.grid and (4, 512) not in p.grid
    assert all(b * s <= 1024 for b, s in p.grid) and p.reference == (1, 128)
    assert (1, 48) in p.checks and (2, 200) in p.checks
    assert Protocol.from_dict(p.to_dict()) == p
    with pytest.raises(ProfileError, match="precision 'fp16' is not supported; allowed: fp32, int8"):
        Protocol(precisions=("fp16",))
    with pytest.raises(ProfileError, match="rounds must be a positive integer"):
        Protocol(rounds=0)
    with pytest.raises(ProfileError, match="seq-lens must be increasing positive integers"):
        Protocol(seq_lens=(64, 32))
    with pytest.raises(ProfileError, match="reference workload batch 1 x 100 tokens must be a grid point"):
        Protocol(reference_seq_len=100)
    with pytest.raises(ProfileError, match=r"unknown protocol field\(s\) batch, seq_len; allowed:"):
        Protocol.from_dict({**p.to_dict(), "batch": 1, "seq_len": 128})


def test_grid_cell_finds_corners_or_refuses():
    grid = Protocol().grid
    assert grid_cell(grid, 2, 96) == ((1, 64), (1, 128), (4, 64), (4, 128))
    assert grid_cell(grid, 1, 128) == ((1, 128),) * 4
    assert grid_cell(grid, 8, 128) is None  # (16, 128) is past the token cap
    assert grid_cell(grid, 1, 600) is None and grid_cell(grid, 32, 16) is None


def test_interleaved_measurement_counts_runs():
    calls = collections.Counter()
    # turn_ms and long_run_ms out of reach: a preempted run on a loaded machine must not
    # change the counts (the adaptive part is a pure function of one run's time).
    fixed = Protocol(rounds=3, warmup=2, timed=4, pause_ms=0, turn_ms=1e9, long_run_ms=1e9)
    result = measure_interleaved({"a": lambda: calls.update("a"), "b": lambda: calls.update("b")},
                                 fixed)
    assert calls == {"a": 18, "b": 18}  # 3 rounds x (2 warm-up + 4 timed)
    assert len(result["a"]["round_medians"]) == 3
    # A run slower than long_run_ms gets one warm-up; a turn times ceil(turn_ms / run) runs.
    import time as _time

    calls.clear()
    slow = Protocol(rounds=2, warmup=2, timed=20, pause_ms=0, turn_ms=1e-6, long_run_ms=1e-6)
    measure_interleaved({"s": lambda: (calls.update("s"), _time.sleep(0.001))}, slow)
    assert calls == {"s": 2 + 1 + 1 + 1}  # round 1: 2 warm-up + 1 timed; round 2: 1 + 1


def _constant_model(law, grid, space):
    """A model whose only coefficient is the constant, following law(batch, seq_len)."""
    names = feature_names(space)
    coef = {}
    for b, s in grid:
        c = [0.0] * len(names)
        c[names.index("constant")] = law(b, s)
        coef[workload_key((b, s))] = c
    return LatencyModel(space, grid, {"fp32": coef}, {}, {"fp32": 1.0}, names)


def test_prediction_is_bilinear_between_grid_points_and_refused_outside():
    grid = Protocol().grid
    law = lambda b, s: 0.3 + 0.02 * b + 0.01 * s + 0.05 * b * s  # noqa: E731
    model = _constant_model(law, grid, PAPER_SPACE)
    shape = PAPER_SPACE.largest
    for b, s in [(1, 48), (2, 96), (3, 200), (1, 512), (12, 40)]:
        assert model.predict([shape], "fp32", b, s)[0] == pytest.approx(law(b, s), rel=1e-12)
    with pytest.raises(ProfileError, match=r"batch 8 x 200 tokens is outside the profiled range "
                                           r"\(batch 1: seq 16..512; batch 4: seq 16..256"):
        model.predict([shape], "fp32", 8, 200)
    with pytest.raises(ProfileError, match="this profile has no int8 measurements; it has fp32"):
        model.predict([shape], "int8", 1, 128)


def test_additive_model_learns_a_known_latency_law():
    """Synthetic latencies from a known per-layer law: the fit recovers it on unseen shapes."""
    shapes = sample_shapes(PAPER_SPACE, 120, seed=1)
    rng = np.random.default_rng(0)
    cost = {w: 0.5 + w / 100 + (w / 300) ** 2 + (2.0 if w == 120 else 0) for w in PAPER_SPACE.widths}
    y = np.array([sum(cost[d] for d in s.widths) + 3 + 1e-5 * sum(
        a * b for a, b in zip(s.widths[:-1], s.widths[1:])) for s in shapes])
    y *= rng.normal(1, 0.005, len(y))
    x = features(shapes)
    coef = fit_point(x[:40], y[:40])
    assert (coef >= 0).all()
    rel = np.abs(x[40:] @ coef / y[40:] - 1)
    assert rel.mean() < 0.02 and rel.max() < 0.05  # without per-width terms: 3% mean


def test_profile_end_to_end_resume_and_refusals(tmp_path):
    out = tmp_path / "p"
    protocol = fast_protocol(precisions=("fp32",))
    seen = []

    def stop_after_first_group(message):
        seen.append(message)
        if message.startswith("[") and "group 0" in message and "2 x 16" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_profile(out, "cpu", protocol, TINY, samples=12, progress=stop_after_first_group)
    first = read_measurements(out)
    assert {(r["batch"], r["seq_len"]) for r in first} >= set(protocol.grid)
    with open(out / MEASUREMENTS, "a") as f:
        f.write('{"shape": [8, 8')  # a crash in the middle of a line
    header = run_profile(out, "cpu", protocol, TINY, samples=12, progress=seen.append)
    assert any(m.startswith("resuming") for m in seen)
    records = read_measurements(out)
    main = collections.Counter((r["shape_key"], r["batch"], r["seq_len"])
                               for r in records if r["phase"] == "main" and not r["retry"])
    assert set(main.values()) == {1}  # nothing measured twice
    assert len({k[0] for k in main}) == 12  # nothing lost
    grid_points = [k for k in main if (k[1], k[2]) in protocol.grid]
    assert len(grid_points) == 12 * len(protocol.grid)
    checks = {k[0] for k in main if (k[1], k[2]) not in protocol.grid}
    assert len(checks) == 3  # the held-out quarter, at the check sizes
    assert sum(r["phase"] == "repeat" and not r["retry"] for r in records) == 2 * len(protocol.grid)
    for r in records:  # a measurement repeated at once is one whose rounds disagreed
        if r["retry"]:
            assert any(f["shape_key"] == r["shape_key"] and f["cv"] > protocol.noisy_cv
                       and (f["batch"], f["seq_len"]) == (r["batch"], r["seq_len"])
                       for f in records if not f["retry"])
    assert header.status == "measured"
    assert header.summary["precisions"]["fp32"]["noise_floor"]["pairs"] == 2 * len(protocol.grid)
    assert (out / MEASUREMENTS).read_text().endswith("\n")

    other = fast_protocol(precisions=("fp32",), seq_lens=(8, 16, 32), max_tokens=64)
    with pytest.raises(ProfileError, match=r"protocol max_tokens: 32 vs 64; protocol seq_lens: "
                                           r"\[8, 16\] vs \[8, 16, 32\]"):
        run_profile(out, "cpu", other, TINY, samples=12)
    profile_json = json.loads((out / "profile.json").read_text())
    profile_json["fingerprint"]["cpu_model"] = "Some Other CPU"
    (out / "profile.json").write_text(json.dumps(profile_json))
    with pytest.raises(ProfileError, match=r"another device.*cpu_model: 'Some Other CPU'"):
        run_profile(out, "cpu", protocol, TINY, samples=12)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ProfileError, match="exists and is not a profile"):
        run_profile(tmp_path / "junk", "cpu", protocol, TINY, samples=12)
    with pytest.raises(ProfileError, match="--samples must be at least 12"):
        run_profile(tmp_path / "few", "cpu", protocol, TINY, samples=7)
    assert not (tmp_path / "few").exists()


def test_cuda_requests_never_fall_back_to_cpu(tmp_path):
    with pytest.raises(ProfileError, match="int8 cannot be profiled on cuda"):
        run_profile(tmp_path / "gpu", "cuda", fast_protocol(), TINY, samples=12)
    with pytest.raises(DeviceError, match="cuda"):
        run_profile(tmp_path / "gpu", "cuda", fast_protocol(precisions=("fp32",)), TINY,
                    samples=12)
    assert not (tmp_path / "gpu").exists()


def test_fitted_profile_is_one_checked_object(tiny_profile, tmp_path):
    p = DeviceProfile.load(tiny_profile)
    assert p.precisions == ["fp32", "int8"] and p.reference_workload == (1, 16)
    assert p.header.graph["task"] == "feature-extraction" and p.header.graph["optimized"]
    for precision in p.precisions:
        m = p.model.metrics[precision]
        assert {"grid_held_out", "check_held_out", "held_out"} <= set(m)
        assert m["check_held_out"]["n"] == 3 * 2  # 3 held-out shapes x 2 check sizes
        assert p.margin(precision) == pytest.approx(1 + m["held_out"]["abs_rel_p95"])
    small, large = p.predict([PLAN_SPACE.smallest, PLAN_SPACE.largest], "fp32", 2, 12)
    assert np.isfinite([small, large]).all()
    with pytest.raises(ProfileError, match="another design space"):
        p.predict([PAPER_SPACE.largest], "fp32", 1, 16)
    assert {f.name for f in tiny_profile.iterdir()} >= {
        "profile.json", "measurements.jsonl", "predictor.json", "actual_vs_predicted.png",
        "latency_vs_params.png"}

    altered = tmp_path / "altered"
    shutil.copytree(tiny_profile, altered)
    meta = json.loads((altered / "predictor.json").read_text())
    meta["margin"]["fp32"] = 1.0
    (altered / "predictor.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match="does not match the checksum recorded in profile.json"):
        DeviceProfile.load(altered)
    (altered / "predictor.json").write_bytes(b"")
    with pytest.raises(ProfileError, match="does not match the checksum"):
        DeviceProfile.load(altered)

    old = tmp_path / "old"
    shutil.copytree(tiny_profile, old)
    header = json.loads((old / "profile.json").read_text())
    header["format_version"] = 1
    (old / "profile.json").write_text(json.dumps(header))
    with pytest.raises(ProfileError, match=r"format version 1 \(one fp32 setting at batch 1 x "
                                           r"128 tokens\).*remake it with: shaperctl profile"):
        DeviceProfile.load(old)


def test_trust_flags_a_noisy_profile(tiny_profile, tmp_path):
    noisy = tmp_path / "noisy"
    shutil.copytree(tiny_profile, noisy)
    header = json.loads((noisy / "profile.json").read_text())
    header["summary"]["precisions"]["int8"]["noise_floor"]["median_abs_rel_diff"] = 0.2
    (noisy / "profile.json").write_text(json.dumps(header))
    trust = DeviceProfile.load(noisy).trust
    assert not trust["reliable"]
    assert "int8 noise floor 20.0% > 3%" in trust["reasons"]


def test_cli_profile_predict_and_listing(tmp_path, tiny_supernet, tiny_profile):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    tiny_supernet.save(tmp_path / "super")
    runner = CliRunner()
    out = tmp_path / "profiles" / "tiny"
    result = runner.invoke(main, ["profile", "--device", "cpu", "--supernet",
                                  str(tmp_path / "super"), "--precision", "fp32",
                                  "--batch", "1,2", "--seq-len", "8,16", "--samples", "12",
                                  "--rounds", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["protocol"]["precisions"] == ["fp32"] and "held_out" in data["predictor"]["fp32"]
    assert "min left" in result.stderr and "trust" in data
    pred = json.loads(runner.invoke(main, ["predict", "--profile", str(tiny_profile), "--shape",
                                           "40x3", "--batch", "2", "--seq-len", "12",
                                           "--json"]).stdout)
    assert [r["precision"] for r in pred["predictions"]] == ["fp32", "int8"]
    assert pred["batch"] == 2 and pred["seq_len"] == 12
    for r in pred["predictions"]:
        assert r["upper_ms"] == pytest.approx(r["predicted_ms"] * r["margin"])
    far = runner.invoke(main, ["predict", "--profile", str(tiny_profile), "--shape", "40x3",
                               "--seq-len", "64"])
    assert far.exit_code == 1 and "outside the profiled range" in far.stderr
    assert len(far.stderr.strip().splitlines()) == 1
    shutil.copytree(tiny_profile, tmp_path / "profiles" / "copy")
    (tmp_path / "profiles" / "broken").mkdir()
    (tmp_path / "profiles" / "broken" / "profile.json").write_text("{not json")
    listed = json.loads(runner.invoke(main, ["profiles", "list", str(tmp_path / "profiles"),
                                             "--json"]).stdout)
    paths = {p["path"]: p for p in listed["profiles"]}
    assert set(paths) == {str(out), str(tmp_path / "profiles" / "copy"),
                          str(tmp_path / "profiles" / "broken")}
    assert "not readable JSON" in paths[str(tmp_path / "profiles" / "broken")]["error"]
    assert paths[str(out)]["matches_this_machine"] is True
    shown = runner.invoke(main, ["profiles", "show", str(tiny_profile)])
    assert "held-out R^2" in shown.stdout and "trust" in shown.stdout
    bad = runner.invoke(main, ["profile", "--device", "tpu", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'tpu' is not one of 'cpu', 'cuda'" in bad.stderr
    gpu = runner.invoke(main, ["profile", "--device", "cuda", "--out", str(tmp_path / "g")])
    assert gpu.exit_code == 1 and len(gpu.stderr.strip().splitlines()) == 1
    missing = runner.invoke(main, ["predict", "--profile", str(tmp_path), "--shape", "8x3"])
    assert missing.exit_code == 1 and "is not a profile" in missing.stderr


def test_measurement_reports_latency_and_drift_by_hand(tiny_profile, tmp_path, monkeypatch):
    """The model's latency as measured; drift = reference now / in the profile = 5 / 4."""
    import shaper_deploy.profiling.profile as prof

    header = DeviceProfile.load(tiny_profile).header
    export_bundle(randomize(SuperBert(header.config)).eval(), PLAN_SPACE.smallest,
                  tmp_path / "b")

    def scripted(runners, protocol, seed=0):
        assert set(runners) == {"model", "reference"}
        for run in runners.values():
            run()  # both sessions really run
        return {"model": {"median_ms": 10.0, "cv": 0.01}, "reference": {"median_ms": 5.0}}

    monkeypatch.setattr(prof, "measure_interleaved", scripted)
    m = prof.measure_model(tmp_path / "b" / "model.onnx", header, 4.0, "fp32", (2, 12), "cpu")
    assert m["measured_ms"] == 10.0 and m["drift"] == pytest.approx(1.25)
    assert (m["reference_ms_now"], m["reference_ms_profile"]) == (5.0, 4.0)
    assert (m["batch"], m["seq_len"], m["precision"]) == (2, 12, "fp32")
