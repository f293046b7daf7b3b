"""Text classifiers: task fine-tuning of a super network, text-classification export (Optimum's
ORTModelForSequenceClassification and pipeline agree), serving, planning by task accuracy, and
bad data. A tiny model learns a task it can learn (is the word "fast" in the text?)."""

import csv
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import DataError, ExportError, PlannerError, TrainingError
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.serving import Bundle
from shaper_deploy.shape import Shape
from shaper_deploy.supernet import SuperBert, SuperConfig, load_supernet, save_supernet
from shaper_deploy.taskdata import read_task_data
from shaper_deploy.training.config import TaskConfig
from shaper_deploy.training.task import encode, evaluate, train_task

from .conftest import PLAN_SPACE, randomize, tiny_tokenizer_json

WORDS = "the model is small bert on device latency shape layer to of and in runs we deploy".split()
COLS = dict(text_column="review", label_column="sentiment")


def write_rows(path, n, seed, pair=False):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(6)]
        label = rng.choice(["fresh", "rotten"])
        if label == "fresh":
            words[rng.randrange(6)] = "fast"
        row = {"review": " ".join(words), "sentiment": label}
        if pair:
            row["other"] = " ".join(rng.choice(WORDS) for _ in range(3))
        rows.append(row)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    return path


FAST = TaskConfig(full_steps=60, steps=40, batch_size=16, seq_len=16, lr=3e-4, device="cpu",
                  checkpoint_every=1000, order="residual+heads")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    torch.manual_seed(1)
    model = SuperBert(SuperConfig(PLAN_SPACE, pooler=True)).eval()  # torch's default init
    model.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(model, root / "super")
    train = write_rows(root / "train.csv", 300, 0)
    val = write_rows(root / "val.jsonl", 120, 1)
    summary = train_task(root / "super", read_task_data(train, **COLS), FAST, root / "out",
                         read_task_data(val, **COLS), ("review", "", "sentiment"))
    return root, summary


def test_the_task_is_learned_and_every_shape_is_a_classifier(trained):
    root, summary = trained
    v = summary["validation"]
    assert v["teacher"]["accuracy"] >= 0.9 and v["largest"]["accuracy"] >= 0.9
    net = load_supernet(root / "out" / "supernet")
    # a slice of half the width still classifies: 0.92 with the importance order, 0.82
    # without it (the 20-wide smallest stays near chance after 40 sandwich steps: 0.49
    # ordered, 0.58 not, on 120 texts)
    val = encode(read_task_data(root / "val.jsonl", **COLS), net, net.config.task_head, 16)
    half = Shape((60,) * 3, PLAN_SPACE)
    got = evaluate(net, val, net.config.task_head, {"half": half}, torch.device("cpu"))
    assert got["half"]["accuracy"] >= 0.85
    assert net.config.task_head.labels == ("fresh", "rotten")
    assert net.config.task_head.text_column == "review"
    assert load_supernet(root / "out" / "teacher").config.task_head == net.config.task_head
    # features put in importance order on the training texts before the first step (--order)
    assert net.source["importance_order"] == FAST.order == "residual+heads"
    assert summary["config"]["order"] == "residual+heads"


def test_training_resumes_exactly(trained, tmp_path):
    root, _ = trained
    train = read_task_data(root / "train.csv", **COLS)
    cols = ("review", "", "sentiment")
    config = TaskConfig(full_steps=6, steps=6, batch_size=8, seq_len=16, lr=1e-3, device="cpu")
    train_task(root / "super", train, config, tmp_path / "a", columns=cols)
    stopped = train_task(root / "super", train, config, tmp_path / "b", columns=cols,
                         stop_after=8)  # in the sandwich phase, after the teacher
    assert stopped["stopped_at"] == 8
    train_task(root / "super", train, config, tmp_path / "b", columns=cols)
    a = load_supernet(tmp_path / "a" / "supernet").state_dict()
    b = load_supernet(tmp_path / "b" / "supernet").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(TrainingError, match="other settings"):
        train_task(root / "super", train, TaskConfig(full_steps=6, steps=7, batch_size=8,
                                                     seq_len=16, device="cpu"),
                   tmp_path / "b", columns=cols, stop_after=1)


def test_the_importance_order_is_measured_once(trained, tmp_path):
    """A super network already in importance order (a task network, or one from train
    supernet --order) keeps its order; --order none leaves the source's order."""
    root, _ = trained
    train = read_task_data(root / "train.csv", **COLS)
    cols = ("review", "", "sentiment")
    once = replace(FAST, full_steps=1, steps=0)
    notes = []
    train_task(root / "out" / "supernet", train, once, tmp_path / "again", columns=cols,
               progress=notes.append)
    assert any("in importance order already (residual+heads): kept" in n for n in notes)
    assert not any(n.startswith("ordered the features") for n in notes)
    train_task(root / "super", train, replace(once, order="none"), tmp_path / "none",
               columns=cols)
    assert "importance_order" not in load_supernet(tmp_path / "none" / "supernet").source
    with pytest.raises(TrainingError, match="unknown order 'best'; allowed: none, residual"):
        replace(once, order="best")


def test_export_classify_and_optimum_agree(trained, tmp_path):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import PreTrainedTokenizerFast, pipeline

    root, _ = trained
    net = load_supernet(root / "out" / "supernet")
    shape = Shape((40, 128, 60), PLAN_SPACE)
    manifest = export_bundle(net, shape, tmp_path / "b",
                             ExportOptions(task="text-classification", int8=True))
    assert manifest.outputs == ["logits"] and manifest.validation["passed"]
    assert manifest.quantization["label_agreement"] >= 0.95
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "fresh", "1": "rotten"}
    bundle = Bundle.load(tmp_path / "b", model="model.onnx")
    texts = ["we deploy the fast model", "the model runs on device"]
    answers = bundle.classify(texts)
    assert [a["label"] for a in answers] == ["fresh", "rotten"]
    enc = bundle.encode(texts).feeds
    with torch.no_grad():
        named = {k: torch.from_numpy(v) for k, v in enc.items()}
        want = net.task_logits(net(**named, shape=shape).last_hidden_state,
                               named["attention_mask"]).numpy()
    assert np.abs(bundle.run(enc)["logits"] - want).max() < 1e-4
    ort = ORTModelForSequenceClassification.from_pretrained(
        tmp_path / "b", file_name="model.onnx", provider="CPUExecutionProvider")
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "b" / "tokenizer.json"),
                                  pad_token="[PAD]")
    got = pipeline("text-classification", model=ort, tokenizer=tok)(texts)
    assert [g["label"] for g in got] == ["fresh", "rotten"]
    assert got[0]["score"] == pytest.approx(answers[0]["score"], abs=1e-5)
    r = CliRunner().invoke(main, ["run", str(tmp_path / "b"), *texts, "--json"])
    assert r.exit_code == 0, r.output
    assert [p["label"] for p in json.loads(r.stdout)["predictions"]] == ["fresh", "rotten"]
    r = CliRunner().invoke(main, ["run", str(tmp_path / "b"), texts[0], "--pair", "x"])
    assert r.exit_code != 0 and "single texts, not pairs" in r.output
    with pytest.raises(ExportError, match="needs a task head"):
        export_bundle(load_supernet(root / "super"), shape, tmp_path / "c",
                      ExportOptions(task="text-classification"))


def test_a_budget_buys_the_most_accurate_classifier_on_the_users_data(trained, tmp_path,
                                                                       tiny_profile):
    """The profile timed feature-extraction graphs of this design space; the planner plans a
    classifier from it, measures each candidate's accuracy on the --eval file and records it
    beside its latency."""
    root, _ = trained
    r = CliRunner().invoke(main, [
        "export", "--supernet", str(root / "out" / "supernet"), "--task", "text-classification",
        "--latency", "10s", "--profile", str(tiny_profile), "--allow-unreliable",
        "--measure-seconds", "0",
        "--eval", str(root / "val.jsonl"), "--batch", "1", "--seq-len", "16",
        "--out", str(tmp_path / "p"), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    assert plan["fidelity_metric"].startswith("accuracy on")
    assert plan["fidelity"] >= 0.9 and "120 labelled texts" in plan["calibration"]
    fits = [c for c in plan["candidates"] if c["status"] in ("chosen", "fits")]
    assert fits and all(c["fidelity"] is not None and c["measured_ms"] for c in fits)
    # each shape family's fitting shape screened on the labelled rows, the best one exported
    assert plan["families"]["screened_on"].startswith("the first 120 of 120 labelled texts")
    for c in plan["candidates"]:
        rows = plan["families"]["by_precision"][c["precision"]]
        assert all(0 <= r["score"] <= 1 for r in rows) and len(rows) == 8
        best = max(round(r["score"], 4) for r in rows)
        first = next(r for r in rows if round(r["score"], 4) == best)
        assert c["family"] == first["family"]
    # the teacher beside the slices: one plan serves a loose budget and a tight one
    r = CliRunner().invoke(main, [
        "export", "--supernet", str(root / "out" / "supernet"), "--task", "text-classification",
        "--teacher", str(root / "out" / "teacher"), "--latency", "10s", "--profile",
        str(tiny_profile), "--allow-unreliable", "--measure-seconds", "0",
        "--eval", str(root / "val.jsonl"),
        "--precision", "fp32", "--out", str(tmp_path / "t"), "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)["plan"]
    teachers = [c for c in plan["candidates"] if c["network"] == "teacher"]
    assert len(teachers) == 1 and teachers[0]["status"] in ("chosen", "fits")
    assert teachers[0]["fidelity"] >= 0.9 and teachers[0]["measured_ms"] > 0
    assert plan["network"] in ("supernet", "teacher")
    human = CliRunner().invoke(main, [
        "export", "--supernet", str(root / "out" / "supernet"), "--task", "text-classification",
        "--latency", "10s", "--profile", str(tiny_profile), "--allow-unreliable",
        "--measure-seconds", "0",
        "--precision", "fp32", "--out", str(tmp_path / "q")])
    assert human.exit_code == 0, human.output
    assert "agree: label agreement with the full fp32 model" in human.stdout
    bad = write_rows(tmp_path / "bad.csv", 10, 3)
    bad.write_text(bad.read_text().replace("rotten", "stale"))
    r = CliRunner().invoke(main, [
        "export", "--supernet", str(root / "out" / "supernet"), "--task", "text-classification",
        "--latency", "10s", "--profile", str(tiny_profile), "--allow-unreliable",
        "--measure-seconds", "0",
        "--eval", str(bad), "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "stale" in r.output and not (tmp_path / "r").exists()
    with pytest.raises(PlannerError, match="needs a task super network"):
        from shaper_deploy.planner import BudgetRequest, export_checkpoint_for_budget
        from shaper_deploy.promise import Budget

        export_checkpoint_for_budget(root / "super", BudgetRequest(
            Budget(10_000.0), tiny_profile, allow_unreliable=True, evaluation=bad),
            tmp_path / "s", ExportOptions(task="text-classification"))


def test_pairs_and_regression(tmp_path):
    model = randomize(SuperBert(SuperConfig(PLAN_SPACE, pooler=True)), seed=2).eval()
    model.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(model, tmp_path / "super")
    path = write_rows(tmp_path / "pairs.tsv", 64, 4, pair=True)
    data = read_task_data(path, pair_column="other", **COLS)
    config = TaskConfig(full_steps=4, steps=2, batch_size=8, seq_len=24, device="cpu")
    train_task(tmp_path / "super", data, config, tmp_path / "p", columns=("review", "other",
                                                                           "sentiment"))
    net = load_supernet(tmp_path / "p" / "supernet")
    export_bundle(net, PLAN_SPACE.smallest, tmp_path / "pb",
                  ExportOptions(task="text-classification"))
    answers = Bundle.load(tmp_path / "pb").classify(["the model", "fast"], ["we deploy", "of"])
    assert {a["label"] for a in answers} <= {"fresh", "rotten"}
    with pytest.raises(Exception, match="text pairs"):
        Bundle.load(tmp_path / "pb").classify(["the model"])
    scores = tmp_path / "scores.csv"
    scores.write_text("review,sentiment\n" + "".join(
        f"{' '.join(WORDS[i % 7:i % 7 + 3])},{i % 5 / 4}\n" for i in range(40)))
    data = read_task_data(scores, regression=True, **COLS)
    train_task(tmp_path / "super", data, config, tmp_path / "r", columns=("review", "",
                                                                           "sentiment"))
    net = load_supernet(tmp_path / "r" / "supernet")
    assert net.config.task_head.problem == "regression"
    export_bundle(net, PLAN_SPACE.largest, tmp_path / "rb",
                  ExportOptions(task="text-classification"))
    out = Bundle.load(tmp_path / "rb").classify(["the model is"])
    assert set(out[0]) == {"score"} and np.isfinite(out[0]["score"])


@pytest.mark.parametrize("content, suffix, kwargs, message", [
    ("review,sentiment\n", ".csv", {}, "holds no rows"),
    ("", ".jsonl", {}, "holds no rows"),
    ("text,sentiment\nthe model,fresh\nfast,rotten\n", ".csv", {}, "no column 'review'"),
    ("review,sentiment\nthe model,fresh\nfast,\n", ".csv", {}, "row 3: an empty value"),
    ("review,sentiment\nthe model,fresh\nfast,fresh\n", ".csv", {}, "one label only"),
    ("review,sentiment\nthe model,0.5\nfast,high\n", ".csv", {"regression": True},
     "'high' is not a number"),
    ('{"review": "x", "sentiment": "a"}\nnot json\n', ".jsonl", {}, "line 2 is not JSON"),
    ("review\tsentiment\n", ".txt", {}, "unknown data format '.txt'"),
])
def test_bad_task_data_is_one_line(tmp_path, content, suffix, kwargs, message):
    path = tmp_path / f"data{suffix}"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_task_data(path, **COLS, **kwargs)


def test_non_utf8_and_unknown_validation_labels(trained, tmp_path):
    root, _ = trained
    path = tmp_path / "latin.csv"
    path.write_bytes("review,sentiment\ncaf\xe9 model,fresh\nfast,rotten\n".encode("latin-1"))
    with pytest.raises(DataError, match="is not UTF-8"):
        read_task_data(path, **COLS)
    val = write_rows(tmp_path / "val.csv", 20, 5)
    val.write_text(val.read_text().replace("rotten", "stale"))
    r = CliRunner().invoke(main, [
        "train", "task", "--supernet", str(root / "super"), "--train", str(root / "train.csv"),
        "--validation", str(val), "--text-column", "review", "--label-column", "sentiment",
        "--steps", "1", "--full-steps", "1", "--seq-len", "16", "--out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "label(s) stale" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_two_processes_train_a_task_to_identical_weights_and_resume(trained, tmp_path):
    """torchrun on the CPU (gloo): both ranks end with the same weights, and a run stopped in
    the sandwich phase resumes to the same ones."""
    import subprocess
    import sys

    root, _ = trained

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "shaper_deploy.cli.main", "train", "task",
               "--supernet", str(root / "super"), "--train", str(root / "train.csv"),
               "--text-column", "review", "--label-column", "sentiment", "--full-steps", "3",
               "--steps", "3", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
               "--out", str(tmp_path / out), "--json", *extra]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)

    whole = torchrun("ddp")
    assert whole["world_size"] == 2 and whole["ranks_identical"] is True
    assert torchrun("resumed", "--stop-after", "4")["stopped_at"] == 4
    again = torchrun("resumed")
    assert again["ranks_identical"] is True and again["weights_sha256"] == whole["weights_sha256"]


def test_one_shape_fine_tuned_alone(trained, tmp_path):
    root, _ = trained
    r = CliRunner().invoke(main, [
        "train", "task", "--supernet", str(root / "super"), "--train", str(root / "train.csv"),
        "--validation", str(root / "val.jsonl"), "--text-column", "review", "--label-column",
        "sentiment", "--shape", "100x3", "--full-steps", "60", "--steps", "0", "--seq-len", "16",
        "--batch-size", "16", "--lr", "3e-4", "--device", "cpu", "--out", str(tmp_path / "o"),
        "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert set(summary["validation"]) == {"shape"} and summary["config"]["shape"] == [100, 100, 100]
    assert summary["validation"]["shape"]["accuracy"] >= 0.8
    assert not (tmp_path / "o" / "teacher").exists()
    r = CliRunner().invoke(main, [
        "train", "task", "--supernet", str(root / "super"), "--train", str(root / "train.csv"),
        "--text-column", "review", "--label-column", "sentiment", "--shape", "40x3",
        "--steps", "5", "--out", str(tmp_path / "p")])
    assert r.exit_code != 0 and "--steps 0" in r.output


def test_one_shape_distils_a_teacher(trained, tmp_path):
    """--shape --teacher: the plan's shape fine-tuned on the labels and the teacher's outputs."""
    root, _ = trained
    args = ["train", "task", "--supernet", str(root / "super"), "--train", str(root / "train.csv"),
            "--validation", str(root / "val.jsonl"), "--text-column", "review",
            "--label-column", "sentiment", "--shape", "100x3", "--full-steps", "60",
            "--steps", "0", "--seq-len", "16", "--batch-size", "16", "--lr", "3e-4",
            "--device", "cpu", "--json"]
    plain = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "plain")])
    taught = CliRunner().invoke(main, [*args, "--teacher", str(root / "out" / "teacher"),
                                       "--out", str(tmp_path / "taught")])
    assert plain.exit_code == 0 and taught.exit_code == 0, plain.output + taught.output
    a, b = json.loads(plain.stdout), json.loads(taught.stdout)
    assert b["config"]["teacher"] == str(root / "out" / "teacher") and a["config"]["teacher"] is None
    assert set(b["validation"]) == {"shape", "teacher"} and set(a["validation"]) == {"shape"}
    assert b["validation"]["shape"]["accuracy"] >= 0.8
    assert a["weights_sha256"] != b["weights_sha256"]  # same seed and batches: the teacher's loss
    # a network without this task's head, and a teacher without --shape, are refused in one line
    r = CliRunner().invoke(main, [*args, "--teacher", str(root / "super"),
                                  "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "is not a network of this task" in r.output
    assert len(r.output.strip().splitlines()) == 1
    no_shape = [a for a in args if a not in ("--shape", "100x3")]
    r = CliRunner().invoke(main, [*no_shape, "--teacher", str(root / "out" / "teacher"),
                                  "--out", str(tmp_path / "bad2")])
    assert r.exit_code != 0 and "--teacher goes with --shape" in r.output


def test_layer_outputs_distilled_bring_a_slice_closer_to_the_teacher(trained, tmp_path):
    """--layer-loss: every shape also learns the teacher's layer outputs (DynaBERT's hidden-state
    loss). Same seed, batches and teacher: the slice's layers end nearer the teacher's than when
    it distils logits only."""
    from shaper_deploy.training.task import _layer_loss, _outputs

    root, _ = trained
    train = read_task_data(root / "train.csv", **COLS)
    cols = ("review", "", "sentiment")
    base = TaskConfig(full_steps=20, steps=20, batch_size=16, seq_len=16, lr=1e-3, device="cpu",
                      checkpoint_every=1000)
    for weight in (0.0, 1.0):
        train_task(root / "super", train, replace(base, layer_loss=weight),
                   tmp_path / str(weight), columns=cols)
    teacher = load_supernet(tmp_path / "0.0" / "teacher").eval()
    other = load_supernet(tmp_path / "1.0" / "teacher").state_dict()
    assert all(torch.equal(v, other[k]) for k, v in teacher.state_dict().items())  # one phase 1
    val = encode(read_task_data(root / "val.jsonl", **COLS), teacher, teacher.config.task_head, 16)
    batch = {k: v[:64] for k, v in val.inputs.items()}
    half = Shape((60,) * 3, PLAN_SPACE)
    with torch.no_grad():
        _, target = _outputs(teacher, batch, None, True)
        assert float(_layer_loss(target, target)) == 0.0
        gaps = {w: float(_layer_loss(_outputs(load_supernet(tmp_path / w / "supernet").eval(),
                                              batch, half, True)[1], target))
                for w in ("0.0", "1.0")}
    assert gaps["1.0"] < 0.8 * gaps["0.0"], gaps
    with pytest.raises(TrainingError, match="--layer-loss must be a finite number >= 0"):
        replace(base, layer_loss=-1.0)
    r = CliRunner().invoke(main, ["train", "task", "--supernet", str(root / "super"), "--train",
                                  str(root / "train.csv"), "--layer-loss", "nan",
                                  "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "--layer-loss must be a finite number >= 0, got nan" in r.output


def test_the_sandwich_phase_has_its_own_peak_learning_rate():
    """Phase 2 on the same warmup-then-decay schedule at --sandwich-lr, by default 4 x --lr
    capped at 2e-4 and never below --lr (so the tests' tiny BERT at 3e-4 keeps its rate)."""
    from shaper_deploy.training.task import lr_factor

    config = TaskConfig(full_steps=40, steps=60, lr=5e-5)
    assert config.sandwich_lr == pytest.approx(2e-4)  # resolved: train.json records it
    assert TaskConfig(lr=2e-5).sandwich_lr == pytest.approx(8e-5)  # 4 x
    assert TaskConfig(lr=3e-4).sandwich_lr == pytest.approx(3e-4)  # never below --lr
    assert TaskConfig(full_steps=5, steps=0, shape=(60, 60, 60)).sandwich_lr is None
    same = replace(config, sandwich_lr=5e-5)
    assert lr_factor(same, 0) == pytest.approx(1 / 5)  # warmup: 5 steps of 100
    assert lr_factor(same, 39) == pytest.approx(61 / 95)
    assert [lr_factor(config, s) for s in range(40)] == [lr_factor(same, s) for s in range(40)]
    for s in (40, 70, 99):
        assert lr_factor(config, s) == pytest.approx(4 * lr_factor(same, s))
        assert lr_factor(config, s) > 0
    with pytest.raises(TrainingError, match="--sandwich-lr must be a finite number in"):
        replace(config, sandwich_lr=0.0)
    with pytest.raises(TrainingError, match="--sandwich-lr is the sandwich phase's"):
        TaskConfig(full_steps=5, steps=0, shape=(60, 60, 60), sandwich_lr=1e-4)


def test_a_quality_predictor_of_task_accuracy_and_a_search_by_it(trained, tmp_path):
    """``train quality --metric task``: each sampled shape's accuracy on the labelled file in
    PyTorch, as export --eval screens shapes (judge.screen); search then maximizes the
    predicted accuracy. A network without a task head is refused in one line."""
    from shaper_deploy.judge import make_judge
    from shaper_deploy.templates import sample_shapes

    root, _ = trained
    runner = CliRunner()
    r = runner.invoke(main, ["train", "quality", "--supernet", str(root / "out" / "supernet"),
                             "--data", str(root / "val.jsonl"), "--metric", "task",
                             "--samples", "16", "--seq-len", "16", "--out", str(tmp_path / "q"),
                             "--json"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    assert meta["metric"] == "task" and meta["higher_is_better"] is True
    assert meta["measured_on"] == (f"accuracy on {root / 'val.jsonl'}, the first 120 of 120 "
                                   "rows at 16 tokens, PyTorch fp32")
    measured = json.loads((tmp_path / "q" / "measurements.json").read_text())
    net = load_supernet(root / "out" / "supernet")
    judge = make_judge(net, "text-classification", None, 16,
                       read_task_data(root / "val.jsonl", **COLS))
    shape = sample_shapes(PLAN_SPACE, 16, 0)[3]  # what the command sampled, in order
    assert measured[3]["shape"] == list(shape.widths)
    assert measured[3]["task"] == pytest.approx(judge.screen(net, shape))
    assert max(m["task"] for m in measured) >= 0.85  # the large shapes classify
    r = runner.invoke(main, ["search", "--supernet", str(root / "out" / "supernet"),
                             "--quality-predictor", str(tmp_path / "q"), "--iterations", "3"])
    assert r.exit_code == 0, r.output
    assert f"predicted accuracy on {root / 'val.jsonl'} " in r.stdout
    r = runner.invoke(main, ["train", "quality", "--supernet", str(root / "super"), "--data",
                             str(root / "val.jsonl"), "--metric", "task", "--out",
                             str(tmp_path / "q2")])
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"Error: --metric task needs a task super network (shaperctl train task); "
        f"{root / 'super'} has no task head")
    # held-out data is read with the network's own columns, named as such, and its option
    (tmp_path / "cols.csv").write_text("text,label\nthe model is fast,fresh\n")
    (tmp_path / "one.csv").write_text("review,sentiment\nthe model is fast,great\n")
    quality = ["train", "quality", "--supernet", str(root / "out" / "supernet"), "--metric",
               "task", "--out", str(tmp_path / "q3"), "--data"]
    r = runner.invoke(main, quality + [str(tmp_path / "cols.csv")])
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"Error: {tmp_path / 'cols.csv'} has no column 'review'; its columns: text, label (task "
        f"network {root / 'out' / 'supernet'} reads the columns it was trained on, review, "
        "sentiment: name the file's so)")
    r = runner.invoke(main, quality + [str(tmp_path / "one.csv")])  # one label is no error
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"Error: --data file {tmp_path / 'one.csv'} has label(s) great that the training data "
        "does not; allowed: fresh, rotten")
