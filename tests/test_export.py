import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from shaper_deploy.bundle import BundleManifest
from shaper_deploy.errors import ExportError, OutputError, ValidationError
from shaper_deploy.export import (ExportOptions, _Graph, _export_onnx, _optimize, _validate,
                                  export_bundle)
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.io import sha256_file
from shaper_deploy.runtime import make_session
from shaper_deploy.shape import Shape
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import save_supernet

from .conftest import INPUT_NAMES, TINY_SPACE, sample_inputs

SHAPE = Shape((16, 36, 8), TINY_SPACE)


@pytest.fixture
def bundle(tmp_path, tiny_supernet_with_tokenizer):
    out = tmp_path / "bundle"
    manifest = export_bundle(tiny_supernet_with_tokenizer, SHAPE, out)
    return out, manifest


def test_bundle_contents_and_manifest(bundle):
    out, manifest = bundle
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "model.onnx", "shaper.json", "tokenizer.json"]
    on_disk = json.loads((out / "shaper.json").read_text())
    assert on_disk == manifest.to_dict() and BundleManifest.read(out) == manifest
    # the design space is stored once, inside config; the length limit is derived from it
    assert "design_space" not in on_disk and "max_length" not in on_disk
    assert manifest.design_space == on_disk["config"]["space"] and manifest.max_length == 64
    assert manifest.shape == [16, 36, 8]
    assert manifest.params["fused"] == SHAPE.params(fused=True)
    assert manifest.files["model.onnx"]["sha256"] == sha256_file(out / "model.onnx")
    assert manifest.fusion["Attention"] == 3  # one fused Attention per layer
    assert manifest.outputs == ["last_hidden_state", "pooler_output"]
    cases = manifest.validation["cases"]
    assert len(cases) >= 3 and {c["padding"] for c in cases} == {"none", "right", "mixed"}
    assert all((c["batch"], c["seq_len"]) != (2, 16) for c in cases)  # never the traced size
    assert {"torch", "onnx", "onnxruntime"} <= set(manifest.versions)
    assert manifest.source["supernet"] == {}  # built in memory, not from a checkpoint


def test_bundle_runs_like_pytorch_on_new_sizes(bundle, tiny_supernet):
    out, _ = bundle
    session = make_session(out / "model.onnx")
    fused = fuse_bottlenecks(slice_subnet(tiny_supernet, SHAPE))
    feeds = sample_inputs(97, batch=5, seq_len=37, seed=9, padding="mixed")
    assert feeds["attention_mask"][1, 0] == 0  # left padding: a right-padding graph fails this
    got = session.run(["last_hidden_state", "pooler_output"], feeds)
    with torch.no_grad():
        ref = fused(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
    assert np.abs(got[0] - ref.last_hidden_state.numpy()).max() < 1e-4
    assert np.abs(got[1] - ref.pooler_output.numpy()).max() < 1e-4


def test_bundle_loads_in_transformers_and_optimum(bundle):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoConfig

    out, _ = bundle
    config = AutoConfig.from_pretrained(out)
    assert config.model_type == "bert" and config.shaper["shape"] == [16, 36, 8]
    model = ORTModelForFeatureExtraction.from_pretrained(out, provider="CPUExecutionProvider")
    feeds = sample_inputs(97, batch=2, seq_len=9, seed=4)
    ours = make_session(out / "model.onnx").run(["last_hidden_state"], feeds)[0]
    theirs = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
    assert np.allclose(np.asarray(theirs), ours, atol=1e-6)


def test_bundle_runs_with_onnxruntime_and_tokenizers_alone(bundle):
    out, _ = bundle
    script = f"""
import sys, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
tok = Tokenizer.from_file({str(out / 'tokenizer.json')!r})
tok.enable_padding()
enc = tok.encode_batch(["we deploy a small model", "the bert runs fast on device"])
feeds = {{"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
          "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
          "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}}
s = ort.InferenceSession({str(out / 'model.onnx')!r}, providers=["CPUExecutionProvider"])
h = s.run(["last_hidden_state"], feeds)[0]
assert h.shape == (2, feeds["input_ids"].shape[1], 48) and np.isfinite(h).all()
assert "torch" not in sys.modules and "transformers" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr


def test_fill_mask_bundle_folds_the_last_bottleneck(tmp_path, tiny_supernet):
    manifest = export_bundle(tiny_supernet, SHAPE, tmp_path / "mlm",
                             ExportOptions(task="fill-mask"))
    assert manifest.outputs == ["logits"] and manifest.fused_last_bottleneck_into_head
    subnet = slice_subnet(tiny_supernet, SHAPE)
    feeds = sample_inputs(97, batch=3, seq_len=11, seed=5)
    logits = make_session(tmp_path / "mlm" / "model.onnx").run(["logits"], feeds)[0]
    with torch.no_grad():
        hidden = subnet(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES)).last_hidden_state
        ref = subnet.mlm_logits(hidden).numpy()
    assert logits.shape == (3, 11, 97) and np.abs(logits - ref).max() < 1e-4


def test_int8_accuracy_is_recorded_and_enforced(tmp_path, tiny_supernet_with_tokenizer):
    manifest = export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "q",
                             ExportOptions(int8=True, int8_min_cosine=0.5))
    q = manifest.quantization
    assert q["judged_on"] == "32 English sentences"
    assert 0.5 < q["mean_token_cosine"] <= 1 and q["max_abs_diff"] > 0
    assert manifest.default_model == "model_quantized.onnx"
    int8 = onnx.load(str(tmp_path / "q" / "model_quantized.onnx"))
    assert any(n.op_type == "DynamicQuantizeMatMul" or n.op_type == "MatMulInteger"
               for n in int8.graph.node)
    with pytest.raises(ExportError, match=r"int8 model is too far from fp32: mean token cosine"):
        export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "strict",
                      ExportOptions(int8=True, int8_min_cosine=1.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]  # nothing half-written


def _fp32_matmuls(path) -> set[str]:
    """The graph's MatMul nodes still multiplying by an fp32 weight (an initializer)."""
    graph = onnx.load(str(path)).graph
    weights = {t.name for t in graph.initializer}
    return {n.name for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights}


def test_int8_fallback_ladder_and_bisection(tmp_path, tiny_supernet):
    from shaper_deploy.quantize import fallback_ladder, quantize_with_fallback
    from shaper_deploy.runtime import int8_format

    export_bundle(tiny_supernet, SHAPE, tmp_path / "b")
    src = tmp_path / "b" / "model.onnx"
    names = [n.name for n in onnx.load(str(src)).graph.node]
    rungs = fallback_ladder(names, num_layers=3)
    # the deployed module's names, as the exporter scopes them: every rung adds nodes
    assert [label for label, _ in rungs][:4] == [
        "bottleneck matrices", "bottleneck matrices, FFN output of layer 0",
        "bottleneck matrices, FFN output of layers 0-1",
        "bottleneck matrices, FFN output of layers 0-2"]
    assert rungs[-1][0] == ("bottleneck matrices, FFN output of layers 0-2, "
                            "FFN input of layers 0-2")
    assert all(set(a[1]) < set(b[1]) for a, b in zip(rungs, rungs[1:]))
    assert {n.replace("/fused", "") for n in rungs[0][1]} == {
        "/proj_in/MatMul", "/transitions.0/MatMul", "/transitions.1/MatMul"}
    assert len(rungs[-1][1]) == 3 + 2 * 3
    fmt = int8_format(("avx2", "fma"))
    seen = []

    def judge(path):  # passes once layer 1's FFN output projection is fp32 again
        kept = _fp32_matmuls(path)
        seen.append(len(kept))
        return {"kept": len(kept),
                "ok": any(n.endswith("/layers.1/ffn_out/MatMul") for n in kept)}

    dst = tmp_path / "q.onnx"
    result, record = quantize_with_fallback(src, dst, fmt, judge, lambda r: r["ok"], 3)
    assert record["passed"] and record["rung"] == rungs[2][0] and result["ok"]
    assert _fp32_matmuls(dst) == set(record["fp32_nodes"]) == set(rungs[2][1])
    assert 0 < record["fp32_weight_share"] < 1
    assert [t["rung"] for t in record["tried"] if not t["ok"]][-1] == rungs[1][0]
    assert len(seen) <= 2 + 4  # all-int8, the last rung, then bisection over 9 rungs
    # nothing passes: the all-int8 graph stays, with what was tried
    result, record = quantize_with_fallback(src, dst, fmt, judge, lambda r: False, 3)
    assert not record["passed"] and _fp32_matmuls(dst) == set() and not result["ok"]
    assert record["tried"][-1]["rung"] == rungs[-1][0]
    # all-int8 passing: no fallback at all
    assert quantize_with_fallback(src, dst, fmt, judge, lambda r: True, 3)[1] is None


def test_int8_export_falls_back_to_pass_its_gate(tmp_path, tiny_supernet_with_tokenizer):
    plain = export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "plain",
                          ExportOptions(int8=True, int8_min_cosine=0.5))
    base = plain.quantization["mean_token_cosine"]
    assert plain.quantization["fallback"] is None and plain.quantization["fp32_nodes"] == []
    gate = base + (1 - base) / 4  # above all-int8, below fp32
    manifest = export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "fb",
                             ExportOptions(int8=True, int8_min_cosine=gate))
    q = manifest.quantization
    assert q["fallback"]["passed"] and q["mean_token_cosine"] >= gate
    assert set(q["fp32_nodes"]) == _fp32_matmuls(tmp_path / "fb" / "model_quantized.onnx")
    assert q["fp32_nodes"] == q["fallback"]["fp32_nodes"]
    assert all(t["mean_token_cosine"] < gate for t in q["fallback"]["tried"]
               if t["rung"] != q["fallback"]["rung"] and t["fp32_nodes"] < len(q["fp32_nodes"]))
    # the same gate without fallback fails, in one line naming the gate
    with pytest.raises(ExportError, match=r"mean token cosine .* < required") as err:
        export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "nofb",
                      ExportOptions(int8=True, int8_min_cosine=gate, int8_fallback=False))
    assert "kept fp32" not in str(err.value)
    # a gate nothing reaches names the most that was tried
    with pytest.raises(ExportError, match=r"with bottleneck matrices, FFN output of layers 0-2, "
                                          r"FFN input of layers 0-2 kept fp32 it was [01]\.\d{6}"):
        export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "never",
                      ExportOptions(int8=True, int8_min_cosine=1.0))


def test_no_optimize_keeps_plain_operators(tmp_path, tiny_supernet):
    manifest = export_bundle(tiny_supernet, SHAPE, tmp_path / "plain",
                             ExportOptions(optimize=False))
    assert manifest.fusion is None and "Attention" not in manifest.operators
    assert manifest.operators["Softmax"] == 3


def test_attention_fusion_post_condition(tmp_path, tiny_supernet):
    fused = fuse_bottlenecks(slice_subnet(tiny_supernet, SHAPE))
    graph = _Graph(fused, "feature-extraction").eval()
    _export_onnx(graph, tmp_path / "raw.onnx", ["last_hidden_state", "pooler_output"], 17)
    with pytest.raises(ExportError, match="fused Attention in 3 of 4 layers"):
        _optimize(tmp_path / "raw.onnx", tmp_path / "opt.onnx", num_layers=4)


def test_validation_lists_every_mismatch(tmp_path, tiny_supernet):
    fused = fuse_bottlenecks(slice_subnet(tiny_supernet, SHAPE))
    graph = _Graph(fused, "feature-extraction").eval()
    names = ["last_hidden_state", "pooler_output"]
    _export_onnx(graph, tmp_path / "m.onnx", names, 17)
    with torch.no_grad():
        fused.transitions[0].weight.mul_(1.5)  # PyTorch now disagrees with the exported graph
    with pytest.raises(ValidationError) as err:
        _validate(tmp_path / "m.onnx", graph, names, atol=1e-4)
    assert len(err.value.mismatches) == 8  # 2 outputs x 4 input sizes, all in one error
    assert "last_hidden_state at batch 3 seq 23" in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_requests_leave_nothing_behind(tmp_path, tiny_supernet):
    from shaper_deploy.shape import DesignSpace
    from shaper_deploy.supernet import SuperBert, SuperConfig

    with pytest.raises(ExportError, match="unknown task 'qa'; allowed: feature-extraction, fill-mask"):
        ExportOptions(task="qa")
    with pytest.raises(ExportError, match="opset 9 is not supported; allowed: 14..20"):
        ExportOptions(opset=9)
    no_head = SuperBert(SuperConfig(DesignSpace.for_model(48, 4, 3, vocab_size=97,
                                                          max_positions=64, intermediate_size=96,
                                                          mlm_head=False)))
    with pytest.raises(ExportError, match="needs an MLM head"):
        export_bundle(no_head, Shape((8, 8, 8), no_head.config.space), tmp_path / "x",
                      ExportOptions(task="fill-mask"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError, match="already exists"):
        export_bundle(tiny_supernet, SHAPE, tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.fixture
def run_cli():
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    def invoke(*args):
        return CliRunner().invoke(main, [str(a) for a in args])
    return invoke


def test_cli_export_and_its_errors(tmp_path, tiny_supernet, run_cli):
    save_supernet(tiny_supernet, tmp_path / "super")
    result = run_cli("export", "--supernet", tmp_path / "super", "--shape", "16,36,8",
                     "--out", tmp_path / "b", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["shape"] == [16, 36, 8] and data["fusion"]["Attention"] == 3
    assert data["source"]["checkpoint_weights_sha256"] == sha256_file(
        tmp_path / "super" / "model.safetensors")
    assert "validating ONNX Runtime against PyTorch" in result.stderr

    bad_shape = run_cli("export", "--supernet", tmp_path / "super", "--shape", "16,35,8",
                        "--out", tmp_path / "c")
    assert bad_shape.exit_code == 1
    assert bad_shape.stderr.strip().splitlines() == [
        "Error: layer 2 width 35 is not divisible by the 4 attention heads; "
        "allowed widths: 8, 16, 24, 32, 36, 48"]

    weights = tmp_path / "super" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    corrupt = run_cli("export", "--supernet", tmp_path / "super", "--shape", "16,36,8",
                      "--out", tmp_path / "d")
    assert corrupt.exit_code == 1 and "is corrupted" in corrupt.stderr

    unwritable = run_cli("export", "--supernet", tmp_path / "super", "--shape", "16,36,8",
                         "--out", tmp_path / "b" / "model.onnx" / "x")
    assert unwritable.exit_code == 1 and "is a file, not a folder" in unwritable.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "super"]


def test_cli_export_minilm_end_to_end(tmp_path, minilm_dir, run_cli):
    assert run_cli("supernet", "init", "--from-bert", minilm_dir,
                   "--out", tmp_path / "super").exit_code == 0
    result = run_cli("export", "--supernet", tmp_path / "super", "--shape", "384x6",
                     "--out", tmp_path / "bundle", "--int8", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["fusion"]["Attention"] == 6
    assert max(v for c in data["validation"]["cases"] for v in c["max_abs_diff"].values()) < 1e-4
    # Real weights, real sentences: per-channel int8 stays close to fp32 (measured 0.988).
    assert data["quantization"]["mean_token_cosine"] > 0.97
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [
        "config.json", "model.onnx", "model_quantized.onnx", "shaper.json",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]


def test_the_manifest_reader_checks_what_it_reads(bundle):
    from shaper_deploy.errors import ServingError

    out, manifest = bundle
    data = manifest.to_dict()
    # a version 1 manifest (design space and length limit stored twice) is still read
    old = {**data, "format_version": 1, "design_space": data["config"]["space"],
           "max_length": 64}
    (out / "shaper.json").write_text(json.dumps(old))
    assert BundleManifest.read(out) == manifest
    (out / "shaper.json").write_text(json.dumps({**data, "speed": "fast"}))
    with pytest.raises(ServingError, match=r"unknown bundle manifest .* field\(s\) speed"):
        BundleManifest.read(out)
    del data["files"]
    (out / "shaper.json").write_text(json.dumps(data))
    with pytest.raises(ServingError, match=r"lacks field\(s\) files"):
        BundleManifest.read(out)
    (out / "shaper.json").write_text(json.dumps({**manifest.to_dict(), "format": "other"}))
    with pytest.raises(ServingError, match="is not a shaper-deploy bundle"):
        BundleManifest.read(out)
