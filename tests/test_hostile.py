"""The hostile-input sweep (issue 24): every case fails closed with one line, a non-zero exit,
nothing left behind and nothing outside an artifact read. Hostile files are built in code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from shaper_deploy.cli.main import main



@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny super network with a tokenizer and its int8 bundle ``b`` (24x3)."""
    from .conftest import randomize, tiny_tokenizer_json, TINY_SPACE
    from shaper_deploy.supernet import SuperBert, SuperConfig, save_supernet

    root = tmp_path_factory.mktemp("hostile")
    sup = randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=True))).eval()
    sup.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    save_supernet(sup, root / "sup")
    r = CliRunner().invoke(main, ["export", "--supernet", str(root / "sup"), "--shape", "24x3",
                                  "--int8", "--out", str(root / "b")])
    assert r.exit_code == 0, r.output
    return root


def fails(*args, expect: str = "", code: int | None = None, input=None):
    """Run shaperctl; it must exit non-zero through its own error path with one Error line."""
    r = CliRunner().invoke(main, [str(a) for a in args], input=input)
    assert r.exit_code != 0, f"exit 0: {r.output}"
    assert isinstance(r.exception, SystemExit), f"traceback: {r.exception!r}"
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.output
    assert expect.lower() in errors[0].lower(), errors[0]
    if code is not None:
        assert r.exit_code == code
    return errors[0]


def ok(*args):
    r = CliRunner().invoke(main, [str(a) for a in args])
    assert r.exit_code == 0, r.output + r.stderr
    return r


def copy_bundle(world: Path, tmp_path: Path, name: str = "b") -> Path:
    dst = tmp_path / name
    shutil.copytree(world / "b", dst, symlinks=True)
    return dst


def edit(file: Path, change) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


# --- verification that could be bypassed -------------------------------------------------------

def test_triton_refuses_a_symlink_and_an_altered_tokenizer(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    (b / "vocab.txt").symlink_to("/etc/passwd")
    fails("triton", b, "--out", tmp_path / "r", expect="vocab.txt")
    assert not (tmp_path / "r").exists()
    (b / "vocab.txt").unlink()
    (b / "tokenizer.json").write_text("{}")
    fails("triton", b, "--out", tmp_path / "r", expect="tokenizer.json")
    assert not (tmp_path / "r").exists()


def test_a_file_removed_from_the_manifest_is_refused(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    edit(b / "shaper.json", lambda d: d["files"].pop("tokenizer.json"))
    fails("run", b, "the model", expect="tokenizer.json")
    b = copy_bundle(world, tmp_path, "b2")
    edit(b / "shaper.json", lambda d: d["files"].pop("model.onnx"))
    fails("run", b, "the model", expect="model.onnx")


def test_a_super_network_without_its_weights_checksum_is_refused(world, tmp_path):
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    edit(sup / "config.json", lambda d: d.pop("weights_sha256"))
    fails("export", "--supernet", sup, "--shape", "24x3", "--out", tmp_path / "o",
          expect="weights_sha256")
    assert not (tmp_path / "o").exists()


def test_an_unlisted_external_data_file_is_refused(world, tmp_path):
    import onnx

    b = copy_bundle(world, tmp_path)
    model = onnx.load(str(b / "model.onnx"))
    onnx.save_model(model, str(b / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.onnx.data",
                    size_threshold=0)
    from shaper_deploy.io import sha256_file
    edit(b / "shaper.json", lambda d: d["files"]["model.onnx"].update(
        sha256=sha256_file(b / "model.onnx"), bytes=(b / "model.onnx").stat().st_size))
    fails("run", b, "the model", "--model", "model.onnx", expect="model.onnx.data")


def test_a_finished_profile_is_never_re_signed(tiny_profile, tmp_path):
    prof = tmp_path / "p"
    shutil.copytree(tiny_profile, prof)
    lines = (prof / "measurements.jsonl").read_text().splitlines()
    (prof / "measurements.jsonl").write_text("\n".join(lines[:-1] + [lines[0]]) + "\n")
    fails("profile", "--device", "cpu", "--out", prof, expect="measurements.jsonl")
    assert json.loads((prof / "profile.json").read_text()) == json.loads(
        (tiny_profile / "profile.json").read_text())


def test_damaged_trailing_lines_are_dropped_and_inner_ones_refused(tiny_profile, tmp_path):
    """What a kill -9 (or an append after one) leaves at the end is dropped with a note; a
    damaged line before good ones is an edit, refused."""
    from shaper_deploy.errors import ProfileError
    from shaper_deploy.profiling.folder import read_measurements

    prof = tmp_path / "p"
    shutil.copytree(tiny_profile, prof)
    file = prof / "measurements.jsonl"
    good = read_measurements(prof)
    with open(file, "a") as f:
        f.write('{}\n{"shape": "torn')
    notes = []
    assert read_measurements(prof, repair=True, note=notes.append) == good
    assert len(notes) == 1 and "dropped 2 damaged line(s)" in notes[0], notes
    assert file.read_text() == (tiny_profile / "measurements.jsonl").read_text()
    lines = file.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "batch": "one"})
    file.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProfileError, match="line 2 is damaged"):
        read_measurements(prof)


def test_out_equal_to_or_inside_an_input_is_refused(world, tmp_path, tiny_bert_dir):
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    before = sorted(p.name for p in sup.iterdir())
    fails("export", "--supernet", sup, "--shape", "24x3", "--out", sup, "--force",
          expect="input")
    fails("export", "--supernet", sup, "--shape", "24x3", "--out", sup / "inner",
          expect="input")
    assert sorted(p.name for p in sup.iterdir()) == before
    fails("supernet", "init", "--from-bert", tiny_bert_dir, "--out", tiny_bert_dir, "--force",
          expect="input")
    assert (tiny_bert_dir / "config.json").is_file()
    b = copy_bundle(world, tmp_path)
    fails("triton", b, "--out", b, expect="input")


# --- files that parse but hold the wrong types -------------------------------------------------

BUNDLE_EDITS = {
    "params={}": lambda d: d.update(params={}),
    "files entry a string": lambda d: d["files"].update({"config.json": "abc"}),
    "max_positions abc": lambda d: d["config"]["space"].update(max_positions="abc"),
    "default_model list": lambda d: d.update(default_model=["x"]),
    "outputs foo": lambda d: d.update(outputs=["foo"]),
    "plan x": lambda d: d.update(plan={"x": 1}),
    "shape strings": lambda d: d.update(shape=["a", "b", "c"]),
    "files list": lambda d: d.update(files=[]),
    "inputs wrong": lambda d: d.update(inputs=["input_ids", "nope"]),
    "task unknown": lambda d: d.update(task="summarization"),
    "max_positions huge": lambda d: d["config"]["space"].update(max_positions=10 ** 9),
}


@pytest.mark.parametrize("case", sorted(BUNDLE_EDITS))
def test_wrongly_typed_bundle_manifests(world, tmp_path, case):
    b = copy_bundle(world, tmp_path)
    edit(b / "shaper.json", BUNDLE_EDITS[case])
    fails("run", b, "the model", expect="shaper.json")
    fails("bench", b, "--duration", "0.1", "--seq-len", "8", expect="shaper.json")
    fails("triton", b, "--out", tmp_path / "r", expect="shaper.json")
    assert not (tmp_path / "r").exists()


def test_deeply_nested_json_is_one_line(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    (b / "shaper.json").write_text("[" * 100_000 + "]" * 100_000)
    fails("run", b, "the model", expect="shaper.json")


PROFILE_EDITS = {
    "files list": ("profile.json", lambda d: d.update(files=[])),
    "summary string": ("profile.json", lambda d: d.update(summary="abc")),
    "fingerprint empty": ("profile.json", lambda d: d.update(fingerprint={})),
    "margin string": ("predictor.json", lambda d: d.update(margin="x")),
    "coef empty": ("predictor.json", lambda d: [m.update(coef={}) for m in d["models"].values()]
                   if isinstance(d.get("models"), dict) else d.update(coef={})),
    "metrics empty": ("predictor.json", lambda d: d.update(metrics={})),
}


@pytest.mark.parametrize("case", sorted(PROFILE_EDITS))
def test_wrongly_typed_profiles(tiny_profile, tmp_path, case):
    prof = tmp_path / "p"
    shutil.copytree(tiny_profile, prof)
    name, change = PROFILE_EDITS[case]
    edit(prof / name, change)
    fails("predict", "--profile", prof, "--shape", "32x3", "--seq-len", "16", expect=name)
    fails("profiles", "show", prof, expect=name)


HF_EDITS = {
    "layer_norm_eps abc": lambda d: d.update(layer_norm_eps="abc"),
    "pad_token_id x": lambda d: d.update(pad_token_id="x"),
    "vocab_size 1e12": lambda d: d.update(vocab_size=10 ** 12),
    "num_hidden_layers 6000": lambda d: d.update(num_hidden_layers=6000),
    "hidden_act list": lambda d: d.update(hidden_act=["gelu"]),
}


@pytest.mark.parametrize("case", sorted(HF_EDITS))
def test_wrongly_typed_hugging_face_configs(tiny_bert_dir, tmp_path, case):
    edit(tiny_bert_dir / "config.json", HF_EDITS[case])
    fails("supernet", "init", "--from-bert", tiny_bert_dir, "--out", tmp_path / "s",
          expect="config.json")
    assert not (tmp_path / "s").exists()


def test_wrongly_sized_super_network_configs(world, tmp_path, tiny_bert_dir):
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    edit(sup / "config.json", lambda d: d["config"]["space"].update(num_layers=6000))
    fails("supernet", "info", sup, expect="num_layers")
    # a SuperShaper repository checkpoint whose safetensors header is the JSON number 123
    edit(tiny_bert_dir / "config.json", lambda d: d.update(mixing="bert-bottleneck"))
    (tiny_bert_dir / "model.safetensors").write_bytes((3).to_bytes(8, "little") + b"123")
    fails("supernet", "info", tiny_bert_dir, "--widths", "16,32,48", expect="model.safetensors")
    fails("export", "--supernet", tiny_bert_dir, "--widths", "16,32,48", "--shape", "16x3",
          "--out", tmp_path / "o", expect="model.safetensors")
    assert not (tmp_path / "o").exists()


def test_damaged_quality_predictors(world, tmp_path):
    pytest.importorskip("xgboost")
    from shaper_deploy.training.quality import QualityPredictor, fit_quality
    from shaper_deploy.shape import Shape
    from .conftest import TINY_SPACE, random_shapes

    shapes = random_shapes(TINY_SPACE, 12)
    pred = fit_quality(shapes, [0.5 + 0.01 * i for i in range(len(shapes))], "cosine")
    pred.save(tmp_path / "q")
    other = fit_quality(shapes, [0.9 - 0.01 * i for i in range(len(shapes))], "cosine")
    other.save(tmp_path / "other")  # a whole, readable booster, but not this predictor's
    swapped = (tmp_path / "other" / "quality.ubj").read_bytes()
    for name, damage in (("quality.json", lambda f: f.write_text(f.read_text()[:20])),
                         ("quality.json", lambda f: f.write_text("{}")),
                         ("quality.ubj", lambda f: f.write_bytes(f.read_bytes()[:30])),
                         ("quality.ubj", lambda f: f.write_bytes(swapped))):
        q = tmp_path / f"q-{name}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tmp_path / "q", q)
        damage(q / name)
        with pytest.raises(Exception) as exc:
            QualityPredictor.load(q)
        from shaper_deploy.errors import ShaperError
        assert isinstance(exc.value, ShaperError), repr(exc.value)
        assert name in str(exc.value)
    assert Shape  # imported for the helper's types


# --- unbounded inputs --------------------------------------------------------------------------

def test_unbounded_numbers_are_refused_up_front(world, tmp_path):
    b = world / "b"
    fails("bench", b, "--batch", "100000000", "--seq-len", "16", expect="batch")
    fails("bench", b, "--threads", "1099511627776", "--duration", "0.1", expect="threads")
    fails("triton", b, "--out", tmp_path / "r", "--max-batch", "1099511627776",
          expect="max-batch")
    fails("triton", b, "--out", tmp_path / "r", "--instances", "1099511627776",
          expect="instances")
    fails("triton", b, "--out", tmp_path / "r", "--threads", "1099511627776", expect="threads")
    assert not (tmp_path / "r").exists()
    fails("params", "--shape", "360x999999999999999", expect="layers")
    fails("params", "--shape", "[" * 100_000, expect="shape")
    fails("params", "--shape", ",".join(["360"] * 100), expect="12 layers")
    fails("export", "--supernet", world / "sup", "--params", "1" + "0" * 400,
          "--out", tmp_path / "o", expect="parameter count")
    assert not (tmp_path / "o").exists()


def test_unbounded_text_files_are_refused(world, tmp_path):
    b = world / "b"
    fails("run", b, "--file", "/dev/zero", expect="/dev/zero")
    many = tmp_path / "many.txt"
    many.write_text("the model\n" * 20_000)
    fails("run", b, "--file", many, "--compare", b, expect="texts")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fails("run", b, "--file", fifo, expect="fifo")
    for device in (fifo, "/dev/zero"):  # the texts int8 is judged on, read before any export
        fails("export", "--supernet", world / "sup", "--shape", "24x3", "--int8",
              "--calibration", device, "--out", tmp_path / "c", expect="not a regular file")
        assert not (tmp_path / "c").exists()
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    (sup / "config.json").unlink()
    os.mkfifo(sup / "config.json")
    fails("supernet", "info", sup, expect="config.json")


def test_one_text_per_line_files_are_read_one_way(tmp_path):
    """Calibration, request (run --file, bench --texts) and training files share one reader:
    a byte-order mark and blank lines dropped, bad UTF-8 refused unless the caller is lossy."""
    from shaper_deploy.errors import DataError
    from shaper_deploy.io import read_lines

    f = tmp_path / "t.txt"
    f.write_bytes("\ufeff first text \r\n\n  \nsecond\n".encode())
    assert read_lines(f, 1000, "text file", DataError) == ["first text", "second"]
    f.write_bytes(b"caf\xe9\nok\n")
    with pytest.raises(DataError, match=r"^text file .* is not UTF-8 text \(byte 3\)"):
        read_lines(f, 1000, "text file", DataError)
    assert read_lines(f, 1000, "text file", DataError, lossy=True) == ["caf\ufffd", "ok"]
    f.write_text("\n \n")
    with pytest.raises(DataError, match="has no text; give one text per line"):
        read_lines(f, 1000, "text file", DataError)
    assert read_lines(f, 1000, "text file", DataError, empty_ok=True) == []


def test_oversized_texts_and_threads_are_refused(world, tmp_path):
    long = tmp_path / "long.txt"
    long.write_text("the " * 30_000 + "\n")
    fails("run", world / "b", "--file", long, expect="characters; at most 100,000")
    fails("bench", world / "b", "--concurrency", "100000", "--seq-len", "8", expect="concurrency")
    fails("profile", "--device", "cpu", "--supernet", world / "sup", "--threads",
          "1099511627776", "--out", tmp_path / "p", expect="--threads")
    assert not (tmp_path / "p").exists()


def test_training_data_from_a_device_is_refused(world, tmp_path):
    fails("train", "supernet", "--supernet", world / "sup", "--data", "/dev/zero", "--steps",
          "1", "--seq-len", "32", "--out", tmp_path / "t", expect="/dev/zero")
    assert not (tmp_path / "t").exists()


# --- left behind or the wrong exit -------------------------------------------------------------

def test_a_bad_profile_leaves_no_bundle(world, tmp_path):
    fails("export", "--supernet", world / "sup", "--shape", "24x3", "--profile",
          tmp_path / "nope", "--out", tmp_path / "o", expect="nope")
    assert sorted(tmp_path.iterdir()) == []


def test_a_failed_multi_bundle_triton_leaves_nothing(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    bad = copy_bundle(world, tmp_path, "bad")
    data = bytearray((bad / "model_quantized.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model_quantized.onnx").write_bytes(bytes(data))
    fails("triton", b, bad, "--out", tmp_path / "r", expect="bad")
    assert not (tmp_path / "r").exists()
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep").write_text("x")
    fails("triton", b, bad, "--out", tmp_path / "r", expect="bad")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["keep"]


def test_non_finite_learning_rates_are_refused(world, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the model is fast on device\n" * 50)
    for lr in ("inf", "nan", "-1"):
        fails("train", "supernet", "--supernet", world / "sup", "--data", data, "--steps", "3",
              "--seq-len", "32", "--lr", lr, "--out", tmp_path / "t", expect="--lr")
    assert not (tmp_path / "t").exists()


def test_quality_seq_len_beyond_the_positions_is_refused(world, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("the model is fast on device\n" * 50)
    fails("train", "quality", "--supernet", world / "sup", "--data", data, "--seq-len", "200",
          "--samples", "4", "--out", tmp_path / "q", expect="seq-len")


def test_graph_limits_are_checked_before_running(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    edit(b / "shaper.json", lambda d: d["config"]["space"].update(max_positions=100))
    fails("run", b, "the model " * 80, expect="max_positions")
    b = copy_bundle(world, tmp_path, "b2")
    tok = json.loads((b / "tokenizer.json").read_text())
    tok["model"]["vocab"]["fast"] = 5000
    (b / "tokenizer.json").write_text(json.dumps(tok))
    from shaper_deploy.io import sha256_file
    edit(b / "shaper.json", lambda d: d["files"]["tokenizer.json"].update(
        sha256=sha256_file(b / "tokenizer.json"), bytes=(b / "tokenizer.json").stat().st_size))
    fails("run", b, "the model is fast", expect="vocabulary")


def test_a_non_utf8_tokenizer_is_refused_at_export(world, tmp_path):
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    (sup / "tokenizer.json").write_bytes(b"\xff\xfe" + (sup / "tokenizer.json").read_bytes())
    cfg = json.loads((sup / "config.json").read_text())
    if "tokenizer_sha256" in json.dumps(cfg):
        pass  # a recorded checksum refuses it first; either line names the file
    for extra in ([], ["--int8"]):
        fails("export", "--supernet", sup, "--shape", "24x3", *extra, "--out", tmp_path / "o",
              expect="tokenizer.json")
        assert not (tmp_path / "o").exists()


def test_the_lock_is_released_before_its_file_goes(tmp_path):
    """A second writer that opened the old lock file must not hold it beside a newcomer."""
    from filelock import FileLock, Timeout

    from shaper_deploy.io import output_lock

    dest = tmp_path / "o"
    lock_file = tmp_path / ".o.lock"
    with output_lock(dest):
        waiting = FileLock(str(lock_file), timeout=0)
        with pytest.raises(Timeout):
            waiting.acquire()
    # after the block: the file is kept (or gone) but nobody holds it
    with output_lock(dest):
        pass
    assert not list(tmp_path.glob(".o.*.tmp"))


def test_cleanup_on_sigterm(world, tmp_path):
    """SIGTERM mid-export: no temporary folder, lock or system temp folder is left."""
    import signal
    import subprocess
    import sys
    import time

    tmp = tmp_path / "systmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "shaper_deploy.cli.main", "export",
                             "--supernet", str(world / "sup"), "--shape", "24x3", "--int8",
                             "--out", str(tmp_path / "o")], env=env, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".o.*")):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["systmp"], err
    # onnxruntime's import writes a session-id file (.ses) there; no folder of ours stays
    assert [p.name for p in tmp.iterdir() if p.is_dir()] == [], err


# --- every field of every manifest, given a value of the wrong kind ----------------------------

WRONG_VALUES = {"string": "abc", "list": ["x"], "object": {"x": 1}, "null": None,
                "negative": -1, "huge": 10 ** 30, "bool": True}


def _paths(data, prefix=()):
    """Every key path of nested JSON objects (lists are leaves)."""
    for key, value in data.items():
        yield prefix + (key,)
        if isinstance(value, dict) and len(prefix) < 3:
            yield from _paths(value, prefix + (key,))


def _set(data, path, value):
    for key in path[:-1]:
        data = data[key]
    data[path[-1]] = value


def _sweep(folder: Path, name: str, command, tmp_path: Path):
    """Each field set to each wrong kind: the command succeeds or fails in one line; never a
    traceback. Returns how many cases ran and how many were refused."""
    original = (folder / name).read_text()
    paths = list(_paths(json.loads(original)))
    ran = refused = 0
    for path in paths:
        for kind, value in WRONG_VALUES.items():
            data = json.loads(original)
            if data_at(data, path) == value:
                continue
            _set(data, path, value)
            (folder / name).write_text(json.dumps(data))
            r = CliRunner().invoke(main, [str(a) for a in command])
            where = f"{name} {'.'.join(map(str, path))} = {kind}"
            assert isinstance(r.exception, (SystemExit, type(None))), f"{where}: {r.exception!r}"
            if r.exit_code:
                errors = [x for x in r.stderr.splitlines() if x.startswith("Error")]
                assert len(errors) == 1, f"{where}: {r.stderr}"
                refused += 1
            ran += 1
    (folder / name).write_text(original)
    return ran, refused


def data_at(data, path):
    for key in path:
        data = data[key]
    return data


def test_every_bundle_field_of_the_wrong_kind(world, tmp_path):
    b = copy_bundle(world, tmp_path)
    ran, refused = _sweep(b, "shaper.json", ["run", b, "the model", "--json"], tmp_path)
    assert ran > 200 and refused > ran // 2, (ran, refused)


def test_every_profile_field_of_the_wrong_kind(tiny_profile, tmp_path):
    prof = tmp_path / "p"
    shutil.copytree(tiny_profile, prof)
    command = ["predict", "--profile", prof, "--shape", "32x3", "--seq-len", "16",
               "--allow-unreliable", "--json"]
    for name in ("profile.json", "predictor.json"):
        ran, refused = _sweep(prof, name, command, tmp_path)
        assert ran > 50 and refused > ran // 2, (name, ran, refused)


def test_every_super_network_field_of_the_wrong_kind(world, tmp_path):
    sup = tmp_path / "sup"
    shutil.copytree(world / "sup", sup)
    ran, refused = _sweep(sup, "config.json", ["supernet", "info", sup, "--json"], tmp_path)
    assert ran > 50 and refused > ran // 2, (ran, refused)
