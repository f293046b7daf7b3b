"""Triton model repositories: the config is what Triton's own protobuf parses, the model runs
on a batch built as a Triton client sends it, and bad input fails with one line."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

from shaper_deploy.cli.main import main
from shaper_deploy.errors import OutputError, ServingError
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.runtime import make_session
from shaper_deploy.serving import Bundle
from shaper_deploy.shape import Shape
from shaper_deploy.triton import TritonOptions, model_config_pb2, write_repository

from .conftest import TINY_SPACE

TEXTS = ["we deploy a small model", "the bert runs fast on device", "shape"]


@pytest.fixture
def bundles(tmp_path, tiny_supernet_with_tokenizer):
    export_bundle(tiny_supernet_with_tokenizer, Shape((16, 36, 8), TINY_SPACE), tmp_path / "small")
    export_bundle(tiny_supernet_with_tokenizer, TINY_SPACE.largest, tmp_path / "full",
                  ExportOptions(int8=True, int8_min_cosine=0.5))
    return tmp_path / "small", tmp_path / "full"


def test_repository_config_is_a_triton_model_config(bundles, tmp_path):
    written = write_repository(bundles, tmp_path / "repo", ["minilm_small", "minilm.full-1"],
                               TritonOptions(max_batch=16, instances=2, threads=2))
    assert [w["name"] for w in written] == ["minilm_small", "minilm.full-1"]
    pb = model_config_pb2()
    for entry, bundle in zip(written, bundles):
        folder = tmp_path / "repo" / entry["name"]
        assert sorted(p.name for p in folder.iterdir()) == ["1", "config.pbtxt", "shaper.json",
                                                            "tokenizer.json"]
        config = text_format.Parse((folder / "config.pbtxt").read_text(), pb.ModelConfig())
        assert config.name == entry["name"] and config.backend == "onnxruntime"
        assert config.max_batch_size == 16
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
            (n, pb.TYPE_INT64, [-1]) for n in ("input_ids", "attention_mask", "token_type_ids")]
        assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
            ("last_hidden_state", pb.TYPE_FP32, [-1, 48]), ("pooler_output", pb.TYPE_FP32, [48])]
        assert config.HasField("dynamic_batching")
        group = config.instance_group[0]
        assert group.kind == pb.ModelInstanceGroup.KIND_CPU and group.count == 2
        assert config.parameters["intra_op_thread_count"].string_value == "2"
        manifest = json.loads((bundle / "shaper.json").read_text())
        assert ((folder / "1" / "model.onnx").read_bytes()
                == (bundle / manifest["default_model"]).read_bytes())
    assert written[1]["model"] == "model_quantized.onnx"  # the bundle's default model


def test_repository_model_runs_a_triton_shaped_batch(bundles, tmp_path):
    write_repository(bundles[:1], tmp_path / "repo", ["m"])
    from tokenizers import Tokenizer

    # As a Triton client would: the repository's tokenizer, padded batch, int64 tensors.
    tok = Tokenizer.from_file(str(tmp_path / "repo" / "m" / "tokenizer.json"))
    tok.enable_padding()
    enc = tok.encode_batch(TEXTS)
    batch = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
             "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
    session = make_session(tmp_path / "repo" / "m" / "1" / "model.onnx")
    got = session.run(["last_hidden_state"], batch)[0]
    bundle = Bundle.load(bundles[0])
    expected = bundle.run(bundle.encode(TEXTS).feeds)["last_hidden_state"]
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-6


def test_repository_refusals(bundles, tmp_path):
    with pytest.raises(ServingError, match=r"'bad name' is not a model name; allowed: "
                                           r"letters, digits, '_', '-' and '.'"):
        write_repository(bundles[:1], tmp_path / "repo", ["bad name"])
    with pytest.raises(ServingError, match="give one --name per bundle"):
        write_repository(bundles, tmp_path / "repo", ["one"])
    with pytest.raises(ServingError, match="runs on the CPU provider only"):
        write_repository(bundles[1:], tmp_path / "repo", ["x"], TritonOptions(device="cuda"))
    write_repository(bundles[:1], tmp_path / "repo", ["m"])
    with pytest.raises(OutputError, match="already exists; choose a new path or pass --force"):
        write_repository(bundles[:1], tmp_path / "repo", ["m"])
    data = bytearray((bundles[0] / "model.onnx").read_bytes())
    data[-5] ^= 1
    (bundles[0] / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ServingError, match="does not match the sha256 recorded in shaper.json"):
        write_repository(bundles[:1], tmp_path / "repo", ["m"], force=True)
    # The old entry is intact and nothing half-written is left.
    assert (tmp_path / "repo" / "m" / "1" / "model.onnx").is_file()
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["m"]


def test_cli_triton(bundles, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["triton", *map(str, bundles), "--out", str(tmp_path / "repo"),
                             "--json"])
    assert r.exit_code == 0, r.output
    models = json.loads(r.stdout)["models"]
    assert [m["name"] for m in models] == ["small", "full"]
    again = runner.invoke(main, ["triton", str(bundles[0]), "--out", str(tmp_path / "repo")])
    assert again.exit_code == 1 and len(again.stderr.strip().splitlines()) == 1
    assert "already exists" in again.stderr
    bad = runner.invoke(main, ["triton", str(bundles[0]), "--out", str(tmp_path / "r2"),
                               "--max-batch", "0"])
    assert bad.exit_code == 1 and "--max-batch must be 1..4096, got 0" in bad.stderr


def test_a_classifier_repository_names_its_classes(tmp_path, tiny_supernet_with_tokenizer):
    from dataclasses import replace

    from shaper_deploy.supernet import SuperBert
    from shaper_deploy.supernet.config import TaskHead

    sup = tiny_supernet_with_tokenizer
    head = TaskHead("single_label_classification", ("business", "sport", "tech"))
    cls = SuperBert(replace(sup.config, task_head=head))
    cls.load_state_dict(sup.state_dict(), strict=False)
    cls.tokenizer_files = sup.tokenizer_files
    export_bundle(cls.eval(), Shape((16, 36, 8), TINY_SPACE), tmp_path / "c",
                  ExportOptions(task="text-classification"))
    write_repository([tmp_path / "c"], tmp_path / "repo", ["topics"], TritonOptions())
    pb = model_config_pb2()
    config = text_format.Parse((tmp_path / "repo" / "topics" / "config.pbtxt").read_text(),
                               pb.ModelConfig())
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [
        ("logits", [3], "labels.txt")]
    assert (tmp_path / "repo" / "topics" / "labels.txt").read_text().split() == [
        "business", "sport", "tech"]
    session = make_session(tmp_path / "repo" / "topics" / "1" / "model.onnx")
    feeds = Bundle.load(tmp_path / "c").encode(TEXTS).feeds
    assert session.run(["logits"], feeds)[0].shape == (3, 3)
