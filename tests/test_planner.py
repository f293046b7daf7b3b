import json
import shutil

import pytest
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import PlannerError
from shaper_deploy.export import ExportOptions
from shaper_deploy.heuristics import cigar_family, cigar_shape
from shaper_deploy.planner import (export_for_budget, load_profile_predictor, measure_bundle,
                                   parse_budget, plan_for_latency)
from shaper_deploy.predictor import LatencyPredictor, fit_profile
from shaper_deploy.profiling.profile import run_profile
from shaper_deploy.profiling.protocol import Protocol
from shaper_deploy.supernet import SuperConfig

from shaper_deploy.shape import DesignSpace
from shaper_deploy.supernet import SuperBert

from .conftest import randomize

# Big enough that latency grows with the shape (in the 48-wide test space it is all overhead).
SPACE = DesignSpace.for_model(128, 4, 3, vocab_size=97, max_positions=64, intermediate_size=512)
CONFIG = SuperConfig(SPACE, pooler=True)
FAST = Protocol(rounds=3, warmup=1, timed=3, pause_ms=1, group_size=6, repeat_shapes=2,
                seq_len=64)


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles") / "tiny"
    run_profile(out, "cpu", FAST, CONFIG, samples=24)
    fit_profile(out)
    return out


@pytest.fixture
def supernet():
    return randomize(SuperBert(CONFIG)).eval()


@pytest.mark.parametrize("text, ms", [("20ms", 20.0), ("0.02s", 20.0), ("20", 20.0),
                                      ("500us", 0.5), (" 1.5 S ", 1500.0)])
def test_parse_budget(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-1ms", "0", "20 minutes"])
def test_parse_budget_errors(text):
    with pytest.raises(PlannerError, match="latency budget"):
        parse_budget(text)


def test_plan_is_the_largest_safe_cigar_found_by_search(tiny_profile):
    predictor = LatencyPredictor.load(tiny_profile)
    family = cigar_family(SPACE)
    uppers = predictor.upper_bound(family)
    budget = float(sorted(uppers)[len(uppers) // 2])
    plan = plan_for_latency(predictor, budget, str(tiny_profile))
    assert plan.upper_ms <= budget and plan.shape in family
    assert plan.upper_ms == pytest.approx(plan.predicted_ms * (
        1 + predictor.meta["metrics"]["held_out"]["abs_rel_p95"]))
    everything = plan_for_latency(predictor, 1e6, str(tiny_profile))
    assert everything.shape == SPACE.largest


@pytest.mark.parametrize("budget", [20, 30, 50, 70, 90])
def test_plan_on_the_shipped_bert_base_profile(budget):
    from pathlib import Path

    from shaper_deploy.shape import PAPER_SPACE

    predictor = LatencyPredictor.load(
        Path(__file__).parents[1] / "profiles" / "x86_64-2core-avx512-bert-base")
    family = cigar_family(PAPER_SPACE)
    plan = plan_for_latency(predictor, budget)
    assert plan.upper_ms <= budget
    assert plan.evaluations <= 8 < len(family)  # a search over parameter counts
    fitting = [s for s, u in zip(family, predictor.upper_bound(family)) if u <= budget]
    best = max(s.params() for s in fitting)
    # The predictor is not perfectly monotone along the family (its error is ~1-3%), so the
    # search may stop one cigar short of the brute-force best, never above the budget.
    assert plan.shape.params() >= 0.9 * best


def test_unattainable_budget_names_the_fastest(tiny_profile):
    predictor = LatencyPredictor.load(tiny_profile)
    with pytest.raises(PlannerError, match=r"0.0001 ms budget is unattainable on profile .*: "
                                           r"the fastest shape \(20x3"):
        plan_for_latency(predictor, 1e-4, str(tiny_profile))


def test_profile_for_another_device(tiny_profile, tmp_path):
    with pytest.raises(PlannerError, match="was measured on cpu, but --device is cuda"):
        load_profile_predictor(tiny_profile, "cuda", print)
    other = tmp_path / "other"
    shutil.copytree(tiny_profile, other)
    header = json.loads((other / "profile.json").read_text())
    header["fingerprint"]["cpu_model"] = "A Different CPU"
    (other / "profile.json").write_text(json.dumps(header))
    warnings = []
    load_profile_predictor(other, "cpu", warnings.append)
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: profile")
    assert "cpu_model: 'A Different CPU'" in warnings[0]


def test_closed_loop_meets_the_budget(tiny_profile, supernet, tmp_path):
    predictor = LatencyPredictor.load(tiny_profile)
    smallest = cigar_shape(SPACE.smallest.params(), SPACE)
    budget = 3 * float(predictor.upper_bound([smallest])[0])
    # max_attempts leaves room for a noisy machine (the loop re-plans after a real miss).
    manifest = export_for_budget(supernet, budget, [tiny_profile], tmp_path / "b",
                                 max_attempts=8)
    plan = manifest["plan"]
    assert plan["measured_ms"] <= budget and plan["attempts"][-1]["within_budget"]
    assert plan["budget_ms"] == budget and plan["precision"] == "fp32"
    on_disk = json.loads((tmp_path / "b" / "shaper.json").read_text())
    assert on_disk["plan"]["shape"] == manifest["shape"]
    again = measure_bundle(tmp_path / "b", tiny_profile, "cpu")
    assert again["measured_ms"] > 0 and again["model"] == "model.onnx"
    bench = CliRunner().invoke(main, ["bench", str(tmp_path / "b"), "--duration", "0.3",
                                      "--seq-len", "16", "--json"])
    assert bench.exit_code == 0, bench.output
    data = json.loads(bench.stdout)
    assert data["plan"]["budget_ms"] == budget and data["profile_protocol"]["measured_ms"] > 0


def test_closed_loop_steps_down_when_the_predictor_is_wrong(tiny_profile, supernet,
                                                           tmp_path):
    """A predictor that claims everything is 4x faster than it is: the loop must notice."""
    liar = tmp_path / "liar"
    shutil.copytree(tiny_profile, liar)
    meta = json.loads((liar / "predictor.json").read_text())
    honest = LatencyPredictor.load(tiny_profile)
    smallest = cigar_shape(SPACE.smallest.params(), SPACE)
    fast, slow = honest.predict([smallest, SPACE.largest])
    budget = float((fast * slow) ** 0.5)  # the largest shape cannot meet it
    meta["baseline"]["coef"] = [c / 4 for c in meta["baseline"]["coef"]]
    (liar / "predictor.json").write_text(json.dumps(meta))
    notes = []
    manifest = export_for_budget(supernet, budget, [liar], tmp_path / "b",
                                 max_attempts=6, progress=notes.append)
    attempts = manifest["plan"]["attempts"]
    assert len(attempts) >= 2 and not attempts[0]["within_budget"]
    assert attempts[-1]["within_budget"] and attempts[-1]["correction"] > 1
    assert attempts[-1]["params"] < attempts[0]["params"]
    assert any("measuring again to rule out noise" in n for n in notes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "liar"]  # no attempts left


def test_cli_budget_errors(tiny_profile, supernet, tmp_path):
    supernet.save(tmp_path / "super")
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                    "--out", str(tmp_path / "out"), *map(str, args)])
    r = run("--latency", "5ms")
    assert r.exit_code == 1 and "a latency budget needs --profile" in r.stderr
    r = run("--latency", "5ms", "--shape", "8x3")
    assert r.exit_code == 2 and "give exactly one of --shape, --params or --latency" in r.stderr
    r = run("--latency", "0.0001ms", "--profile", tiny_profile)
    assert r.exit_code == 1 and "unattainable" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("--latency", "5ms", "--profile", tiny_profile, "--precision", "int8")
    assert r.exit_code == 1 and "no int8 profile given (have: fp32)" in r.stderr
    r = run("--params", "250K", "--profile", tiny_profile, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["params"]["fused"] <= 250_000 and data["predicted_latency"][0]["predicted_ms"] > 0
    assert not (tmp_path / "x").exists()
    shapes = json.loads(runner.invoke(main, ["shapes", "--supernet", str(tmp_path / "super"),
                                             "--profile", str(tiny_profile), "--json"]).stdout)
    params = [r["params"] for r in shapes["shapes"]]
    assert params == sorted(params) and all("predicted_ms" in r for r in shapes["shapes"])


def test_minilm_budget_export_with_the_shipped_profile(minilm_dir, tmp_path):
    from pathlib import Path

    profile = Path(__file__).parents[1] / "profiles" / "x86_64-2core-avx512-minilm"
    runner = CliRunner()
    assert runner.invoke(main, ["supernet", "init", "--from-bert", str(minilm_dir), "--out",
                                str(tmp_path / "super")]).exit_code == 0
    r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--latency",
                             "10ms", "--profile", str(profile), "--out", str(tmp_path / "b"),
                             "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert plan["measured_ms"] <= 10 and plan["predicted_upper_ms"] <= 10
    assert plan["params"] > 14_000_000  # more than the smallest shape: the budget is used


def test_int8_profile_and_automatic_precision(tiny_profile, supernet, tmp_path):
    """An int8 profile times quantized graphs; auto picks the precision fitting more params."""
    int8 = tmp_path / "int8"
    run_profile(int8, "cpu", Protocol(**{**FAST.to_dict(), "precision": "int8"}), CONFIG,
                samples=12)
    fit_profile(int8)
    fp32_model, int8_model = LatencyPredictor.load(tiny_profile), LatencyPredictor.load(int8)
    assert int8_model.meta["protocol"]["precision"] == "int8"
    budget = float(fp32_model.upper_bound([SPACE.largest])[0]) * 0.8
    notes = []
    manifest = export_for_budget(supernet, budget, [tiny_profile, int8], tmp_path / "b",
                                 precision="auto", options=ExportOptions(int8_min_cosine=0.5),
                                 max_attempts=8, progress=notes.append)
    plan = manifest["plan"]
    chosen = {"fp32": plan_for_latency(fp32_model, budget), "int8": plan_for_latency(int8_model, budget)}
    best = max(chosen.values(), key=lambda p: p.shape.params())
    assert plan["precision_reason"].startswith(f"{plan['precision']} fits")
    assert plan["attempts"][0]["params"] == best.shape.params()
    if plan["precision"] == "int8":
        assert manifest["default_model"] == "model_quantized.onnx"
    assert plan["measured_ms"] <= budget
