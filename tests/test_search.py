import json
import random

import numpy as np
import pytest
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import TrainingError
from shaper_deploy.shape import PAPER_SPACE
from shaper_deploy.supernet import SuperConfig, save_supernet
from shaper_deploy.templates import random_shape, sample_shapes
from shaper_deploy.training.data import tokenize
from shaper_deploy.training.quality import QualityPredictor, fit_quality, measure_quality
from shaper_deploy.training.search import SearchConfig, evolutionary_search

from .conftest import TINY_SPACE, tiny_tokenizer_json

WORDS = "the model is fast small bert on device latency shape layer to of and in runs".split()


def synthetic_quality(shapes):
    """Later layers matter more; diminishing returns in width."""
    return np.array([sum((i + 1) * np.log(w) for i, w in enumerate(s.widths)) for s in shapes])


def test_measured_quality(tiny_supernet):
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(120)]
    corpus = tokenize(texts, tiny_tokenizer_json().encode(), 32, 0.5, SuperConfig(TINY_SPACE))
    cos = measure_quality(tiny_supernet, [TINY_SPACE.largest, TINY_SPACE.smallest], corpus,
                          "cosine")
    assert cos[0] == pytest.approx(1.0, abs=1e-6) and cos[1] < cos[0]
    ppl = measure_quality(tiny_supernet, [TINY_SPACE.largest], corpus, "perplexity")
    assert ppl[0] > 1
    with pytest.raises(TrainingError, match="unknown quality metric 'bleu'"):
        measure_quality(tiny_supernet, [TINY_SPACE.largest], corpus, "bleu")


def test_quality_predictor_learns_and_round_trips(tmp_path):
    shapes = sample_shapes(PAPER_SPACE, 160, seed=2)
    model = fit_quality(shapes, synthetic_quality(shapes), "cosine")
    assert model.meta["held_out"]["r2"] > 0.9 and model.meta["held_out"]["spearman"] > 0.9
    model.save(tmp_path / "q")
    again = QualityPredictor.load(tmp_path / "q")
    assert np.allclose(again.predict(shapes[:5]), model.predict(shapes[:5]))
    with pytest.raises(TrainingError, match="holds no quality predictor"):
        QualityPredictor.load(tmp_path)


def test_search_respects_limits_and_beats_random():
    limit = 60_000_000
    latency = lambda shapes: np.array([s.params() / 1e6 for s in shapes])  # noqa: E731
    result = evolutionary_search(PAPER_SPACE, synthetic_quality, True, latency, 55.0, limit,
                                 SearchConfig(iterations=30, seed=1))
    everything = [result.best, *result.pareto]
    assert all(c.params <= limit and c.latency_ms <= 55.0 for c in everything)
    rng = random.Random(5)
    randoms = [s for s in (random_shape(PAPER_SPACE, rng) for _ in range(3000))
               if s.params() <= 55_000_000]
    assert result.best.quality >= synthetic_quality(randoms).max()



def test_search_matches_brute_force_on_a_small_space():
    """TINY_SPACE has 6^3 = 216 shapes: the search's best and its Pareto front (best quality
    per parameter count among shapes within the limit) equal exhaustive enumeration's."""
    import itertools

    from shaper_deploy.shape import Shape

    every = [Shape(w, TINY_SPACE) for w in itertools.product(TINY_SPACE.widths, repeat=3)]
    limit = sorted(s.params() for s in every)[150]
    result = evolutionary_search(TINY_SPACE, synthetic_quality, True, max_params=limit,
                                 config=SearchConfig(iterations=40, seed=3))
    allowed = [s for s in every if s.params() <= limit]
    q = dict(zip(allowed, synthetic_quality(allowed)))
    assert result.best.quality == pytest.approx(max(q.values()))
    front, best_so_far = [], -np.inf
    for s in sorted(allowed, key=lambda s: (s.params(), -q[s])):
        if q[s] > best_so_far:
            front.append(s)
            best_so_far = q[s]
    assert [c.shape for c in result.pareto] == front


def test_search_lower_is_better_and_impossible_limits():
    result = evolutionary_search(PAPER_SPACE, lambda s: -synthetic_quality(s), False,
                                 max_params=50_000_000, config=SearchConfig(iterations=5))
    assert result.best.params <= 50_000_000
    with pytest.raises(TrainingError, match=r"no shape meets 1,000 parameters; the smallest"):
        evolutionary_search(PAPER_SPACE, synthetic_quality, max_params=1000,
                            config=SearchConfig(iterations=2))
    with pytest.raises(TrainingError, match="a latency limit needs a latency model"):
        evolutionary_search(PAPER_SPACE, synthetic_quality, max_latency_ms=5.0)


def test_cli_quality_and_search(tmp_path, tiny_supernet_with_tokenizer, monkeypatch):
    save_supernet(tiny_supernet_with_tokenizer, tmp_path / "super")
    rng = random.Random(3)
    (tmp_path / "val.txt").write_text("\n".join(
        " ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(150)))
    runner = CliRunner()
    r = runner.invoke(main, ["train", "quality", "--supernet", str(tmp_path / "super"),
                             "--data", str(tmp_path / "val.txt"), "--samples", "16",
                             "--seq-len", "32", "--out", str(tmp_path / "q"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metric"] == "cosine"
    assert json.loads(r.stdout)["measured_on"] == (
        "mean cosine of mean-pooled embeddings to the full network, "
        f"32 blocks of 32 tokens of {tmp_path / 'val.txt'}, PyTorch fp32")
    again = ["train", "quality", "--supernet", str(tmp_path / "super"), "--data",
             str(tmp_path / "val.txt"), "--samples", "8", "--seq-len", "32", "--out",
             str(tmp_path / "q")]
    r = runner.invoke(main, again)  # the error names --force: it exists
    assert r.exit_code == 1 and "already exists; choose a new path or pass --force" in r.stderr
    r = runner.invoke(main, again + ["--force", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["trained_on"] < 8, r.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == [
        "measurements.json", "quality.json", "quality.png", "quality.ubj"]
    assert "[8/8] shapes measured" in r.stderr and "shapes/s  ETA 0 s" in r.stderr
    r = runner.invoke(main, ["search", "--supernet", str(tmp_path / "super"),
                             "--quality-predictor", str(tmp_path / "q"), "--params", "40K",
                             "--iterations", "5", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["best"]["params"] <= 40_000 and data["pareto"]
    r = runner.invoke(main, ["search", "--supernet", str(tmp_path / "super"),
                             "--quality-predictor", str(tmp_path / "q"), "--params", "1K"])
    assert r.exit_code == 1 and "no shape meets 1,000 parameters" in r.stderr
    # a latency limit without --profile: this machine's in ./profiles, here none
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(main, ["search", "--supernet", str(tmp_path / "super"),
                             "--quality-predictor", str(tmp_path / "q"), "--latency", "5ms"])
    assert r.exit_code == 1 and r.stderr.startswith(
        "Error: --latency needs a profile of this machine, and profiles/ holds no reliable cpu "
        f"profile of it for {tmp_path / 'super'}'s design space"), r.output
