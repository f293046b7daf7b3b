import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.supernet import save_supernet


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args, ok=True):
        result = runner.invoke(main, [str(a) for a in args], prog_name="shaperctl")
        if ok:
            assert result.exit_code == 0, result.output + result.stderr
        else:
            assert result.exit_code != 0, result.output
        return result
    return invoke


def test_params_human_and_json(run):
    shape = "120,120,240,240,360,360,360,480,540,540,600,768"
    out = run("params", "--shape", shape).stdout
    assert "64,212,768" in out and "68,846,640" in out
    data = json.loads(run("params", "--shape", shape, "--json").stdout)
    assert data["params_fused"] == 64_212_768 and data["params_unfused"] == 68_846_640
    assert data["shape"] == [int(w) for w in shape.split(",")]
    from shaper_deploy.shape import flops
    assert data["flops"] == flops(data["shape"], seq_len=data["seq_len"]) > 10**9  # a 64M BERT


def test_params_bad_shape_is_one_line(run):
    result = run("params", "--shape", "360x11,350", ok=False)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: layer 12 width 350 is not divisible by the 12 attention heads; "
                     "allowed widths: 120, 240, 360, 480, 540, 600, 768"]
    assert result.stdout == ""


@pytest.mark.parametrize("args, line", [
    (["params", "--shape", "120x12", "--batch", "1"],
     "Error: No such option '--batch'. See 'shaperctl params --help'."),
    (["predict", "--profile", "p", "--shape", "384x6", "--seq-len", "0"],
     "Error: Invalid value for '--seq-len': 0 is not in the range x>=1. "
     "See 'shaperctl predict --help'."),
    (["train", "supernet", "--out", "x"],
     "Error: Missing option '--supernet'. See 'shaperctl train supernet --help'."),
    (["profiles", "nosuch"], "Error: No such command 'nosuch'. See 'shaperctl profiles --help'."),
    (["--nosuch"], "Error: No such option '--nosuch'. See 'shaperctl --help'."),
])
def test_usage_errors_are_one_line(run, args, line):
    """A usage error is one line and exit 2, as every other error is one line, where click
    prints the usage, a hint and the error on three."""
    result = run(*args, "--json", ok=False)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [line]


def test_supernet_init_info_and_params(run, tiny_bert_dir, tmp_path):
    out = tmp_path / "super"
    result = run("supernet", "init", "--from-bert", tiny_bert_dir, "--out", out, "--json")
    data = json.loads(result.stdout)
    assert data["design_space"]["widths"] == [8, 16, 24, 32, 36, 48]
    assert data["num_shapes"] == 6 ** 3
    assert "wrote" in result.stderr
    info = json.loads(run("supernet", "info", out, "--json").stdout)
    assert info["params_min"] < info["params_max"] == data["params_max"]
    assert info["config"]["pooler"] is True
    human = run("supernet", "info", out).stdout
    assert "3 layers, D=48, 4 heads" in human
    p = json.loads(run("params", "--shape", "8,16,48", "--supernet", out, "--json").stdout)
    assert p["shape"] == [8, 16, 48]
    bad = run("params", "--shape", "8x2", "--supernet", out, ok=False)
    assert "shape has 2 widths but the design space has 3 layers" in bad.stderr


def test_supernet_init_custom_widths_and_errors(run, tiny_bert_dir, tmp_path):
    out = tmp_path / "super"
    data = json.loads(run("supernet", "init", "--from-bert", tiny_bert_dir, "--out", out,
                          "--widths", "16,32,48", "--json").stdout)
    assert data["design_space"]["widths"] == [16, 32, 48]
    again = run("supernet", "init", "--from-bert", tiny_bert_dir, "--out", out, ok=False)
    assert "already exists" in again.stderr
    bad = run("supernet", "init", "--from-bert", tiny_bert_dir, "--out", tmp_path / "x",
              "--widths", "16,30", ok=False)
    assert "width 30 is not divisible by the 4 attention heads" in bad.stderr
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "super"]
    junk = run("supernet", "init", "--from-bert", tiny_bert_dir, "--out", tmp_path / "y",
               "--widths", "a,b", ok=False)
    assert "not a comma-separated list of integers" in junk.stderr


def test_info_on_a_plain_bert_points_to_init(run, tiny_bert_dir):
    result = run("supernet", "info", tiny_bert_dir, ok=False)
    assert "shaperctl supernet init --from-hf" in result.stderr


def test_unwritable_output(run, tiny_bert_dir, tmp_path):
    # A parent that is a file cannot hold a folder, whoever runs the test (root included).
    (tmp_path / "a-file").write_text("x")
    result = run("supernet", "init", "--from-bert", tiny_bert_dir,
                 "--out", tmp_path / "a-file" / "super", ok=False)
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot write to {tmp_path / 'a-file' / 'super'}: "
        f"{tmp_path / 'a-file'} is a file, not a folder"]


def test_every_command_has_help_with_an_example(run):
    for args in (["supernet", "init"], ["supernet", "info"], ["params"]):
        assert "Example:" in run(*args, "--help").stdout


def test_cli_reference_in_docs_is_current():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_cli_docs", root / "scripts" / "gen_cli_docs.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    import difflib

    stale = list(difflib.unified_diff((root / "docs" / "cli.md").read_text().splitlines(),
                                      gen.render().splitlines(), lineterm="", n=0))
    assert not stale, ("docs/cli.md is stale: run .venv/bin/python scripts/gen_cli_docs.py\n"
                       + "\n".join(stale[:12]))


def test_every_command_has_an_example():
    import click

    from shaper_deploy.cli.main import main as root

    def walk(cmd, path):
        if isinstance(cmd, click.Group):
            for name in cmd.list_commands(click.Context(cmd)):
                yield from walk(cmd.get_command(click.Context(cmd), name), path + [name])
        else:
            yield path, cmd
    for path, cmd in walk(root, []):
        assert "Example" in (cmd.help or ""), f"shaperctl {' '.join(path)} has no example"


def _loaded_after(imports: str, watched: str) -> list[str]:
    """The modules of ``watched`` (an expression over ``sys.modules``) that a fresh
    interpreter has loaded after running ``imports``."""
    import subprocess
    import sys

    code = f"import sys\n{imports}\nprint([m for m in {watched}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return eval(out.stdout)


def test_the_deploy_path_never_imports_training():
    assert _loaded_after(
        "import shaper_deploy.planner, shaper_deploy.serving, shaper_deploy.export\n"
        "import shaper_deploy.cli.main",
        "sys.modules if m.startswith('shaper_deploy.training')") == []


def test_measuring_and_serving_never_import_torch():
    """Profiles, predictions, the int8 quantizer, fidelity, bench and Triton: no torch."""
    assert _loaded_after(
        "import shaper_deploy.profiling.profile, shaper_deploy.profiling.predictor\n"
        "import shaper_deploy.profiling.transfer, shaper_deploy.quantize\n"
        "import shaper_deploy.fidelity, shaper_deploy.serving, shaper_deploy.triton\n"
        "import shaper_deploy.cli.main",
        "('torch', 'transformers') if m in sys.modules") == []


def test_a_budget_is_read_without_numpy_or_torch():
    """promise.py (the percentile, the budget as given) loads neither: the CLI declares and
    reads its options before any heavy import."""
    assert _loaded_after(
        "from shaper_deploy.promise import parse_budget\n"
        "assert parse_budget('80%').relative and parse_budget('20ms').value == 20.0",
        "('numpy', 'torch', 'onnxruntime') if m in sys.modules") == []


def test_a_second_writer_of_the_same_output_fails_at_once(tmp_path, tiny_supernet):
    """Every command that writes an output holds an exclusive lock on it (filelock)."""
    from click.testing import CliRunner
    from filelock import FileLock

    from shaper_deploy.cli.main import main

    save_supernet(tiny_supernet, tmp_path / "super")
    out = tmp_path / "bundle"
    with FileLock(str(tmp_path / ".bundle.lock")):  # what a running export holds
        r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                      "--shape", "16,36,8", "--out", str(out)])
        assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1
        assert "is being written by another shaperctl process" in r.stderr
        p = CliRunner().invoke(main, ["profile", "--device", "cpu", "--out", str(out)])
        assert p.exit_code == 1 and "being written by another shaperctl process" in p.stderr
    assert not out.exists()
    r = CliRunner().invoke(main, ["export", "--supernet", str(tmp_path / "super"),
                                  "--shape", "16,36,8", "--out", str(out)])
    assert r.exit_code == 0, r.output  # the lock is released with its holder


def test_operating_system_errors_are_one_line(tmp_path, tiny_supernet):
    """A name the file system refuses (over 255 bytes) and a path that cannot be replaced."""
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    save_supernet(tiny_supernet, tmp_path / "super")
    runner = CliRunner()
    long = tmp_path / ("x" * 300)
    r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                             "16,36,8", "--out", str(long)])
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "File name too long" in r.stderr and "Traceback" not in r.output
    assert list(tmp_path.iterdir()) == [tmp_path / "super"]
    r = runner.invoke(main, ["supernet", "init", "--from-bert", str(tmp_path / "super"),
                             "--out", "/proc/version", "--force"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    if Path("/proc/self").is_dir():  # a folder that takes no new files: not "another process"
        r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                                 "16,36,8", "--out", "/proc/shaper-out"])
        assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
            "Error: cannot lock /proc/shaper-out: cannot create .shaper-out.lock in /proc "
            "(No such file or directory); choose an output in a writable folder"], r.stderr


def test_bad_serving_inputs_are_one_line(tmp_path, tiny_supernet_with_tokenizer):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main
    from shaper_deploy.export import export_bundle
    from shaper_deploy.shape import Shape

    from .conftest import TINY_SPACE

    export_bundle(tiny_supernet_with_tokenizer, Shape((16, 36, 8), TINY_SPACE), tmp_path / "b")
    runner = CliRunner()
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("\n  \n")
    cases = [
        (["run", str(tmp_path / "b"), "--file", str(tmp_path / "latin1.txt")], "is not UTF-8 text"),
        (["run", str(tmp_path / "b"), "--file", str(tmp_path / "empty.txt")], "has no text"),
        (["run", str(tmp_path / "b"), "x", "--max-length", "0"], "0 is not in the range x>=2"),
        (["bench", str(tmp_path / "b"), "--duration", "nan"], "nan is not a number of seconds"),
        (["bench", str(tmp_path / "b"), "--duration", "inf"], "inf is not in the range"),
        (["bench", str(tmp_path / "b"), "--threads", "0"], "0 is not in the range x>=1"),
    ]
    for args, message in cases:
        r = runner.invoke(main, args)
        assert r.exit_code == 2 and message in r.stderr, (args, r.stderr)
    (tmp_path / "shape.json").write_bytes(b"\xff\xfe[16, 36, 8]")
    r = runner.invoke(main, ["params", "--shape", str(tmp_path / "shape.json")])
    assert r.exit_code == 1 and "is not UTF-8 JSON" in r.stderr


def test_damaged_super_network_configs_are_refused_by_name(tmp_path, tiny_supernet):
    """A missing or mistyped field is damage: never filled with BERT-base defaults."""
    import json as _json

    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    save_supernet(tiny_supernet, tmp_path / "s")
    config = _json.loads((tmp_path / "s" / "config.json").read_text())
    runner = CliRunner()
    cases = [({k: v for k, v in config.items() if k != "config"}, "config: Field required"),
             ({**config, "config": {**config["config"],
                                    "space": {**config["config"]["space"], "widths": "12,24"}}},
              "config.json is malformed: space.widths: Input should be a valid array"),
             ({**config, "config": {k: v for k, v in config["config"].items()
                                    if k != "hidden_act"}},
              "config.json lacks field(s) hidden_act")]
    for damaged, message in cases:
        (tmp_path / "s" / "config.json").write_text(_json.dumps(damaged))
        r = runner.invoke(main, ["supernet", "info", str(tmp_path / "s")])
        assert r.exit_code == 1 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(main, ["params", "--shape", "[true, 48, 48, 48]"])
    assert r.exit_code == 1 and "must hold a list of integer widths" in r.stderr
    (tmp_path / "x.json").mkdir()
    r = runner.invoke(main, ["params", "--shape", str(tmp_path / "x.json")])
    assert r.exit_code == 1 and "is a folder, not a JSON file" in r.stderr


def test_no_leftovers_from_failed_or_killed_writers(tmp_path, tiny_supernet):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    save_supernet(tiny_supernet, tmp_path / "super")
    runner = CliRunner()
    # A failed export into new nested folders leaves none of them.
    r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                             "35,36,8", "--out", str(tmp_path / "a" / "b" / "bundle")])
    assert r.exit_code == 1 and not (tmp_path / "a").exists()
    # What a SIGKILLed writer of "bundle" left is removed by the next writer holding its lock;
    # look-alikes of other outputs are not.
    stale = [tmp_path / ".bundle.abcd_123.tmp", tmp_path / ".bundle.zz99zz99",
             tmp_path / ".bundle.q1w2e3r4.tmp.old"]
    kept = [tmp_path / ".bundle.x.abcd_123.tmp", tmp_path / ".bundle.short"]
    for d in stale + kept:
        d.mkdir()
        (d / "model.onnx").write_bytes(b"x" * 100)
    r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                             "16,36,8", "--out", str(tmp_path / "bundle")])
    assert r.exit_code == 0, r.output
    assert not any(d.exists() for d in stale) and all(d.exists() for d in kept)


def test_disk_full_is_one_line_and_leaves_nothing(tmp_path, tiny_supernet, tiny_bert_dir):
    """A 128 KB tmpfs (needs root; skipped elsewhere): an export (~320 KB) and a super
    network (~330 KB) cannot fit. One error line, no traceback, nothing left behind."""
    import os
    import subprocess

    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        save_supernet(tiny_supernet, tmp_path / "super")
        runner = CliRunner()
        for args in (["export", "--supernet", str(tmp_path / "super"), "--shape", "48,48,48",
                      "--out", str(small / "b")],
                     ["supernet", "init", "--from-bert", str(tiny_bert_dir), "--out",
                      str(small / "s")]):
            r = runner.invoke(main, args)
            assert r.exit_code == 1, r.output
            errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
            assert len(errors) == 1 and "Traceback" not in r.output, r.stderr
            assert "No space left on device" in errors[0] or "space" in errors[0], errors[0]
            assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_more_one_line_refusals(tmp_path, tiny_supernet, tiny_supernet_with_tokenizer,
                                monkeypatch):
    from click.testing import CliRunner

    import shaper_deploy.training.sandwich as sandwich
    from shaper_deploy.cli.main import main
    from shaper_deploy.export import export_bundle
    from shaper_deploy.shape import DesignSpace, Shape
    from shaper_deploy.supernet import SuperBert, SuperConfig

    from .conftest import TINY_SPACE, randomize, tiny_tokenizer_json

    runner = CliRunner()
    save_supernet(tiny_supernet, tmp_path / "super")
    # --out . --force: the working folder cannot be replaced.
    monkeypatch.chdir(tmp_path / "super")
    r = runner.invoke(main, ["export", "--supernet", str(tmp_path / "super"), "--shape",
                             "16,36,8", "--out", ".", "--force"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert len([x for x in r.stderr.splitlines() if x.startswith("Error")]) == 1
    monkeypatch.chdir(tmp_path)
    # run --compare against a bundle of another model width.
    export_bundle(tiny_supernet_with_tokenizer, Shape((16, 36, 8), TINY_SPACE), tmp_path / "a")
    wide_space = DesignSpace.for_model(96, 4, 3, vocab_size=97, max_positions=64,
                                       intermediate_size=96)
    wide = randomize(SuperBert(SuperConfig(wide_space)))
    wide.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    export_bundle(wide, wide_space.smallest, tmp_path / "wide")
    r = runner.invoke(main, ["run", str(tmp_path / "a"), "the model", "--compare",
                             str(tmp_path / "wide")])
    assert r.exit_code == 1 and "cannot compare embeddings of width 48" in r.stderr
    # Ctrl-C during training says what was kept and how to resume.
    (tmp_path / "super" / "tokenizer.json").write_text(tiny_tokenizer_json())
    (tmp_path / "t.txt").write_text("the model runs fast on device\n" * 50)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sandwich, "train_supernet", interrupted)
    r = runner.invoke(main, ["train", "supernet", "--supernet", str(tmp_path / "super"),
                             "--data", str(tmp_path / "t.txt"), "--steps", "2", "--seq-len",
                             "16", "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "interrupted; the last checkpoint in" in r.stderr
    assert "run the same command again to resume" in r.stderr
    # ... and so do SIGTERM (exit 143) and a full disk, where a command that does not resume
    # says nothing half-written was kept.
    import errno

    from shaper_deploy.cli.common import Terminated

    kept = (f"the last checkpoint in {tmp_path / 'run' / 'checkpoint'} is kept: run the same "
            "command again to resume from it")
    for error, code, line in (
            (Terminated(), 143, f"Error: terminated (SIGTERM); {kept}"),
            (OSError(errno.ENOSPC, "No space left on device"), 1,
             f"Error: the operating system refused: No space left on device (errno 28); {kept}")):
        def failed(*args, **kwargs):
            raise error

        monkeypatch.setattr(sandwich, "train_supernet", failed)
        r = runner.invoke(main, ["train", "supernet", "--supernet", str(tmp_path / "super"),
                                 "--data", str(tmp_path / "t.txt"), "--steps", "2",
                                 "--seq-len", "16", "--out", str(tmp_path / "run")])
        assert r.exit_code == code and r.stderr.strip().splitlines()[-1] == line, r.stderr
