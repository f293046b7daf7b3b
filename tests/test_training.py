import json
import math
import random
import subprocess
import sys

import pytest
import torch

from shaper_deploy.errors import TrainingError
from shaper_deploy.supernet import (SuperBert, SuperConfig, load_supernet, save_supernet,
                                    supernet_from_hf)
from shaper_deploy.training.data import read_texts, tokenize
from shaper_deploy.training.sandwich import TrainConfig, sandwich_shapes, train_supernet

from .conftest import TINY_SPACE, randomize, save_tiny_bert, tiny_tokenizer_json

WORDS = ("the model is fast small bert on device latency shape layer to of and in runs "
         "with we deploy").split()


@pytest.fixture
def setup(tmp_path):
    model = randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=True))).eval()
    model.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(model, tmp_path / "super")
    rng = random.Random(0)
    (tmp_path / "texts.txt").write_text("\n".join(
        " ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(200)))
    corpus = tokenize(read_texts(tmp_path / "texts.txt"), tiny_tokenizer_json().encode(), 32,
                      0.05, SuperConfig(TINY_SPACE))
    return tmp_path, corpus


def _mean(history, pick):
    return sum(sum(h["loss"]) / len(h["loss"]) for h in pick(history)) / len(pick(history))


@pytest.mark.parametrize("objective", ["distill", "mlm"])
def test_short_training_lowers_the_loss(setup, objective):
    tmp, corpus = setup
    config = TrainConfig(objective=objective, steps=30, batch_size=8, seq_len=32, lr=1e-3)
    summary = train_supernet(tmp / "super", corpus, config, tmp / "run")
    history = summary["history"]
    assert len(history) == 30 and all(len(h["loss"]) == 4 for h in history)  # sandwich of 4
    first, last = _mean(history, lambda h: h[:5]), _mean(history, lambda h: h[-5:])
    if objective == "distill":
        assert last < 0.8 * first
    else:  # from about ln(97) towards ln(20) (the text draws from 20 words): 0.35 measured
        assert last < first - 0.2
    trained = load_supernet(tmp / "run" / "supernet")
    assert trained.config == load_supernet(tmp / "super").config
    v = summary["validation"]
    if objective == "distill":  # the full shape is its own teacher's copy: far closer
        assert v["largest"]["loss"] < 0.5 * v["smallest"]["loss"]
    else:
        assert v["largest"]["perplexity"] == pytest.approx(math.exp(v["largest"]["loss"]))


def test_sandwich_shapes_are_the_same_for_a_step():
    model = SuperBert(SuperConfig(TINY_SPACE))
    a, b = (sandwich_shapes(model, 7, 3, seed=1) for _ in range(2))
    assert a == b and a[0] == TINY_SPACE.largest and a[1] == TINY_SPACE.smallest
    assert sandwich_shapes(model, 8, 3, seed=1) != a


def test_resume_reproduces_the_uninterrupted_run(setup):
    tmp, corpus = setup
    config = TrainConfig(objective="mlm", steps=10, batch_size=4, seq_len=32, lr=1e-3,
                         checkpoint_every=4)
    straight = train_supernet(tmp / "super", corpus, config, tmp / "straight")

    def interrupt(message):
        if message.startswith("step 6/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_supernet(tmp / "super", corpus, config, tmp / "resumed", progress=interrupt)
    assert json.loads((tmp / "resumed" / "checkpoint" / "train.json").read_text())["step"] == 4
    notes = []
    resumed = train_supernet(tmp / "super", corpus, config, tmp / "resumed",
                             progress=notes.append)
    assert "resuming" in notes[0] and "at step 4" in notes[0]
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]

    with pytest.raises(TrainingError, match=r"other settings \(lr: 0.001 then, 0.002 now\)"):
        train_supernet(tmp / "super", corpus,
                       TrainConfig(**{**config.__dict__, "lr": 2e-3}), tmp / "resumed")
    other = SuperBert(SuperConfig(TINY_SPACE.for_model(48, 4, 2, vocab_size=97,
                                                       max_positions=64, intermediate_size=96)))
    other.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(other, tmp / "other")
    with pytest.raises(TrainingError, match="of another architecture"):
        train_supernet(tmp / "other", corpus, config, tmp / "resumed")
    # A finished run resumed with fewer steps would relabel its weights: refused.
    with pytest.raises(TrainingError, match=r"other settings \(steps: 10 then, 4 now\)"):
        train_supernet(tmp / "super", corpus, TrainConfig(**{**config.__dict__, "steps": 4}),
                       tmp / "resumed")
    state = tmp / "resumed" / "checkpoint" / "trainer_state.pt"
    torch.save({"evil": Exception("not a tensor")}, state)
    with pytest.raises(TrainingError, match="trainer_state.pt is damaged or holds objects"):
        train_supernet(tmp / "super", corpus, config, tmp / "resumed")
    (tmp / "resumed" / "checkpoint" / "train.json").write_text("{not json")
    with pytest.raises(TrainingError, match="train.json is damaged"):
        train_supernet(tmp / "super", corpus, config, tmp / "resumed")


def test_two_processes_end_with_identical_weights_and_resume_exactly(setup):
    tmp, _ = setup

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "shaper_deploy.cli.main", "train", "supernet",
               "--supernet", str(tmp / "super"), "--data", str(tmp / "texts.txt"), "--steps",
               "4", "--seq-len", "32", "--batch-size", "2", "--accumulate", "2",
               "--layer-loss", "1", "--out", str(tmp / out), "--json", *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    torchrun("ddp")
    summary = json.loads((tmp / "ddp" / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_identical"] is True
    # stopped after step 2 by both ranks, then resumed by both from rank 0's checkpoint
    assert torchrun("resumed", "--stop-after", "2")["stopped_at"] == 2
    assert not (tmp / "resumed" / "supernet").exists()
    torchrun("resumed")
    again = json.loads((tmp / "resumed" / "train.json").read_text())
    assert again["ranks_identical"] is True
    assert again["weights_sha256"] == summary["weights_sha256"]
    # importance order first (the default), layer targets, accumulation
    assert summary["config"]["order"] == "residual+heads"
    assert summary["config"]["accumulate"] == 2 and summary["config"]["layer_loss"] == 1.0


def test_mlm_on_a_bert_without_head_creates_one(tmp_path):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    save_tiny_bert(tmp_path / "bert", masked_lm=False)
    model = supernet_from_hf(tmp_path / "bert")
    assert model.mlm_head is None
    model.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(model, tmp_path / "super")
    rng = random.Random(1)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("\n".join(
        " ".join(rng.choice(WORDS) for _ in range(10)) for _ in range(120)))
    digests = []
    for run in ("run", "again"):  # the new head is drawn from --seed: the same run twice
        r = CliRunner().invoke(main, ["train", "supernet", "--supernet", str(tmp_path / "super"),
                                      "--data", str(tmp_path / "data"), "--objective", "mlm",
                                      "--steps", "3", "--seq-len", "32", "--batch-size", "2",
                                      "--out", str(tmp_path / run), "--json"])
        assert r.exit_code == 0, r.output
        assert "creating one" in r.stderr
        assert load_supernet(tmp_path / run / "supernet").mlm_head is not None
        digests.append(json.loads(r.stdout)["weights_sha256"])
    assert digests[0] == digests[1]


def test_bad_data_and_settings(tmp_path):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    with pytest.raises(TrainingError, match="does not exist"):
        read_texts(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_text("\n  \n")
    with pytest.raises(TrainingError, match="no text found"):
        read_texts(tmp_path / "empty")
    with pytest.raises(TrainingError, match="too few for two blocks"):
        tokenize(["the model"], tiny_tokenizer_json().encode(), 32, 0.05, SuperConfig(TINY_SPACE))
    with pytest.raises(TrainingError, match="unknown objective 'rl'; allowed: mlm, distill"):
        TrainConfig(objective="rl")
    r = CliRunner().invoke(main, ["train", "supernet", "--supernet", str(tmp_path),
                                  "--data", str(tmp_path / "empty"), "--steps", "3",
                                  "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1


def test_cli_train_checks_out_before_any_long_work(setup):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    tmp, _ = setup
    (tmp / "a-file").write_text("x")
    r = CliRunner().invoke(main, ["train", "supernet", "--supernet", str(tmp / "super"),
                                  "--data", str(tmp / "texts.txt"), "--steps", "2",
                                  "--out", str(tmp / "a-file")])
    assert r.exit_code == 1 and "exists and is not a folder" in r.stderr
    assert "blocks of" not in r.stderr  # refused before the text was even tokenized


def test_ctrl_c_checkpoints_the_running_step_and_resume_repeats_the_run(setup):
    import signal

    tmp, corpus = setup
    # as in a terminal, whatever launched the test run (nohup and background jobs ignore it)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    config = TrainConfig(steps=8, batch_size=4, seq_len=32, lr=1e-3, checkpoint_every=100,
                         layer_loss=1.0, order="residual+heads")
    straight = train_supernet(tmp / "super", corpus, config, tmp / "straight")
    notes = []

    def ctrl_c(message):
        notes.append(message)
        if message.startswith("step 3/"):
            signal.raise_signal(signal.SIGINT)  # as a terminal's Ctrl-C would, mid-run

    with pytest.raises(KeyboardInterrupt):
        train_supernet(tmp / "super", corpus, config, tmp / "resumed", progress=ctrl_c)
    # the step under way when Ctrl-C came was finished and kept, not the last periodic one
    assert json.loads((tmp / "resumed" / "checkpoint" / "train.json").read_text())["step"] == 3
    assert any("finishing this step" in n for n in notes)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    resumed = train_supernet(tmp / "super", corpus, config, tmp / "resumed")
    assert resumed["weights_sha256"] == straight["weights_sha256"]
    # Ctrl-C ignored by whoever started us: training does not take it over
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        done = train_supernet(tmp / "super", corpus,
                              TrainConfig(**{**config.__dict__, "steps": 2}), tmp / "ignored",
                              progress=lambda m: signal.raise_signal(signal.SIGINT))
        assert done["steps"] == 2 and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_layer_targets_and_gradient_accumulation(setup):
    tmp, corpus = setup
    model = load_supernet(tmp / "super")
    ids = corpus.train[:2]
    out = model(ids, shape=TINY_SPACE.smallest, layer_outputs=True)
    assert len(out.layer_outputs) == TINY_SPACE.num_layers
    assert torch.equal(out.layer_outputs[-1], out.last_hidden_state)
    assert model(ids).layer_outputs is None  # only when asked for

    def weights(run):
        trained = load_supernet(tmp / run / "supernet")
        return torch.cat([p.detach().flatten() for p in trained.parameters()])

    common = dict(steps=3, seq_len=32, lr=1e-3, precision="fp32", layer_loss=1.0)
    train_supernet(tmp / "super", corpus, TrainConfig(batch_size=8, **common), tmp / "one")
    train_supernet(tmp / "super", corpus, TrainConfig(batch_size=4, accumulate=2, **common),
                   tmp / "two")
    train_supernet(tmp / "super", corpus, TrainConfig(batch_size=4, **common), tmp / "half")
    # Two micro-batches of 4 are the same 8 blocks as one batch of 8 (only the loss's variance
    # scale is per micro-batch): the result is near it, and far from using half the data.
    one = weights("one")
    near, far = (weights("two") - one).norm(), (weights("half") - one).norm()
    assert near < 0.1 * far


def test_a_cuda_request_without_a_gpu_fails_in_one_line(setup):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    tmp, corpus = setup
    with pytest.raises(TrainingError, match="no usable CUDA GPU here"):
        train_supernet(tmp / "super", corpus, TrainConfig(steps=1, device="cuda"), tmp / "r")
    r = CliRunner().invoke(main, ["train", "supernet", "--supernet", str(tmp / "super"),
                                  "--data", str(tmp / "texts.txt"), "--steps", "2",
                                  "--seq-len", "32", "--device", "cuda", "--out",
                                  str(tmp / "c")])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error: --device cuda: no usable CUDA GPU here")
    assert not (tmp / "c" / "supernet").exists()
    with pytest.raises(TrainingError, match="unknown device 'gpu'; allowed: auto, cpu, cuda"):
        TrainConfig(device="gpu")
    with pytest.raises(TrainingError, match="layer-loss .* distill objective only"):
        TrainConfig(objective="mlm", layer_loss=1.0)
