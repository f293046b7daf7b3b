import collections
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from shaper_deploy.errors import DeviceError, ProfileError
from shaper_deploy.io import sha256_file
from shaper_deploy.export import export_bundle, op_counts
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.profiling.predictor import (DeviceProfile, LatencyModel, feature_names, features,
                                     fit_point)
from shaper_deploy.profiling.graph import GRAPH_ACTIVATIONS, RandomWeightFile, build_deploy_graph
from shaper_deploy.profiling.analysis import group_key, group_slowdowns, machine_speed
from shaper_deploy.profiling.folder import (MEASUREMENTS, read_measurements, shape_from_key,
                                            workload_key)
from shaper_deploy.profiling.profile import run_profile
from shaper_deploy.profiling.protocol import Protocol, grid_cell, measure_interleaved, park_threads
from shaper_deploy import runtime
from shaper_deploy.runtime import int8_format, make_session
from shaper_deploy.shape import PAPER_SPACE, DesignSpace, Shape
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import SuperBert, SuperConfig, save_supernet
from shaper_deploy.supernet.config import ACTIVATIONS
from shaper_deploy.templates import FAMILIES, fit_family, sample_shapes, template_shapes

from .conftest import (PLAN_SPACE, TINY_SPACE, assert_profiling_graph_is_the_export, fast_protocol,
                       randomize, sample_inputs)

TINY = SuperConfig(TINY_SPACE, pooler=True)


def test_every_config_activation_has_a_profiling_graph_and_a_torch_module():
    from shaper_deploy.supernet.modules import ACT_FNS

    assert set(GRAPH_ACTIVATIONS) == set(ACTIVATIONS) == set(ACT_FNS)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("pooler", [False, True])
def test_built_graph_is_the_exported_graph(tmp_path, pooler, activation):
    config = SuperConfig(TINY_SPACE, pooler=pooler, hidden_act=activation)
    model = randomize(SuperBert(config)).eval()
    assert_profiling_graph_is_the_export(model, Shape((16, 36, 8), TINY_SPACE), tmp_path / "b")


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


def test_an_int8_graph_is_quantized_once_and_opened_again_in_later_sweeps(tmp_path, monkeypatch):
    from shaper_deploy.profiling import profile as P

    calls = []
    quantize = P.quantize_int8
    monkeypatch.setattr(P, "quantize_int8", lambda *a, **k: (calls.append(a[1]), quantize(*a, **k)))
    sessions = P.GraphSessions(tmp_path, TINY, "cpu", 1, int8_format(["avx2", "fma"]))
    shape = Shape((16, 36, 8), TINY_SPACE)
    feeds = sample_inputs(TINY_SPACE.vocab_size, 1, 8, padding="none")
    first = sessions.build(shape, "int8").run(None, feeds)[0]
    again = sessions.build(shape, "int8").run(None, feeds)[0]
    assert len(calls) == 1 and np.array_equal(first, again)
    sessions.build(Shape((16, 16, 8), TINY_SPACE), "int8", dropped=["transitions.0"])
    sessions.build(shape, "fp32")
    assert len(calls) == 2 and len(sessions.quantized) == 2
    sessions.KEEP_BYTES = 0  # past the disk allowance: quantized each time, into one file
    sessions.build(Shape((8, 24, 8), TINY_SPACE), "int8")
    sessions.build(Shape((8, 24, 8), TINY_SPACE), "int8")
    assert len(calls) == 4 and calls[-1].name == "graph_int8.onnx"


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
    with pytest.raises(ProfileError, match="calm-looks must be a non-negative integer"):
        Protocol(calm_looks=-1)
    with pytest.raises(ProfileError, match=r"retakes \(2\) are calm looks and cannot outnumber"):
        Protocol(calm_looks=1, retakes=2)
    with pytest.raises(ProfileError, match="calm-wait must be true or false"):
        Protocol(calm_wait=1)
    with pytest.raises(ProfileError, match="sentinel must be true or false"):
        Protocol(sentinel="yes")
    assert Protocol.from_dict({k: v for k, v in p.to_dict().items()
                               if k != "sentinel"}).sentinel is False  # older profiles
    assert p.sentinel_workload == (1, 16)
    assert Protocol.from_dict({k: v for k, v in p.to_dict().items()
                               if k != "calm_looks"}).calm_looks == 0  # older profiles
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
    # A run slower than long_run_ms gets one warm-up (long_warmup, in the first round too);
    # a turn times ceil(turn_ms / run) runs.
    import time as _time

    calls.clear()
    slow = Protocol(rounds=2, warmup=2, timed=20, pause_ms=0, turn_ms=1e-6, long_run_ms=1e-6)
    measure_interleaved({"s": lambda: (calls.update("s"), _time.sleep(0.001))}, slow)
    assert calls == {"s": 1 + 1 + 1 + 1}  # round 1: 1 warm-up + 1 timed; round 2: 1 + 1
    calls.clear()  # a profile made before long_warmup: its first round warmed up twice
    older = {k: v for k, v in slow.to_dict().items() if k != "long_warmup"}
    assert Protocol.from_dict(older).long_warmup == 2
    measure_interleaved({"s": lambda: (calls.update("s"), _time.sleep(0.001))},
                        Protocol.from_dict(older))
    assert calls == {"s": 2 + 1 + 1 + 1}
    calls.clear()  # short runs: two warm-ups whatever long_warmup says
    measure_interleaved({"s": lambda: calls.update("s")},
                        dataclasses.replace(fixed, rounds=1, timed=3, long_warmup=5))
    assert calls == {"s": 2 + 3}
    with pytest.raises(ProfileError, match="long-warmup must be a positive integer"):
        Protocol(long_warmup=0)


def test_turns_wait_for_idle_threads_only_when_each_session_has_its_own_pool(monkeypatch,
                                                                             tmp_path):
    """A pool per session: each turn first waits until the last session's threads stop
    spinning. One pool for the whole process (shaperctl profile's own process): the next
    turn uses the same threads, so it waits for nothing. A run cannot use a pool its process
    does not have, and the record says which pool was measured with."""
    from shaper_deploy.profiling import protocol as protocol_module

    parks = []
    monkeypatch.setattr(protocol_module, "park_threads", lambda *a: parks.append(a) or 0.0)
    runners = {"a": lambda: None, "b": lambda: None}
    base = dict(rounds=3, warmup=1, timed=2, turn_ms=1e9, long_run_ms=1e9)
    measure_interleaved(runners, Protocol(**base))
    assert len(parks) == 6  # 3 rounds x 2 sessions
    parks.clear()
    measure_interleaved(runners, Protocol(**base, pool="process"))
    assert parks == []
    with pytest.raises(ProfileError, match="pool must be one of session, process, got 'x'"):
        Protocol(pool="x")
    # records written before the field existed were measured with a pool per session
    older = {k: v for k, v in Protocol().to_dict().items() if k != "pool"}
    assert Protocol.from_dict(older).pool == "session"
    assert protocol_module.process_pool() == "session"  # this test process: a pool per session
    with pytest.raises(ProfileError, match="measured with pool 'process' cannot be measured in "
                                           "this process, whose sessions each have their own"):
        run_profile(tmp_path / "p", "cpu", fast_protocol(pool="process"), TINY, samples=12)
    assert not (tmp_path / "p").exists()


def test_shaperctl_profile_runs_every_session_on_one_pool_in_its_own_process(tmp_path,
                                                                               tiny_supernet):
    """The program (python -m shaper_deploy.cli.main, as the shaperctl script) owns its
    process: its profile shares one pool and waits for no spinning threads; once shared, the
    pool's size is the process's, so a session of another size is refused, never made."""
    import subprocess
    import sys

    save_supernet(tiny_supernet, tmp_path / "super")
    out = tmp_path / "prof"
    r = subprocess.run([sys.executable, "-m", "shaper_deploy.cli.main", "profile", "--device",
                        "cpu", "--supernet", str(tmp_path / "super"), "--precision", "fp32",
                        "--batch", "1,2", "--seq-len", "8,16", "--samples", "12", "--rounds",
                        "1", "--sweeps", "1", "--calm-looks", "0", "--threads", "1", "--out",
                        str(out), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["protocol"]["pool"] == "process" and "park_ms" not in (data["probe"] or {})
    assert "every session runs on this process's one pool of 1 intra-op thread(s)" in r.stderr
    relu = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])], "relu",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    onnx.save(onnx.helper.make_model(relu, opset_imports=[onnx.helper.make_opsetid("", 17)],
                                     ir_version=8), str(tmp_path / "relu.onnx"))
    script = ("from shaper_deploy import runtime\n"
              "runtime.share_one_pool(2)\n"
              f"runtime.make_session({str(tmp_path / 'relu.onnx')!r}, threads=2)\n")
    for tail, error in (("", None),
                        ("runtime.make_session('m', threads=1)", "cannot make a session of 1"),
                        ("runtime.share_one_pool(1)", "one pool of 2 intra-op threads and "
                                                      "cannot make one of 1")):
        run = subprocess.run([sys.executable, "-c", script + tail], capture_output=True,
                             text=True)
        assert (run.returncode == 0) if error is None else (error in run.stderr), run.stderr


def test_each_turn_waits_until_the_last_sessions_threads_stop_spinning():
    """ONNX Runtime's pool threads spin after a run for a time that depends on the CPU; a turn
    waits until the process is idle (a busy thread stands in for them), at most park_ms."""
    import threading
    import time as _time

    stop = _time.perf_counter() + 0.08

    def spin():
        while _time.perf_counter() < stop:
            pass

    busy = threading.Thread(target=spin)
    busy.start()
    waited = park_threads(0, 500)
    busy.join()
    assert 40 <= waited < 400  # until the busy thread ended (80 ms), not the cap
    assert park_threads(0, 500) < 40  # idle at once
    assert 10 <= park_threads(10, 0) < 40  # park_ms 0: the fixed pause alone
    # a protocol written before park_ms existed was measured with the fixed pause
    older = {k: v for k, v in Protocol().to_dict().items() if k != "park_ms"}
    assert Protocol.from_dict(older).park_ms == 0 and Protocol().park_ms == 500


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
    """Synthetic latencies from a known per-layer law, its bottleneck matrices (transitions
    a x b, projections D x d) costing by area: the fit recovers it on unseen shapes."""
    shapes = sample_shapes(PAPER_SPACE, 120, seed=1)
    rng = np.random.default_rng(0)
    cost = {w: 0.5 + w / 100 + (w / 300) ** 2 + (2.0 if w == 120 else 0) for w in PAPER_SPACE.widths}
    D = PAPER_SPACE.hidden_size
    y = np.array([sum(cost[d] for d in s.widths) + 3 + 1e-5 * (sum(
        a * b for a, b in zip(s.widths[:-1], s.widths[1:])) + D * (s.widths[0] + s.widths[-1]))
        for s in shapes])
    y *= rng.normal(1, 0.005, len(y))
    x = features(shapes)
    coef = fit_point(x[:40], y[:40])
    assert (coef >= 0).all()
    rel = np.abs(x[40:] @ coef / y[40:] - 1)
    assert rel.mean() < 0.02 and rel.max() < 0.05  # without per-width terms: 3% mean


def test_sweeps_measure_everything_again_after_the_rest(tmp_path):
    from shaper_deploy.profiling.analysis import measured_latency, record_floor

    out = tmp_path / "p"
    protocol = fast_protocol(precisions=("fp32",), sweeps=2, noisy_cv=0.0)
    seen = []

    def stop_in_the_second_sweep(message):
        seen.append(message)
        if message.startswith("[") and "sweep 2/2" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_profile(out, "cpu", protocol, TINY, samples=12, progress=stop_in_the_second_sweep)
    assert any("sweep 1/2" in m for m in seen)
    partial = read_measurements(out)
    assert {r["sweep"] for r in partial} == {0, 1}
    run_profile(out, "cpu", protocol, TINY, samples=12)
    records = read_measurements(out)
    # every measurement once per sweep, the second sweep after the whole first one, and
    # no at-once retry even though every measurement is "noisy" (noisy_cv 0)
    per = collections.Counter((r["shape_key"], r["batch"], r["seq_len"], r["phase"], r["sweep"])
                              for r in records)
    assert set(per.values()) == {1} and not any(r["retry"] for r in records)
    first = {k[:4] for k in per if k[4] == 0}
    assert first == {k[:4] for k in per if k[4] == 1}
    last_of_first = max(r["group"] for r in records if r["sweep"] == 0)
    assert min(r["group"] for r in records if r["sweep"] == 1) > last_of_first
    # a shape's latency is the lower of its sweeps' floors
    floors = measured_latency(records)
    for r in records:
        if r["phase"] == "main":
            both = [record_floor(x) for x in records if x["phase"] == "main"
                    and (x["shape_key"], x["batch"], x["seq_len"]) ==
                    (r["shape_key"], r["batch"], r["seq_len"])]
            assert len(both) == 2
            assert floors[("fp32", r["batch"], r["seq_len"])][r["shape_key"]] == min(both)


def _look(key, workload, sweep, group, floor, reference_ms, phase="main"):
    """A measurement line: ``key``'s floor at ``workload`` in one look (sweep)."""
    return {"shape": [int(v) for v in key.split(",")], "shape_key": key, "precision": "fp32",
            "batch": workload[0], "seq_len": workload[1], "phase": phase, "retry": False,
            "group": group, "sweep": sweep, "params": 1, "reference_ms": reference_ms,
            "median_ms": floor, "p90_ms": floor, "cv": 0.0, "round_medians": [floor],
            "run_ms": {"10": floor}}


def test_a_calm_look_retries_what_ran_slow_in_every_sweep():
    from shaper_deploy.profiling.profile import calm_look_items

    protocol = fast_protocol(precisions=("fp32",), sweeps=2, calm_looks=2)
    a, b = "16,36,8", "8,8,8"
    (w, v) = (1, 8), (1, 16)
    records = [
        # sweep 0 (group 0, the reference calm), sweep 1 (group 1: slow at 1x8 only)
        _look(a, w, 0, 0, 2.0, 1.0), _look(b, w, 0, 0, 1.0, 1.0),
        _look(a, v, 0, 0, 4.0, 2.0), _look(b, v, 0, 0, 2.0, 2.0),
        _look(a, w, 1, 1, 1.9, 1.5), _look(b, w, 1, 1, 1.2, 1.5),
        _look(a, v, 1, 1, 4.1, 2.0), _look(b, v, 1, 1, 2.1, 2.0),
        _look(b, w, 0, 2, 1.3, 1.6, phase="repeat"), _look(b, w, 1, 3, 1.1, 1.2, "repeat")]
    # a's lowest floor at 1x8 came from the slow group; b's from the calm one; the repeat's
    # best (1.1) from a group 1.2x the fastest: both looked at again, in the third look
    items = calm_look_items(records, protocol, TINY_SPACE, 0)
    assert [(i[0], i[1], ",".join(map(str, i[2].widths)), i[3], i[4]) for i in items] == [
        ("fp32", "main", a, [w], 2), ("fp32", "repeat", b, [w], 2)]
    # what the look measured is not measured again (it resumes) ...
    records += [_look(a, w, 2, 4, 1.95, 1.4)]
    assert [i[1] for i in calm_look_items(records, protocol, TINY_SPACE, 0)] == ["repeat"]
    # ... and the next look goes on while the lowest floor is still a slow group's
    assert [(i[1], i[3], i[4]) for i in calm_look_items(records, protocol, TINY_SPACE, 1)] == [
        ("main", [w], 3), ("repeat", [w], 3)]
    records += [_look(a, w, 2, 5, 1.8, 1.0)]  # calm now, and the lowest
    assert [i[1] for i in calm_look_items(records, protocol, TINY_SPACE, 1)] == ["repeat"]
    # decided on the earlier looks only: a faster reference timed in this look (which would
    # make every earlier group slow) changes nothing
    fast = records + [_look(b, w, 3, 6, 1.0, 0.5)]
    assert [i[1] for i in calm_look_items(fast, protocol, TINY_SPACE, 1)] == ["repeat"]


def test_the_sentinel_judges_every_group_against_one_calm_speed(tiny_profile):
    """Every group at a size ran slow, both precisions' (the sentinel, one fixed workload
    timed in each, at 1.4-1.5x its fastest elsewhere), so the reference's fastest at that
    size was a slow one and saw nothing: with the sentinel those groups are slow and a calm
    look takes them; records without one (profiles made before it) are judged as they were."""
    from shaper_deploy.profiling.analysis import slow_floors
    from shaper_deploy.profiling.profile import calm_look_items

    protocol = fast_protocol(sweeps=2, calm_looks=1)
    assert protocol.sentinel and protocol.sentinel_workload == (1, 8)
    a, w, v = "16,36,8", (1, 8), (1, 16)

    def rec(precision, sweep, group, size, floor, ref, sentinel):
        return {**_look(a, size, sweep, group, floor, ref), "precision": precision,
                "sentinel_ms": sentinel}

    records = [rec("fp32", 0, 0, w, 2.0, 1.0, 1.0), rec("fp32", 0, 0, v, 4.0, 2.0, 1.02),
               rec("int8", 0, 1, v, 3.0, 1.6, 1.4), rec("fp32", 1, 2, v, 4.1, 2.0, 1.0),
               rec("int8", 1, 3, v, 3.1, 1.62, 1.5)]
    slow = group_slowdowns(records)
    assert sorted(round(x, 3) for x in slow.values()) == [1.0, 1.0, 1.02, 1.4, 1.5]
    assert [(i[0], i[3], i[4]) for i in calm_look_items(records, protocol, TINY_SPACE, 0)] == [
        ("int8", [v], 2)]
    assert machine_speed(records)["within"]["1.1"] == 0.6
    # and the profile says how many floors came from slow groups (after the looks), against
    # the fastest speed held over 5 groups in a row (here the median of all five, 1.02)
    assert slow_floors(records, "int8") == {"points": 1, "slow": 1, "median_slowdown": 1.3725,
                                            "calm_over_fastest": 1.02,
                                            "yardstick": "own reference"}
    assert slow_floors(records, "fp32") == {"points": 2, "slow": 0, "median_slowdown": None,
                                            "calm_over_fastest": 1.02,
                                            "yardstick": "own reference"}
    # the larger of the two: a group slow by its own reference, the sentinel calm
    mixed = records + [rec("int8", 1, 4, v, 3.05, 2.4, 1.0)]
    assert group_slowdowns(mixed)[group_key(mixed[-1])] == pytest.approx(1.5)
    old = [{k: x for k, x in r.items() if k != "sentinel_ms"} for r in records]
    assert sorted(round(x, 3) for x in group_slowdowns(old).values()) == [
        1.0, 1.0, 1.0, 1.0, 1.012]
    assert calm_look_items(old, protocol, TINY_SPACE, 0) == []
    # measured: every group times the sentinel at every size, in the same rounds
    measured = read_measurements(tiny_profile)
    assert all(r["sentinel_ms"] > 0 for r in measured)
    assert len({(r["group"], r["sentinel_ms"]) for r in measured}) > len(
        {r["group"] for r in measured})  # timed again at each size
    summary = DeviceProfile.load(tiny_profile).header.summary["precisions"]
    assert all(summary[p]["slow_floors"] == slow_floors(measured, p) for p in ("fp32", "int8"))


def test_the_calm_speed_is_one_the_machine_held_not_one_fast_group():
    """A point timed while the machine ran 1.15x its fastest group is slow when the machine
    held that fastest speed over a stretch of groups (a calm period it returns to), and not
    when one group alone was that fast: the machine's calm speed is then where it stayed. With
    fewer groups than a stretch the fastest group is the calm speed."""
    from shaper_deploy.profiling.analysis import CALM_RUN, calm_speed, slow_floors

    a, b, v = "16,36,8", "8,8,8", (1, 16)

    def run(fast_groups: int) -> list[dict]:
        records = []
        for g in range(20):  # the reference slows as the sentinel does
            sentinel = 1.0 if g < fast_groups else 1.15
            records.append({**_look(b, v, 0, g, 1.0, 2.0 * sentinel), "sentinel_ms": sentinel})
            if g == 10:  # a's only measurement, in a group at 1.15x the fastest
                records.append({**_look(a, v, 0, g, 4.6, 2.0 * sentinel),
                                "sentinel_ms": sentinel})
        return records

    lone, stretch = run(1), run(CALM_RUN)
    assert slow_floors(lone, "fp32") == {"points": 2, "slow": 0, "median_slowdown": None,
                                         "calm_over_fastest": 1.15,
                                         "yardstick": "own reference"}
    assert slow_floors(stretch, "fp32") == {"points": 2, "slow": 1, "median_slowdown": 1.15,
                                            "calm_over_fastest": 1.0,
                                            "yardstick": "own reference"}
    few = [r for r in lone if r["group"] < CALM_RUN - 1]
    assert calm_speed(few, group_slowdowns(few)) == 1.0
    assert calm_speed(run(CALM_RUN // 2 + 1), group_slowdowns(run(CALM_RUN // 2 + 1))) == 1.0
    assert calm_speed(run(CALM_RUN // 2), group_slowdowns(run(CALM_RUN // 2))) == 1.15


def test_a_floor_is_slow_by_its_own_reference_when_the_sentinel_found_the_machine_calm():
    """The sentinel (the reference at the smallest size) says when the machine ran calm; each
    size's own reference says how slow a group ran there. In the AMD slow states of sessions
    49-50 the sentinel ran x1.5 where references at 200+ tokens ran x1.15: a floor timed in a
    group where the sentinel ran 1.5x but its own reference 1.05x its calm time is not slow;
    one where its reference ran 1.3x is; and at a size the sentinel never found calm, the
    sentinel judges, as before session 50."""
    from shaper_deploy.profiling.analysis import own_slowdowns, slow_floors

    a, b, big, never = "16,36,8", "8,8,8", (1, 16), (4, 16)

    def rec(shape, size, group, floor, ref, sentinel):
        return {**_look(shape, size, 0, group, floor, ref), "sentinel_ms": sentinel}

    calm = [rec(b, big, g, 1.0, 10.0, 1.0) for g in range(6)]  # a calm stretch
    records = calm + [rec(a, big, 6, 4.0, 10.5, 1.5),  # the sentinel 1.5x, this size 1.05x
                      rec(b, big, 7, 1.2, 13.0, 1.5),  # this size 1.3x too
                      rec(a, never, 8, 6.0, 20.0, 1.4), rec(b, never, 9, 2.0, 20.0, 1.45)]
    slowdown, calm_speed = own_slowdowns(records)
    assert calm_speed == 1.0
    by_group = {r["group"]: slowdown[group_key(r)] for r in records}
    assert by_group[6] == pytest.approx(1.05) and by_group[7] == pytest.approx(1.3)
    assert by_group[8] == pytest.approx(1.4) and by_group[9] == pytest.approx(1.45)
    # b's floor at the big size came from a calm group (1.0 < 1.2): of 4 points, a at big
    # (1.05) is calm, both at the never-calm size are slow
    assert slow_floors(records, "fp32") == {"points": 4, "slow": 2, "median_slowdown": 1.425,
                                            "calm_over_fastest": 1.0,
                                            "yardstick": "own reference"}
    # what the sentinel alone would have said of a at the big size: slow
    assert group_slowdowns(records)[group_key(records[6])] == pytest.approx(1.5)
    # the machine's speed says both: by the larger slowdown (what the tail's pricing takes)
    # and by the gate's yardstick, where group 6 ran calm
    speed = machine_speed(records)
    assert speed["within"]["1.1"] == pytest.approx(0.6) and speed["max"] == pytest.approx(1.5)
    assert speed["own"]["within"]["1.1"] == pytest.approx(0.7)
    assert speed["own"]["max"] == pytest.approx(1.45) and speed["own"]["groups"] == 10
    assert "own" not in machine_speed([{k: v for k, v in r.items() if k != "sentinel_ms"}
                                       for r in records])


def test_a_refit_counts_floors_timed_slow_against_todays_calm_speed(tiny_profile, tmp_path):
    """A profile whose ``slow_floors`` were counted against its fastest group (before session
    48) is counted again, from its measurements, when it is fitted again (the same
    ``shaperctl profile`` command run once more)."""
    from shaper_deploy.profiling.analysis import slow_floors
    from shaper_deploy.profiling.predictor import fit_profile

    old = tmp_path / "old"
    shutil.copytree(tiny_profile, old)
    header = json.loads((old / "profile.json").read_text())
    for precision in header["summary"]["precisions"].values():
        precision["slow_floors"] = {"points": 100, "slow": 99, "median_slowdown": 1.2}
    (old / "profile.json").write_text(json.dumps(header))
    assert "max_slow_floors" in DeviceProfile.load(old).trust["missed"]
    fit_profile(old)
    measured = read_measurements(old)
    summary = DeviceProfile.load(old).header.summary["precisions"]
    assert all(summary[p]["slow_floors"] == slow_floors(measured, p) for p in ("fp32", "int8"))
    assert all("calm_over_fastest" in summary[p]["slow_floors"] for p in ("fp32", "int8"))


def test_a_calm_look_takes_a_repeated_shape_beside_its_first_measurement():
    """So a look that runs out of time to wait for calm leaves a noise-floor pair alike."""
    from shaper_deploy.profiling.profile import calm_look_items

    protocol = fast_protocol(precisions=("fp32",), sweeps=1, calm_looks=1)
    a, b, c, w = "16,36,8", "8,8,8", "8,16,8", (1, 8)
    records = [_look(c, w, 0, 0, 1.0, 1.0),  # the fastest group: c is calm
               _look(a, w, 0, 1, 2.0, 1.5), _look(b, w, 0, 1, 1.0, 1.5),  # first, slow
               _look(a, w, 0, 2, 2.1, 1.5, "repeat"), _look(b, w, 0, 2, 1.1, 1.5, "repeat")]
    assert [(i[1], ",".join(map(str, i[2].widths)))
            for i in calm_look_items(records, protocol, TINY_SPACE, 0)] == [
        ("main", a), ("repeat", a), ("main", b), ("repeat", b)]


def test_calm_looks_end_to_end_are_the_slow_items_and_resume(tmp_path):
    from shaper_deploy.profiling.profile import calm_look_items

    out = tmp_path / "p"
    protocol = fast_protocol(precisions=("fp32",), sweeps=2, calm_looks=1)
    header = run_profile(out, "cpu", protocol, TINY, samples=12)
    records = read_measurements(out)
    looked = {(r["precision"], r["phase"], r["shape_key"], r["batch"], r["seq_len"])
              for r in records if r["sweep"] == 2}
    # exactly what the sweeps left with a slow lowest floor (timings decide how many)
    before = [r for r in records if r["sweep"] < 2]
    wanted = {(p, phase, ",".join(map(str, shape.widths)), *size)
              for p, phase, shape, sizes, _ in calm_look_items(before, protocol, TINY_SPACE, 0)
              for size in sizes}
    assert looked == wanted
    assert header.summary["calm_looks"] == len(looked)
    assert max(r["sweep"] for r in records) <= 2
    lines = (out / MEASUREMENTS).read_text()
    run_profile(out, "cpu", protocol, TINY, samples=12)  # finished: nothing measured again
    assert (out / MEASUREMENTS).read_text() == lines


def test_a_calm_look_with_nothing_to_do_does_not_end_the_looks(tmp_path, monkeypatch):
    """A resumed run finds a look it finished with nothing left to do (as a run whose sweeps
    left nothing slow would): the looks after it still run. Until session 24 the first empty
    look ended them, so a run interrupted between two looks never took the second."""
    import shaper_deploy.profiling.profile as prof

    # 2 sweeps: a measurement is never retried at once (that is for one sweep), so each look
    # item is one record whatever the machine's load
    protocol = fast_protocol(precisions=("fp32",), sweeps=2, calm_looks=2)

    def items(records, protocol, space, look):
        if look == 0:
            return []
        r = records[0]
        return [("fp32", "main", shape_from_key(r["shape_key"], space),
                 [(r["batch"], r["seq_len"])], protocol.sweeps + look)]

    monkeypatch.setattr(prof, "calm_look_items", items)
    header = run_profile(tmp_path / "p", "cpu", protocol, TINY, samples=12)
    sweeps = [r["sweep"] for r in read_measurements(tmp_path / "p")]
    assert set(sweeps) == {0, 1, 3} and sweeps.count(3) == 1
    assert header.summary["calm_looks"] == 1


def test_wait_for_calm_checks_until_the_reference_runs_calm_or_time_is_up(monkeypatch):
    import shaper_deploy.profiling.profile as prof

    monkeypatch.setattr(prof, "CALM_POLL_S", 0.0)
    seen = iter([1.5, 1.3, 1.05, 1.0])
    got = prof.wait_for_calm(lambda: next(seen), lambda: True, lambda m: None)
    assert got["ratio"] == 1.05 and got["checks"] == 3  # 1.5x, 1.3x, then within 1.1x
    # no time left: the first check is what is timed, slow as it is
    seen = iter([1.5, 1.0])
    got = prof.wait_for_calm(lambda: next(seen), lambda: False, lambda m: None)
    assert got["ratio"] == 1.5 and got["checks"] == 1


def test_a_calm_look_waits_for_calm_and_its_wait_stays_out_of_the_tail(tmp_path, monkeypatch):
    """With a time budget, a calm look times each size once the reference runs calm; the
    records say so, and the machine's tail and speed (which the sweeps sample) leave them
    out. Without one (--samples), nothing waits."""
    import shaper_deploy.profiling.profile as prof
    from shaper_deploy.profiling.predictor import tail_model

    protocol = fast_protocol(precisions=("fp32",), sweeps=2, calm_looks=1, calm_wait=True)

    def items(records, protocol, space, look):  # one item, whatever the timings
        r = records[0]
        return [("fp32", "main", shape_from_key(r["shape_key"], space),
                 [(r["batch"], r["seq_len"])], protocol.sweeps + look)]

    real_wait = prof.wait_for_calm

    def slow_at_first(check, may_wait, note, against):
        first = iter([True])
        return real_wait(lambda: check() * (1e6 if next(first, False) else 1.0), may_wait,
                         note, against)

    monkeypatch.setattr(prof, "calm_look_items", items)
    monkeypatch.setattr(prof, "CALM_POLL_S", 0.0)
    monkeypatch.setattr(prof, "wait_for_calm", slow_at_first)
    real_fastest = prof.fastest_reference  # every later check calm, however loaded the host
    monkeypatch.setattr(prof, "fastest_reference",
                        lambda records: {k: v * 1e3 for k, v in real_fastest(records).items()})
    real_sentinel = prof.fastest_sentinel
    monkeypatch.setattr(prof, "fastest_sentinel", lambda records: real_sentinel(records) * 1e3)
    header = run_profile(tmp_path / "p", "cpu", protocol, TINY, samples=12, minutes=60)
    records = read_measurements(tmp_path / "p")
    gated = [r for r in records if "calm_wait" in r]
    assert [r["sweep"] for r in gated] == [2]
    assert gated[0]["calm_wait"]["checks"] == 2 and gated[0]["calm_wait"]["ratio"] <= 1.1
    assert header.summary["calm_wait"] == {"sizes": 1, "checked": 1, "calm": 1,
                                           "seconds": gated[0]["calm_wait"]["waited_s"]}
    sweeps = [r for r in records if r["sweep"] < 2]
    assert tail_model(records, "fp32")["records"] == sum(r["phase"] == "main" for r in sweeps)
    assert machine_speed(records)["groups"] == len({group_key(r) for r in sweeps})
    # sized by --samples (no --minutes): no budget to wait in, and the profile says so
    header = run_profile(tmp_path / "q", "cpu", protocol, TINY, samples=12)
    assert header.protocol.calm_wait is False
    assert not any("calm_wait" in r for r in read_measurements(tmp_path / "q"))


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
    # once more, with nothing left to measure: the time of the run that measured is kept
    again = run_profile(out, "cpu", protocol, TINY, samples=12)
    assert again.summary["last_run"] == header.summary["last_run"]
    assert again.summary["last_run"]["seconds"] > 0
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
    with pytest.raises(ProfileError, match="int8 cannot be profiled on cuda: ONNX Runtime's dynamic int8"):
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
        "latency_vs_params.png", "machine_speed.png"}

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


def test_trust_flags_a_profile_whose_floors_were_mostly_timed_slow(tiny_profile, tmp_path):
    """Over 70% of a precision's floors from groups timed while the machine ran slow makes the
    profile unreliable: such floors overstate latency, and held-out shapes timed in the same
    slow period cannot show it. 70% itself passes; a profile from before ``slow_floors``
    is judged by the other gates alone; the refusal says that a calmer period helps. (The
    tiny profile's other gates depend on this machine's noise: only this gate is asserted.)"""
    slow = tmp_path / "slow"
    shutil.copytree(tiny_profile, slow)
    header = json.loads((slow / "profile.json").read_text())
    summary = header["summary"]["precisions"]

    def judged(count: int | None) -> dict:
        for precision in summary.values():
            precision["slow_floors"] = {"points": 100, "slow": 0, "median_slowdown": None}
        if count is None:
            del summary["int8"]["slow_floors"]
        else:
            summary["int8"]["slow_floors"] = {"points": 100, "slow": count,
                                              "median_slowdown": 1.414}
        (slow / "profile.json").write_text(json.dumps(header))
        return DeviceProfile.load(slow).trust

    for calm in (judged(70), judged(None)):
        assert "max_slow_floors" not in calm["missed"]
        assert not any("ran slow" in reason for reason in calm["reasons"])
    trust = judged(71)
    assert not trust["reliable"] and "max_slow_floors" in trust["missed"]
    assert [r for r in trust["reasons"] if "ran slow" in r] == [
        "int8 71 of 100 floors timed while the machine ran slow (median x1.41) > 70%"]
    assert trust["limits"]["max_slow_floors"] == 0.7
    with pytest.raises(ProfileError, match=r"is unreliable \(.*int8 71 of 100 floors timed "
                                           r".*\); .*most of its floors were timed while the "
                                           r"machine ran slower .* overstates latency whenever "
                                           r"the machine runs calm: remake "
                                           r"it in a calmer period .*; or pass "
                                           r"--allow-unreliable"):
        DeviceProfile.load(slow).check_trust(False)
    DeviceProfile.load(slow).check_trust(True)


def test_cli_profile_predict_and_listing(tmp_path, tiny_supernet, tiny_profile):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    save_supernet(tiny_supernet, tmp_path / "super")
    runner = CliRunner()
    out = tmp_path / "profiles" / "tiny"
    result = runner.invoke(main, ["profile", "--device", "cpu", "--supernet",
                                  str(tmp_path / "super"), "--precision", "fp32",
                                  "--batch", "1,2", "--seq-len", "8,16", "--samples", "12",
                                  "--rounds", "2", "--threads", "1", "--out", str(out),
                                  "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["protocol"]["precisions"] == ["fp32"] and "held_out" in data["predictor"]["fp32"]
    # fewer threads than the cores this process may use: said before the first measurement
    usable = data["fingerprint"]["usable_cores"]
    assert data["protocol"]["threads"] == 1 and usable == runtime.usable_cores()
    assert ("1 intra-op thread(s) (this process may use "
            f"{usable} cores" in result.stderr) == (usable > 1), result.stderr
    assert "min left" in result.stderr and "trust" in data
    # the tiny profile's sub-millisecond timings may miss the trust thresholds
    refused = runner.invoke(main, ["predict", "--profile", str(tiny_profile), "--shape", "40x3"])
    assert refused.exit_code == (0 if DeviceProfile.load(tiny_profile).trust["reliable"] else 1)
    pred = json.loads(runner.invoke(main, ["predict", "--profile", str(tiny_profile), "--shape",
                                           "40x3", "--batch", "2", "--seq-len", "12",
                                           "--allow-unreliable", "--json"]).stdout)
    assert [r["precision"] for r in pred["predictions"]] == ["fp32", "int8"]
    assert pred["batch"] == 2 and pred["seq_len"] == 12
    assert pred["machine_speed"] == DeviceProfile.load(tiny_profile).machine_speed()
    # a host slow in half its groups: predict says the percentiles include that share
    slow = tmp_path / "slow-host"
    shutil.copytree(tiny_profile, slow)
    lines = [json.loads(line) for line in (slow / MEASUREMENTS).read_text().splitlines()]
    keys = list(dict.fromkeys(group_key(r) for r in lines))  # in the order measured
    # the later half 3x slower: a calm stretch first, so the calm speed (held over 5 groups in
    # a row) is the fastest whatever groups the timings made (a noisy measurement timed again
    # at once is a group of its own; alternating groups left no calm stretch in some runs)
    slowed = set(keys[len(keys) // 2:])
    for r in lines:
        r["reference_ms"] = r["sentinel_ms"] = 3.0 if group_key(r) in slowed else 1.0
    (slow / MEASUREMENTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    header = json.loads((slow / "profile.json").read_text())
    header["files"][MEASUREMENTS] = sha256_file(slow / MEASUREMENTS)
    header["summary"]["precisions"]["fp32"]["slow_floors"] = {"points": 10, "slow": 4,
                                                              "median_slowdown": 3.0}
    (slow / "profile.json").write_text(json.dumps(header))
    said = runner.invoke(main, ["predict", "--profile", str(slow), "--shape", "40x3",
                                "--allow-unreliable"])
    assert ("4 of its 10 shape x size floors (the lowest of each point's looks) came from a "
            "group timed while the machine ran over 1.1x its calm speed (median x3.00; the "
            "calm speed: its fastest group)"  # counted before session 48
            ) in runner.invoke(main, ["profiles", "show", str(slow)]).stdout
    assert "(over 70% of them: unreliable)" in " ".join(
        runner.invoke(main, ["profiles", "show", str(slow)]).stdout.split())
    header["summary"]["precisions"]["fp32"]["slow_floors"]["calm_over_fastest"] = 1.046
    (slow / "profile.json").write_text(json.dumps(header))
    assert ("(median x3.00; the calm speed: the fastest it held over 5 groups in a row, x1.046 "
            "its fastest group)") in runner.invoke(main, ["profiles", "show", str(slow)]).stdout
    header["summary"]["precisions"]["fp32"]["slow_floors"]["yardstick"] = "own reference"
    (slow / "profile.json").write_text(json.dumps(header))
    assert ("came from a group whose own reference ran over 1.1x its time while the machine "
            "ran calm (median x3.00; calm by the sentinel: the fastest it held over 5 groups "
            "in a row, x1.046 its fastest group)"  # counted since session 50
            ) in runner.invoke(main, ["profiles", "show", str(slow)]).stdout
    share = len(slowed) / len(keys)
    assert DeviceProfile.load(slow).machine_speed()["within"]["1.1"] == pytest.approx(1 - share)
    assert (f"the machine ran over 1.1x slower than its fastest in {share:.0%} of its groups "
            "(worst x3.00), over 1.1x its calm time by each size's own reference in "
            f"{share:.0%} (worst x3.00)") in " ".join(said.stdout.split())
    assert "host speed  over the profile's " in said.stdout
    del header["files"][MEASUREMENTS]  # a profile from before measurement checksums
    (slow / "profile.json").write_text(json.dumps(header))
    shown = runner.invoke(main, ["profiles", "show", str(slow), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["machine_speed"] is None
    for r in pred["predictions"]:
        assert r["upper_ms"] == pytest.approx(r["predicted_ms"] * r["margin"])
    far = runner.invoke(main, ["predict", "--profile", str(tiny_profile), "--shape", "40x3",
                               "--seq-len", "64", "--allow-unreliable"])
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
    assert listed["this_machine"]["cpu_id"] == paths[str(out)]["cpu_id"]
    # the same ISA flags on another CPU generation are another machine; a profile written
    # before cpu_id was recorded is matched on the other fields
    for name, cpu in (("older", None), ("other-generation", "OtherVendor family 99 model 1")):
        shutil.copytree(tiny_profile, tmp_path / "gen" / name)
        header = json.loads((tmp_path / "gen" / name / "profile.json").read_text())
        header["fingerprint"].pop("cpu_id")
        if cpu:
            header["fingerprint"]["cpu_id"] = cpu
        (tmp_path / "gen" / name / "profile.json").write_text(json.dumps(header))
    gen = runner.invoke(main, ["profiles", "list", str(tmp_path / "gen")])
    head, older, other = gen.stdout.splitlines()[:3]
    assert head.split() == ["PROFILE", "SPACE", "DEVICE", "CPU", "MADE", "HELD-OUT", "MAPE",
                            "TRUST", "HERE"]
    assert older.startswith(str(tmp_path / "gen" / "older") + " ")
    # ... and says it could not compare it, there and in profiles show
    assert older.endswith("  USE HERE (no cpu_id)"
                          if DeviceProfile.load(tiny_profile).trust["reliable"]
                          else "  this machine (no cpu_id)"), older
    assert other.endswith("  another: cpu_id") and "OtherVendor family 99 model 1" in other
    assert "\n(no cpu_id): the profile predates cpu_id, so it matched on the CPU's model " \
        "name and ISA alone" in gen.stdout
    fields = {Path(p["path"]).name: (p["differing_fields"], p["unchecked_fields"])
              for p in json.loads(runner.invoke(
                  main, ["profiles", "list", str(tmp_path / "gen"), "--json"]).stdout)["profiles"]}
    assert fields == {"older": ([], ["cpu_id"]), "other-generation": (["cpu_id"], [])}
    shown = runner.invoke(main, ["profiles", "show", str(tmp_path / "gen" / "older")])
    assert "this machine, as far as it can tell: it predates cpu_id" in shown.stdout
    assert json.loads(runner.invoke(main, ["profiles", "show", str(tmp_path / "gen" / "older"),
                                           "--json"]).stdout)["this_machine"] == {
        "matches": True, "differences": [], "unchecked": ["cpu_id"]}
    assert "as far as it can tell" not in runner.invoke(
        main, ["profiles", "show", str(tiny_profile)]).stdout
    assert "\nanother: the fingerprint fields that differ" in gen.stdout
    assert "no profile here" not in gen.stdout
    # only other machines' profiles: the hint is a transfer from the whole folder
    (tmp_path / "foreign").mkdir()
    shutil.move(str(tmp_path / "gen" / "other-generation"), tmp_path / "foreign" / "x")
    alone = runner.invoke(main, ["profiles", "list", str(tmp_path / "foreign")])
    assert "no profile here was measured on this machine" in alone.stdout
    assert f"--from {tmp_path / 'foreign'} --supernet SUPERNET --out DIR" in alone.stdout
    # only profiles that cannot be read: no transfer to offer, a direct profile is the way
    (tmp_path / "unread" / "broken").mkdir(parents=True)
    (tmp_path / "unread" / "broken" / "profile.json").write_text("{")
    unread = runner.invoke(main, ["profiles", "list", str(tmp_path / "unread")])
    assert unread.stdout.splitlines()[-1].endswith(
        "make a direct one (shaperctl profile --device cpu --supernet SUPERNET --out DIR, within "
        "12 minutes by default): none above can be read, so none can be the prior of a "
        "transfer"), unread.stdout
    # nothing there: a direct profile is the way; a root that is no folder is a usage error
    (tmp_path / "none").mkdir()
    none = runner.invoke(main, ["profiles", "list", str(tmp_path / "none")])
    assert none.exit_code == 0 and none.stdout.startswith(f"no profiles under {tmp_path / 'none'}: "
                                                          "make this machine's with shaperctl profile")
    for root, why in ((tiny_profile / "profile.json", "is a file"),
                      (tmp_path / "missing", "does not exist")):
        bad = runner.invoke(main, ["profiles", "list", str(root)], prog_name="shaperctl")
        assert bad.exit_code == 2 and bad.stdout == "", bad.output
        assert bad.stderr.splitlines() == [f"Error: Invalid value for '[ROOTS]...': Directory "
                                           f"'{root}' {why}. See 'shaperctl profiles list --help'."]
    shown = runner.invoke(main, ["profiles", "show", str(tiny_profile)])
    assert "held-out R^2" in shown.stdout and "trust" in shown.stdout
    assert "machine speed        the reference graph per group against the fastest" in shown.stdout
    assert "A transfer's few minutes" not in shown.stdout  # a direct profile's
    assert shown.stdout.count("request latency / floor (p10 of runs) (the machine's, from "
                              "fp32 and int8") == 2
    shown_json = json.loads(runner.invoke(main, ["profiles", "show", str(tiny_profile),
                                                 "--json"]).stdout)
    assert [Path(f).name for f in shown_json["plots"]] == [
        "actual_vs_predicted.png", "latency_vs_params.png", "machine_speed.png"]
    assert f"plots                {tiny_profile / 'actual_vs_predicted.png'}, " in shown.stdout
    speed = shown_json["machine_speed"]
    assert speed["groups"] >= 4 and speed["max"] >= speed["p90"] >= speed["median"] >= 1.0
    # with a sentinel, also by the slow-floors count's yardstick, the same groups
    assert speed["own"]["groups"] == speed["groups"]
    assert ("By each group's own reference against its size's time while the machine ran "
            "calm (the slow-floors count's yardstick" in " ".join(shown.stdout.split()))
    bad = runner.invoke(main, ["profile", "--device", "tpu", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "'tpu' is not one of 'cpu', 'cuda'" in bad.stderr
    gpu = runner.invoke(main, ["profile", "--device", "cuda", "--out", str(tmp_path / "g")])
    assert gpu.exit_code == 1 and len(gpu.stderr.strip().splitlines()) == 1
    missing = runner.invoke(main, ["predict", "--profile", str(tmp_path), "--shape", "8x3"])
    assert missing.exit_code == 1 and "is not a profile" in missing.stderr


def test_machine_speed_is_each_groups_reference_over_the_fastest_group_by_hand():
    """Groups are told apart by phase, sweep, group and retry; each size has its own fastest
    group; a group's members share its reference time."""
    def rec(phase, sweep, group, seq, ref, retry=False):
        return {"phase": phase, "sweep": sweep, "group": group, "retry": retry,
                "precision": "fp32", "batch": 1, "seq_len": seq, "reference_ms": ref}

    records = [rec("main", 0, 0, 16, 10.0), rec("main", 0, 0, 16, 10.0),  # one group, 2 shapes
               rec("main", 0, 1, 16, 10.5), rec("main", 1, 0, 16, 20.0),
               rec("main", 1, 0, 16, 14.0, retry=True), rec("repeat", 0, 0, 16, 12.0),
               rec("main", 0, 2, 32, 30.0), rec("main", 1, 2, 32, 31.0)]
    speed = machine_speed(records)
    # slowdowns 1.0, 1.05, 2.0, 1.4, 1.2 at 16 tokens; 1.0, 31/30 at 32
    assert speed["groups"] == 7 and speed["max"] == pytest.approx(2.0)
    assert speed["within"] == {"1.1": pytest.approx(4 / 7), "1.5": pytest.approx(6 / 7)}
    assert speed["median"] == pytest.approx(1.05)
    assert machine_speed(records[:3]) is None  # 2 groups: too few to say


def test_measurement_reports_latency_and_drift_by_hand(tiny_profile, tmp_path, monkeypatch):
    """The model's floor now (p10 of its runs), its median; drift = the reference's floor
    now / in the profile = 5 / 4, recorded, divided into nothing."""
    import shaper_deploy.profiling.profile as prof

    header = DeviceProfile.load(tiny_profile).header
    export_bundle(randomize(SuperBert(header.config)).eval(), PLAN_SPACE.smallest,
                  tmp_path / "b")

    rounds = []

    def scripted(runners, protocol, seed=0, keep_times=False):
        assert set(runners) == {"model", "reference"} and keep_times
        rounds.append(protocol.rounds)
        for run in runners.values():
            run()  # both sessions really run
        return {"model": {"round_medians": [10.0, 10.0], "times": [9.0, 10.0, 11.0, 30.0]},
                "reference": {"round_medians": [5.0, 5.0], "times": [5.0] * 4}}

    monkeypatch.setattr(prof, "measure_interleaved", scripted)
    m = prof.measure_model(tmp_path / "b" / "model.onnx", header, 4.0, "fp32", (2, 12), "cpu")
    assert m["measured_ms"] == 10.0 and m["drift"] == pytest.approx(1.25)
    # a profile of 3 sweeps x 1 round: a bundle gets the 3 rounds a profiled shape got
    swept = dataclasses.replace(header, protocol=dataclasses.replace(header.protocol, rounds=1,
                                                                      sweeps=3))
    prof.measure_model(tmp_path / "b" / "model.onnx", swept, 4.0, "fp32", (2, 12), "cpu")
    assert rounds == [header.protocol.rounds, 3]
    assert m["intrinsic_ms"] == pytest.approx(9.3) and m["times"] == [9.0, 10.0, 11.0, 30.0]
    assert (m["reference_ms_now"], m["reference_ms_profile"]) == (5.0, 4.0)
    assert (m["batch"], m["seq_len"], m["precision"]) == (2, 12, "fp32")
    # the profile's measure keeps the runs only when asked (a benchmark's share over a promise)
    profile = DeviceProfile.load(tiny_profile)
    kept = profile.measure(tmp_path / "b" / "model.onnx", "fp32", (2, 12), "cpu", 90.0,
                           keep_times=True)
    assert kept["times"] == [9.0, 10.0, 11.0, 30.0]
    assert "times" not in profile.measure(tmp_path / "b" / "model.onnx", "fp32", (2, 12), "cpu")


def test_graph_without_identity_projections_is_the_identity_networks_export(tmp_path):
    """An identity super network (made from a BERT) exports without its square identity
    projections; the profiling graph built without them matches it op for op and output
    for output."""
    from shaper_deploy.fusion import bottleneck_orders, dropped_projections, drop_identities
    from shaper_deploy.shape import identity_projections

    model = randomize(SuperBert(TINY)).eval()
    with torch.no_grad():  # identity bottlenecks, as supernet init writes them
        for layer in model.layers:
            for lin in (layer.input_bottleneck, layer.output_bottleneck):
                lin.weight.copy_(torch.eye(48))
                lin.bias.zero_()
    flags = bottleneck_orders(model)
    for widths in ((16, 16, 48), (48, 36, 36), (48, 48, 48)):
        shape = Shape(widths, TINY_SPACE)
        manifest = export_bundle(model, shape, tmp_path / str(widths))
        assert sorted(manifest.dropped_identities) == sorted(identity_projections(shape))
        assert sorted(dropped_projections(flags, shape)) == sorted(manifest.dropped_identities)
        fused = fuse_bottlenecks(slice_subnet(model, shape))
        drop_identities(fused)
        state = {k: v.detach().numpy() for k, v in fused.state_dict().items()}
        graph = build_deploy_graph(model.config, shape, state=state,
                                   dropped=manifest.dropped_identities)
        exported = op_counts(tmp_path / str(widths) / "model.onnx")
        exported.pop("Constant", None)
        assert dict(collections.Counter(n.op_type for n in graph.graph.node)) == exported
        feeds = sample_inputs(97, batch=2, seq_len=11, padding="mixed")
        got = make_session(graph.SerializeToString()).run(None, feeds)
        ref = make_session(tmp_path / str(widths) / "model.onnx").run(None, feeds)
        for a, b in zip(got, ref, strict=True):
            assert np.abs(a - b).max() < 1e-5
    # a randomized (trained-like) network drops nothing
    assert dropped_projections(bottleneck_orders(randomize(SuperBert(TINY))),
                               Shape((48, 48, 48), TINY_SPACE)) == []
    with pytest.raises(ProfileError, match="only square projections"):
        build_deploy_graph(TINY, Shape((16, 36, 8), TINY_SPACE), random=RandomWeightFile(
            tmp_path), dropped=["transitions.0"])
    # the bottleneck matrices enter by area over D^2 (D = 48): two 48 x 48 transitions and
    # two 48 x 48 projections, none of them once dropped; a 16 -> 36 transition is 16 x 36
    x = features([Shape((48, 48, 48), TINY_SPACE)] * 2 + [Shape((16, 36, 36), TINY_SPACE)],
                 [[], identity_projections(Shape((48, 48, 48), TINY_SPACE)), ["transitions.1"]])
    column = x[:, feature_names(TINY_SPACE).index("bottlenecks")]
    assert column.tolist() == pytest.approx([4.0, 0.0, (16 * 36 + 48 * 16 + 48 * 36) / 48**2])


def _record(key, group, ref, median, spread=1.0, precision="fp32", w=(1, 16)):
    return {"shape_key": key, "precision": precision, "batch": w[0], "seq_len": w[1],
            "phase": "main", "retry": False, "group": group, "reference_ms": ref,
            "median_ms": median, "round_medians": [median] * 4, "p90_ms": median * spread,
            "run_ms": {str(k): median * (1 + (spread - 1) * (k - 50) / 40 if k > 50 else 1)
                       for k in (10, 25, 50, 75, 90, 95, 99)}}


def test_a_shape_is_measured_by_its_floor_not_divided_by_the_reference():
    from shaper_deploy.profiling.analysis import measured_latency, record_floor

    # A measurement taken while the machine (reference included) ran 1.6x slower: its
    # median is slow, but its fastest runs were not; nothing is divided by the reference.
    calm = _record("a", 0, 10.0, 8.0)
    slow = {**_record("b", 1, 16.0, 1.6 * 8.0), "run_ms": {"10": 8.1, "25": 9.0, "50": 12.8,
                                                           "75": 13.0, "90": 14.0, "95": 15.0,
                                                           "99": 16.0}}
    assert record_floor(calm) == 8.0 and record_floor(slow) == 8.1
    # a measurement timed again at once pools with the first: the lower floor counts
    retry = {**_record("a", 0, 10.0, 9.5), "retry": True}
    got = measured_latency([calm, slow, retry])[("fp32", 1, 16)]
    assert got == {"a": 8.0, "b": pytest.approx(8.1)}
    # records made before run percentiles: the lowest round median
    old = {k: v for k, v in calm.items() if k != "run_ms"}
    old["round_medians"] = [9.0, 7.5, 8.0, 8.5]
    assert record_floor(old) == 7.5


def test_tail_model_mixes_run_percentiles_over_the_profile():
    from shaper_deploy.profiling.predictor import tail_factor, tail_model

    records = [_record(f"s{i}", i, 10.0, 1.0 + i, spread=1.3) for i in range(80)]
    tail = tail_model(records, "fp32")
    assert tail["levels"] == [50, 75, 90, 95, 99] and tail["records"] == 80
    assert tail_factor(tail, 90, np.array([5.0, 50.0])) == pytest.approx([1.3, 1.3], rel=0.02)
    assert tail_factor(tail, 50, np.array([5.0]))[0] == pytest.approx(1.0, rel=0.01)
    # A third of the profile in a period 2x slower, all runs of those measurements included:
    # their floors rose too, so only a center from the model (the shape's floor when calm)
    # lets p90 of requests see the slow period; the median does not move.
    slow = [_record(f"s{i}", i, 20.0 if i % 3 == 0 else 10.0,
                    (1.0 + i) * (2 if i % 3 == 0 else 1)) for i in range(81)]
    t = tail_model(slow, "fp32", center=lambda r: 1.0 + int(r["shape_key"][1:]))
    assert tail_factor(t, 90, np.array([20.0]))[0] == pytest.approx(2.0, rel=0.05)
    assert tail_factor(t, 50, np.array([20.0]))[0] == pytest.approx(1.0, rel=0.05)
    alone = tail_model(slow, "fp32")  # each measurement's own floor: the period is hidden
    assert tail_factor(alone, 90, np.array([20.0]))[0] == pytest.approx(1.0, rel=0.05)
    assert tail_model(records[:20], "fp32") is None
    assert tail_model(records, "fp32", center=lambda r: None) is None  # none inside the grid
    with pytest.raises(ProfileError, match="only the floor"):
        tail_factor(None, 90, np.array([1.0]))
    old = [{**r, "run_ms": None} for r in records]
    for r in old:
        del r["run_ms"]
    t = tail_model(old, "fp32")
    assert t["levels"] == [50, 90]
    with pytest.raises(ProfileError, match="outside what this profile measured"):
        tail_factor(t, 99, np.array([1.0]))


def test_one_tail_for_the_machine_mixes_both_precisions_measurements():
    """The slow periods are the host's: int8's groups fell in a period 2x slower, fp32's in
    calm ones; the machine's tail mixes both, so fp32 is not spared a period its groups
    happened to miss (predictor.fit_model keeps per precision the larger of it and its own)."""
    from shaper_deploy.profiling.predictor import tail_factor, tail_model

    calm = [_record(f"f{i}", i, 10.0, 1.0 + i) for i in range(60)]
    slow = [_record(f"i{i}", 100 + i, 20.0, (1.0 + i) * (2 if i % 2 == 0 else 1),
                    precision="int8") for i in range(60)]
    floor = {**{f"f{i}": 1.0 + i for i in range(60)}, **{f"i{i}": 1.0 + i for i in range(60)}}
    center = lambda r: floor[r["shape_key"]]  # noqa: E731
    own = {p: tail_model(calm + slow, p, center) for p in ("fp32", "int8")}
    both = tail_model(calm + slow, ("fp32", "int8"), center)
    at = np.array([20.0])
    assert tail_factor(own["fp32"], 90, at)[0] == pytest.approx(1.0, abs=0.02)
    assert tail_factor(own["int8"], 90, at)[0] == pytest.approx(2.0, rel=0.05)
    # a quarter of the profile's measurements ran 2x slow: p90 of both sees it, p50 not
    assert tail_factor(both, 90, at)[0] == pytest.approx(2.0, rel=0.05)
    assert tail_factor(both, 50, at)[0] == pytest.approx(1.0, abs=0.02)
    assert both["records"] == 120 and both["precisions"] == ["fp32", "int8"]
    assert own["int8"]["precisions"] == ["int8"]


def test_a_precisions_tail_is_the_larger_of_its_own_and_the_machines():
    """int8's measurements spread 1.5x at p90, fp32's not at all, in the same minutes: the
    machine's tail mixes them (x1.5 in half the runs); each precision keeps the larger of
    that and its own, at every bin and level."""
    from shaper_deploy.profiling.predictor import larger_tail, tail_factor, tail_model

    fp32 = [_record(f"f{i}", i, 10.0, 1.0 + i) for i in range(60)]
    int8 = [_record(f"i{i}", i, 10.0, 1.0 + i, spread=1.5, precision="int8")
            for i in range(60)]
    machine = tail_model(fp32 + int8, ("fp32", "int8"))
    own = {p: tail_model(fp32 + int8, p) for p in ("fp32", "int8")}
    got = {p: larger_tail(machine, own[p], p) for p in ("fp32", "int8")}
    at = np.array([3.0, 30.0])
    for level in (50, 75, 90, 95, 99):
        for p in ("fp32", "int8"):
            want = np.maximum(tail_factor(machine, level, at), tail_factor(own[p], level, at))
            assert tail_factor(got[p], level, at) == pytest.approx(want)
    assert tail_factor(got["int8"], 90, at) == pytest.approx([1.5, 1.5], rel=0.02)
    assert tail_factor(got["fp32"], 90, at)[0] > 1.2  # the machine's, int8's minutes included
    assert got["int8"]["own"] == "int8" and got["int8"]["precisions"] == ["fp32", "int8"]
    assert larger_tail(machine, None, "fp32") is machine  # no tail of its own: the machine's


def test_a_profile_keeps_the_machines_tail_raised_to_each_precisions_own(tiny_profile):
    from shaper_deploy.profiling.predictor import DeviceProfile, model_floors, tail_model
    from shaper_deploy.profiling.folder import read_measurements

    profile = DeviceProfile.load(tiny_profile)
    records = read_measurements(tiny_profile)
    machine = tail_model(records, ("fp32", "int8"),
                         model_floors(profile.model, records, profile.space))
    tail = profile.model.tail
    assert set(tail) == {"fp32", "int8"}
    for p in ("fp32", "int8"):
        assert tail[p]["precisions"] == ["fp32", "int8"] and tail[p]["own"] == p
        assert tail[p]["median_ms"] == machine["median_ms"]  # the machine's bins
        assert (np.array(tail[p]["factor"]) >= np.array(machine["factor"]) - 1e-12).all()


def test_a_plan_keeps_a_model_on_its_percentiles_upper_bound():
    """The order-statistic bound: exact ranks from the binomial; a p90 on the gap between a
    model's runs and its spikes (one in 12 here) is judged at the spikes, since a window with
    a few more of them measures it there; too few runs: the largest."""
    from scipy.stats import binom

    from shaper_deploy.profiling.predictor import percentile_upper_bound

    ranks = np.arange(1.0, 201.0)
    k = percentile_upper_bound(ranks, 90, 0.95)  # the k-th smallest of 200 is k
    assert binom.cdf(k - 1, 200, 0.9) >= 0.95 > binom.cdf(k - 2, 200, 0.9)
    assert 180 < k <= 190 and percentile_upper_bound(ranks, 50, 0.95) < 115
    runs = np.array([12.0 + 0.01 * i for i in range(110)] + [18.0] * 10)
    assert np.percentile(runs, 90) < 13.1 and percentile_upper_bound(runs, 90) == 18.0
    assert percentile_upper_bound([5.0, 6.0, 7.0, 9.0], 90) == 9.0


def test_int8_format_follows_the_isa():
    from shaper_deploy.runtime import int8_format, int8_format_named, int8_formats

    assert int8_format(["avx", "avx2", "fma"])["weight_type"] == "QUInt8"
    assert int8_format(["avx2", "avx512f", "avx512_vnni"])["weight_type"] == "QInt8"
    assert int8_format(["avx2", "avx_vnni"])["weight_type"] == "QInt8"
    assert int8_format(["asimd"])["weight_type"] == "QInt8"
    assert all(int8_format(i)["per_channel"] for i in ([], ["avx2"], ["asimd"]))
    # x86 without VNNI may also use U8S8 with 7-bit weights (no saturation); the rest one
    assert [f["name"] for f in int8_formats(["avx", "avx2", "avx512f", "fma"])] == [
        "U8U8", "U8S8-reduce-range"]
    assert [f["name"] for f in int8_formats(["avx2", "avx512_vnni"])] == ["U8S8"]
    # a profile's or bundle's record names its format; one no format has is refused
    record = {"method": "onnxruntime quantize_dynamic", "weight_type": "QInt8",
              "per_channel": True, "reduce_range": True}
    assert int8_format_named(record, "why")["name"] == "U8S8-reduce-range"
    assert int8_format_named({**record, "reduce_range": False}, "")["name"] == "U8S8"
    with pytest.raises(ValueError, match="no dynamic int8 format has weights 'QInt8', per "
                                         "channel False"):
        int8_format_named({**record, "per_channel": False}, "")


def test_the_probe_keeps_another_int8_format_only_if_it_is_clearly_faster():
    from shaper_deploy.profiling.profile import MIN_FORMAT_GAIN, choose_int8_format
    from shaper_deploy.runtime import int8_formats

    formats = int8_formats(["avx", "avx2", "fma"])

    def timed(gains):  # U8S8 reduce_range this much faster than U8U8 at each size
        return {"U8U8": {"largest": {k: 10.0 for k in gains}, "smallest": {}},
                "U8S8-reduce-range": {"largest": {k: 10.0 / g for k, g in gains.items()},
                                      "smallest": {}}}

    fast = choose_int8_format(formats, timed({"1x16": 1.3, "1x128": 1.2}))
    assert fast["name"] == "U8S8-reduce-range" and fast["reduce_range"]
    assert "1.25x faster than U8U8" in fast["why"]  # the geometric mean of 1.3 and 1.2
    # a gain under the threshold (noise, or a CPU whose kernels run alike) keeps the default
    slow = choose_int8_format(formats, timed({"1x16": MIN_FORMAT_GAIN * 1.05,
                                              "1x128": MIN_FORMAT_GAIN / 1.06}))
    assert slow["name"] == "U8U8" and "U8S8-reduce-range 1.09x" in slow["why"]


def test_the_probe_times_each_int8_format_the_isa_allows_and_the_profile_keeps_it(
        tmp_path, monkeypatch):
    import shaper_deploy.profiling.fingerprint as fingerprint
    import shaper_deploy.profiling.profile as prof

    monkeypatch.setattr(fingerprint, "cpu_model_and_flags",
                        lambda: ("Some AVX2 CPU", ["avx", "avx2", "fma"]))
    monkeypatch.setattr(prof, "MIN_FORMAT_GAIN", 0.0)  # any speed: the other format
    made, real = [], prof.quantize_int8
    monkeypatch.setattr(prof, "quantize_int8",
                        lambda src, dst, fmt: (made.append(fmt["name"]), real(src, dst, fmt)))
    header = run_profile(tmp_path / "p", "cpu", fast_protocol(), TINY, samples=12)
    probe = header.probe
    assert set(probe["int8_formats_ms"]) == {"U8U8", "U8S8-reduce-range"}
    assert probe["int8_format"]["name"] == "U8S8-reduce-range"
    assert probe["ms"]["int8"] == probe["int8_formats_ms"]["U8S8-reduce-range"]
    assert header.graph["int8"]["weight_type"] == "QInt8" and header.graph["int8"]["reduce_range"]
    # the probe made its 3 shapes in both formats; everything after it in the chosen one
    assert made[:6] == ["U8U8"] * 3 + ["U8S8-reduce-range"] * 3
    assert set(made[6:]) == {"U8S8-reduce-range"} and len(made) > 6
    # resumed (here: finished, nothing to measure) with the format its probe chose
    again = run_profile(tmp_path / "p", "cpu", fast_protocol(), TINY, samples=12)
    assert again.graph["int8"] == header.graph["int8"]
    # --int8-format: that one timed, no other; one this CPU does not use is refused
    with pytest.raises(ProfileError, match=r"cannot be mixed with this run \(graph int8: .*'QInt8'"
                                           r".* vs .*'QUInt8'"):
        run_profile(tmp_path / "p", "cpu", fast_protocol(), TINY, samples=12,
                    int8_format="u8u8")
    made.clear()
    asked = run_profile(tmp_path / "q", "cpu", fast_protocol(), TINY, samples=12,
                        int8_format="u8u8")
    assert asked.graph["int8"]["weight_type"] == "QUInt8" and set(made) == {"U8U8"}
    assert "int8_formats_ms" not in asked.probe
    assert "as --int8-format asked" in asked.probe["int8_format"]["why"]
    with pytest.raises(ProfileError, match=r"^--int8-format U8S8 is not one this CPU uses \(x86 "
                                           r"without VNNI.*allowed: U8U8, U8S8-reduce-range\)$"):
        run_profile(tmp_path / "r", "cpu", fast_protocol(), TINY, samples=12, int8_format="U8S8")


@pytest.mark.parametrize("isa", [("avx", "avx2", "fma"), ("avx2", "avx512_vnni")])
def test_int8_in_each_format_stays_close_to_fp32(tmp_path, isa):
    from shaper_deploy.export import ExportOptions
    from shaper_deploy.runtime import int8_formats

    model = randomize(SuperBert(TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.3)
    fmt = int8_formats(isa)[-1]  # U8S8 reduce_range without VNNI, U8S8 with
    manifest = export_bundle(model, Shape((48, 36, 24), TINY_SPACE), tmp_path / "b",
                             ExportOptions(int8=True, int8_format=fmt, int8_min_cosine=0.9))
    q = manifest.quantization
    assert q["weight_type"] == "QInt8" and q["reduce_range"] == ("avx512_vnni" not in isa)
    assert q["mean_token_cosine"] > 0.95
    types = {t.data_type for t in onnx.load(str(tmp_path / "b" / "model_quantized.onnx"))
             .graph.initializer if t.name.endswith("_quantized")}
    # U8U8 stores no signed weights; U8S8 stores its matrices signed
    assert (onnx.TensorProto.INT8 in types) == (q["weight_type"] == "QInt8")


def test_a_time_budget_sizes_the_profile_and_int8_that_buys_nothing_is_dropped():
    from shaper_deploy.profiling.profile import (DIRECT_MINUTES, direct_default_minutes,
                                                 estimate_seconds, new_header, overhead,
                                                 size_profile)

    # a one-sweep profile times its noisy measurements again at once; sweeps do not
    assert (overhead(Protocol(sweeps=1)), overhead(Protocol(sweeps=3))) == (1.6, 1.25)
    header = new_header("cpu", fast_protocol(), SuperConfig(PLAN_SPACE, pooler=True), 12, 0, {})
    ms = {n: {workload_key(w): 2.0 * w[0] * w[1] / 16 for w in header.protocol.grid}
          for n in ("smallest", "largest", "reference")}
    header.probe = {"ms": {"fp32": ms, "int8": {n: {k: v / 1.05 for k, v in d.items()}
                                                 for n, d in ms.items()}},
                    "int8_speedup": {"largest": {"1x8": 1.05}, "smallest": {"1x8": 1.02}},
                    "build_seconds": {"fp32": 0.1, "int8": 0.3}, "seconds": 5.0}
    small = size_profile(header, None, 0.5, auto_precision=True)
    assert small["precisions"] == ["fp32"] and "int8 dropped: at most 1.05x" in small["decision"]
    big = size_profile(header, None, 30, auto_precision=True)
    assert big["samples"] > small["samples"] or big["rounds"] > small["rounds"]
    assert estimate_seconds(header, big["samples"], big["rounds"], ["fp32"]) <= 30 * 60
    kept = size_profile(header, None, 30, auto_precision=False)
    assert kept["precisions"] == ["fp32", "int8"]
    fixed = size_profile(header, 20, None, auto_precision=False)
    assert (fixed["samples"], fixed["rounds"]) == (20, header.protocol.rounds)
    # a profile whose calm looks wait keeps a quarter of the time out of its sizing for them
    assert kept["wait_reserve_minutes"] == 0.0
    header.protocol = dataclasses.replace(header.protocol, calm_looks=2, calm_wait=False)
    no_wait = size_profile(header, None, 3, auto_precision=False)
    header.protocol = dataclasses.replace(header.protocol, calm_wait=True)
    waits = size_profile(header, None, 3, auto_precision=False)
    assert (no_wait["wait_reserve_minutes"], waits["wait_reserve_minutes"]) == (
        0.0, round(0.25 * (3 * 60 - 5) / 60, 1))
    assert "min kept for the looks to wait" in waits["decision"]
    cost = {k: estimate_seconds(header, d["samples"], d["rounds"], d["precisions"])
            for k, d in (("waits", waits), ("no_wait", no_wait))}
    assert cost["waits"] <= 0.75 * (3 * 60 - 5) < cost["no_wait"] <= 3 * 60 - 5
    assert size_profile(header, 20, None, False)["wait_reserve_minutes"] == 0.0  # no budget
    # a minimum over the budget leaves the looks no time to wait, and says what would
    fast = header.probe["ms"]
    slow = {p: {n: {k: v * 100 for k, v in d.items()} for n, d in m.items()}
            for p, m in fast.items()}  # a device 100x slower
    header.probe["ms"] = slow
    over = size_profile(header, None, 3, auto_precision=False)
    assert (over["samples"], over["wait_reserve_minutes"]) == (12, 0.0)
    # what a transfer tells a default direct profile would take: its budget, or the price of
    # its 12-shape minimum (3 sweeps, 2 calm looks) and the probe where that is more
    header.probe["ms"] = {p: {n: {k: v * 3 for k, v in d.items()} for n, d in m.items()}
                          for p, m in slow.items()}  # 300x slower
    direct = dataclasses.replace(header, protocol=dataclasses.replace(
        header.protocol, sweeps=3, calm_looks=2, rounds=1))
    priced = (estimate_seconds(direct, 12, 1, ["fp32", "int8"]) + 5.0) / 60
    assert priced > DIRECT_MINUTES and direct_default_minutes(header) == round(priced, 1)
    header.probe["ms"] = fast
    assert direct_default_minutes(header) == DIRECT_MINUTES
    header.probe["ms"] = slow
    assert "minimum is over the budget, so the calm looks will not wait" in over["decision"]
    need = int(re.search(r"--minutes (\d+) leaves", over["decision"]).group(1))
    roomy = size_profile(header, None, need, auto_precision=False)
    assert "min kept for the looks to wait" in roomy["decision"]
    assert size_profile(header, None, need - 1, auto_precision=False)["wait_reserve_minutes"] < (
        roomy["wait_reserve_minutes"])
    header.probe["ms"] = fast
    # a transfer (2 sweeps): 1 round in each at first, at most 4 looks in all; --rounds kept
    header.transfer = {}
    header.protocol = dataclasses.replace(header.protocol, sweeps=2, rounds=3)
    wide = size_profile(header, None, 30, auto_precision=False)
    assert wide["rounds"] == 2 and wide["samples"] > 12 and wide["wait_reserve_minutes"] == 0.0
    assert size_profile(header, None, 30, False, auto_rounds=False)["rounds"] == 3
    header.probe["ms"] = slow
    least = size_profile(header, None, 0.5, auto_precision=False)
    assert (least["samples"], least["rounds"]) == (8, 1)


def test_fingerprint_differences_name_the_fields_and_the_flags_that_differ():
    """Scalars as 'a vs b'; a list of ISA flags as the first, and what the second adds or
    drops; a field one fingerprint predates (cpu_id) is not compared."""
    from shaper_deploy.profiling.fingerprint import fingerprint_differences

    a = {"device": "cpu", "cpu_model": "AMD EPYC", "isa": ["avx", "avx2", "fma"]}
    b = {"device": "cpu", "cpu_model": "Intel(R) Xeon(R) Processor", "cpu_id": "x",
         "isa": ["amx_tile", "avx", "avx2", "avx512f"]}
    assert fingerprint_differences(a, b) == [
        "cpu_model: 'AMD EPYC' vs 'Intel(R) Xeon(R) Processor'",
        "isa: avx avx2 fma vs the same + amx_tile avx512f - fma"]
    assert fingerprint_differences(a, dict(a)) == []
