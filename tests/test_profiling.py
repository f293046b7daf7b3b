import collections
import json

import numpy as np
import onnx
import pytest
import torch

from shaper_deploy.errors import DeviceError, ProfileError
from shaper_deploy.export import INPUT_NAMES, export_bundle, op_counts, sample_inputs
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.predictor import LatencyPredictor, fit, fit_profile
from shaper_deploy.profiling.graph import RandomWeightFile, build_deploy_graph
from shaper_deploy.profiling.profile import MEASUREMENTS, read_measurements, run_profile
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.shape import PAPER_SPACE, DesignSpace, Shape
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import SuperBert, SuperConfig
from shaper_deploy.templates import FAMILIES, fit_family, sample_shapes, template_shapes

from .conftest import TINY_SPACE, randomize

FAST = Protocol(rounds=2, warmup=1, timed=2, pause_ms=0, group_size=4, repeat_shapes=2,
                seq_len=16)
TINY = SuperConfig(TINY_SPACE, pooler=True)


@pytest.mark.parametrize("pooler", [False, True])
def test_built_graph_is_the_exported_graph(tmp_path, pooler):
    model = randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=pooler))).eval()
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


def test_random_graphs_keep_their_weights_outside(tmp_path):
    config = SuperConfig(PAPER_SPACE)
    random = RandomWeightFile.for_space(tmp_path, config)
    graph = build_deploy_graph(config, PAPER_SPACE.largest, random=random)
    # The 116M matrix weights (464 MB) live in the shared file; only vectors are inline.
    assert graph.ByteSize() < 1_000_000
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


def test_protocol_rejects_nonsense():
    with pytest.raises(ProfileError, match="precision 'fp16' is not supported; allowed: fp32, int8"):
        Protocol(precision="fp16")
    with pytest.raises(ProfileError, match="rounds must be a positive integer"):
        Protocol(rounds=0)


def test_interleaved_measurement_reports_round_medians():
    calls = collections.Counter()
    result = measure_interleaved({"a": lambda: calls.update("a"), "b": lambda: calls.update("b")},
                                 Protocol(rounds=3, warmup=2, timed=4, pause_ms=0))
    assert calls == {"a": 18, "b": 18}
    assert len(result["a"]["round_medians"]) == 3 and result["a"]["median_ms"] >= 0


def test_profile_end_to_end_resume_and_refusals(tmp_path):
    out = tmp_path / "p"
    seen = []

    def stop_after_first_group(message):
        seen.append(message)
        if message.startswith("["):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_profile(out, "cpu", FAST, TINY, samples=12, progress=stop_after_first_group)
    first = read_measurements(out)
    assert len(first) == FAST.group_size  # one complete group, flushed
    with open(out / MEASUREMENTS, "a") as f:
        f.write('{"shape": [8, 8')  # a crash in the middle of a line
    header = run_profile(out, "cpu", FAST, TINY, samples=12, progress=seen.append)
    assert any(m.startswith("resuming") for m in seen)
    records = read_measurements(out)
    main = [r["shape_key"] for r in records if r["phase"] == "main"]
    assert len(main) == len(set(main)) == 12  # nothing measured twice, nothing lost
    assert {r["shape_key"] for r in first} <= set(main)
    assert sum(r["phase"] == "repeat" for r in records) == FAST.repeat_shapes
    assert header["status"] == "measured" and header["summary"]["noise_floor"]["shapes"] == 2
    assert (out / MEASUREMENTS).read_text().endswith("\n")

    with pytest.raises(ProfileError, match=r"protocol seq_len: 16 vs 32"):
        run_profile(out, "cpu", Protocol(**{**FAST.to_dict(), "seq_len": 32}), TINY, samples=12)
    profile_json = json.loads((out / "profile.json").read_text())
    profile_json["fingerprint"]["cpu_model"] = "Some Other CPU"
    (out / "profile.json").write_text(json.dumps(profile_json))
    with pytest.raises(ProfileError, match=r"another device.*cpu_model: 'Some Other CPU'"):
        run_profile(out, "cpu", FAST, TINY, samples=12)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(ProfileError, match="exists and is not a profile"):
        run_profile(tmp_path / "junk", "cpu", FAST, TINY, samples=12)


def test_cuda_request_never_falls_back_to_cpu(tmp_path):
    with pytest.raises(DeviceError, match="cuda"):
        run_profile(tmp_path / "gpu", "cuda", FAST, TINY, samples=12)
    assert not (tmp_path / "gpu").exists()


def test_predictor_learns_a_known_latency_law():
    """Synthetic latencies from a known law (compute + memory + narrow-layer penalty)."""
    shapes = sample_shapes(PAPER_SPACE, 200, seed=1)
    rng = np.random.default_rng(0)
    y = np.array([s.params() / 1e6 * 0.3 + sum(1000 / d for d in s.widths) * 0.5 + 5
                  for s in shapes]) * rng.normal(1, 0.01, len(shapes))
    test = np.zeros(len(shapes), bool)
    test[::4] = True
    booster, coef = fit(shapes, y, 128, 1, ~test)
    model = LatencyPredictor(booster, {"design_space": PAPER_SPACE.to_dict(),
                                       "protocol": {"seq_len": 128, "batch": 1},
                                       "baseline": {"coef": coef.tolist()},
                                       "features": booster.feature_names})
    pred = model.predict([s for s, t in zip(shapes, test) if t])
    rel = np.abs(pred / y[test] - 1)
    assert rel.mean() < 0.03 and (rel < 0.05).mean() > 0.9


def test_fit_profile_writes_a_self_describing_predictor(tmp_path):
    out = tmp_path / "p"
    run_profile(out, "cpu", FAST, TINY, samples=16)
    meta = fit_profile(out)
    assert {p.name for p in out.iterdir()} >= {"predictor.ubj", "predictor.json",
                                               "actual_vs_predicted.png", "latency_vs_params.png"}
    saved = json.loads((out / "predictor.json").read_text())
    assert saved["fingerprint"]["device"] == "cpu" and saved["protocol"]["seq_len"] == 16
    assert saved["feature_schema_version"] == 1 and len(saved["held_out_shapes"]) == 4
    assert set(meta["metrics"]["held_out"]) >= {"r2", "mape", "within_5pct", "within_10pct",
                                                "kendall_tau"}
    model = LatencyPredictor.load(out)
    small, large = model.predict([TINY_SPACE.smallest, TINY_SPACE.largest])
    assert 0 < small and 0 < large
    with pytest.raises(ProfileError, match="another design space"):
        model.predict([PAPER_SPACE.largest])
    assert (out / "predictor.ubj").read_bytes()[:1] == b"{"  # UBJSON, not a pickle


def test_cli_profile_predict_and_listing(tmp_path, tiny_supernet):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    tiny_supernet.save(tmp_path / "super")
    runner = CliRunner()
    out = tmp_path / "profiles" / "tiny"
    result = runner.invoke(main, ["profile", "--device", "cpu", "--supernet",
                                  str(tmp_path / "super"), "--seq-len", "16", "--samples", "12",
                                  "--rounds", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["summary"]["shapes"] == 12 and "held_out" in data["predictor"]
    assert "shapes/min" in result.stderr
    pred = json.loads(runner.invoke(main, ["predict", "--profile", str(out), "--shape",
                                           "16,36,8", "--json"]).stdout)
    assert pred["predicted_ms"] > 0 and pred["upper_ms"] >= pred["predicted_ms"]
    listed = json.loads(runner.invoke(main, ["profiles", "list", str(tmp_path / "profiles"),
                                             "--json"]).stdout)
    assert [p["path"] for p in listed["profiles"]] == [str(out)]
    assert listed["profiles"][0]["matches_this_machine"] is True
    shown = runner.invoke(main, ["profiles", "show", str(out)])
    assert "held-out R^2" in shown.stdout
    bad = runner.invoke(main, ["profile", "--device", "tpu", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'tpu' is not one of 'cpu', 'cuda'" in bad.stderr
    gpu = runner.invoke(main, ["profile", "--device", "cuda", "--out", str(tmp_path / "g")])
    assert gpu.exit_code == 1 and len(gpu.stderr.strip().splitlines()) == 1
    missing = runner.invoke(main, ["predict", "--profile", str(tmp_path), "--shape", "8x3"])
    assert missing.exit_code == 1 and "has no fitted predictor" in missing.stderr
