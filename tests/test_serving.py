import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from shaper_deploy.cli.main import main
from shaper_deploy.errors import ServingError
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.serving import Bundle
from shaper_deploy.shape import Shape
from shaper_deploy.slicing import slice_subnet

from .conftest import TINY_SPACE, cgroup_tree

SHAPE = Shape((16, 36, 8), TINY_SPACE)
TEXTS = ["we deploy a small model", "the bert runs fast on device", "shape of a layer"]


@pytest.fixture
def bundle(tmp_path, tiny_supernet_with_tokenizer):
    export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "b")
    return tmp_path / "b"


@pytest.mark.parametrize("module", ["serving", "server"])
def test_importing_serving_never_imports_torch(module):
    pytest.importorskip("kserve")
    code = (f"import sys, shaper_deploy.{module}\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_embeddings_equal_pytorch_mean_pooling(bundle, tiny_supernet_with_tokenizer):
    model = Bundle.load(bundle)
    vectors = model.embed(TEXTS, pooling="mean", batch_size=2)
    enc = model.encode(TEXTS)
    fused = fuse_bottlenecks(slice_subnet(tiny_supernet_with_tokenizer, SHAPE))
    with torch.no_grad():
        hidden = fused(*(torch.from_numpy(enc.feeds[k]) for k in
                         ("input_ids", "attention_mask", "token_type_ids"))).last_hidden_state
    mask = torch.from_numpy(enc.feeds["attention_mask"])[..., None].float()
    ref = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    assert np.abs(vectors - ref).max() < 1e-4  # batching by 2 changes nothing
    unit = model.embed(TEXTS, pooling="cls", normalize=True)
    assert np.allclose(np.linalg.norm(unit, axis=1), 1, atol=1e-5)
    assert model.embed(TEXTS, pooling="pooler").shape == (3, 48)


def test_overlong_text_is_truncated_and_reported(bundle):
    model = Bundle.load(bundle)
    enc = model.encode(["the model " * 100, "a device"])
    assert enc.feeds["input_ids"].shape[1] == model.max_length == 64
    assert enc.truncated == [True, False]
    assert model.encode(["the model " * 100], max_length=16).feeds["input_ids"].shape[1] == 16


def test_bad_bundles_and_inputs(bundle, tmp_path):
    with pytest.raises(ServingError, match="text 2 is empty"):
        Bundle.load(bundle).embed(["fine", "  "])
    with pytest.raises(ServingError, match="unknown pooling 'max'; allowed: mean, cls, pooler"):
        Bundle.load(bundle).embed(["fine"], pooling="max")
    data = bytearray((bundle / "model.onnx").read_bytes())
    data[-5] ^= 1
    (bundle / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ServingError, match="does not match the sha256 recorded in shaper.json"):
        Bundle.load(bundle)
    (bundle / "model.onnx").unlink()
    with pytest.raises(ServingError, match="is missing model.onnx"):
        Bundle.load(bundle)
    manifest = json.loads((bundle / "shaper.json").read_text())
    manifest["format_version"] = 99
    (bundle / "shaper.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="has format version 99, newer than this shaper-deploy reads"):
        Bundle.load(bundle)
    with pytest.raises(ServingError, match="is not a bundle"):
        Bundle.load(tmp_path)


def test_fill_mask_bundle(tmp_path, tiny_supernet_with_tokenizer):
    export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "mlm",
                  ExportOptions(task="fill-mask"))
    model = Bundle.load(tmp_path / "mlm")
    texts = ["the [MASK] runs fast", "a [MASK]"]
    answers = model.fill_mask(texts, top_k=3)
    assert [len(a) for a in answers] == [1, 1] and len(answers[0][0]) == 3
    # The same top-3 tokens and probabilities as PyTorch's fused network.
    enc = model.encode(texts)
    fused = fuse_bottlenecks(slice_subnet(tiny_supernet_with_tokenizer, SHAPE), fold_last=True)
    with torch.no_grad():
        logits = fused.mlm_logits(*(torch.from_numpy(enc.feeds[k]) for k in
                                    ("input_ids", "attention_mask", "token_type_ids")))
    mask_id = model.tokenizer.token_to_id("[MASK]")
    for row, answer in enumerate(answers):
        col = int(np.flatnonzero(enc.feeds["input_ids"][row] == mask_id)[0])
        probs = torch.softmax(logits[row, col], -1)
        top = torch.topk(probs, 3)
        assert [t for t, _ in answer[0]] == [model.tokenizer.id_to_token(int(i))
                                             for i in top.indices]
        assert [p for _, p in answer[0]] == pytest.approx(top.values.tolist(), abs=1e-4)
    with pytest.raises(ServingError, match="computes fill-mask, not embeddings"):
        Bundle.load(tmp_path / "mlm").embed(["x"])


def test_cli_run_and_bench(bundle, tmp_path, tiny_supernet_with_tokenizer):
    runner = CliRunner()
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n\n")
    other = Shape((48, 48, 48), TINY_SPACE)
    export_bundle(tiny_supernet_with_tokenizer, other, tmp_path / "full")
    result = runner.invoke(main, ["run", str(bundle), "--file", str(texts), "--compare",
                                  str(tmp_path / "full"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # The cosine of PyTorch's mean-pooled embeddings of the two shapes.
    enc = Bundle.load(bundle).encode(TEXTS)
    args = [torch.from_numpy(enc.feeds[k]) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")]
    mask = args[1][..., None].float()
    with torch.no_grad():
        pooled = [(fuse_bottlenecks(slice_subnet(tiny_supernet_with_tokenizer, s))(*args)
                   .last_hidden_state * mask).sum(1) / mask.sum(1) for s in (SHAPE, other)]
    expected = torch.nn.functional.cosine_similarity(*pooled).numpy()
    assert len(data["embeddings"]) == 3
    assert data["compare"]["cosine"] == pytest.approx(expected.tolist(), abs=1e-3)
    assert data["compare"]["mean_cosine"] < 0.99 and data["compare"]["is_fidelity"]
    int8 = tmp_path / "int8"
    export_bundle(tiny_supernet_with_tokenizer, SHAPE, int8, ExportOptions(int8=True,
                                                                            int8_min_cosine=0.5))
    picked = json.loads(runner.invoke(main, ["run", str(int8), "x", "--model", "model.onnx",
                                             "--json"]).stdout)
    assert picked["model"] == "model.onnx"
    assert json.loads(runner.invoke(main, ["run", str(int8), "x", "--json"]).stdout)["model"] \
        == "model_quantized.onnx"
    missing = runner.invoke(main, ["run", str(int8), "x", "--model", "nope.onnx"])
    assert missing.exit_code == 1 and "has no 'nope.onnx'" in missing.stderr
    human = runner.invoke(main, ["run", str(bundle), "we deploy", "the model"])
    assert "cosine similarity between the texts" in human.stdout
    empty = runner.invoke(main, ["run", str(bundle)])
    assert empty.exit_code == 2 and "give TEXT arguments or --file" in empty.stderr
    b = json.loads(runner.invoke(main, ["bench", str(bundle), "--duration", "0.5",
                                        "--concurrency", "2", "--seq-len", "16",
                                        "--json"]).stdout)
    assert b["concurrency"] == 2 and b["throughput_rps"] == pytest.approx(
        b["requests"] / b["duration_s"], rel=1e-2)
    assert b["requests"] >= 2  # both threads ran at least one request in 0.5 s
    assert b["model"] == "model.onnx"
    too_long = runner.invoke(main, ["bench", str(bundle), "--seq-len", "65", "--duration", "0.1"])
    assert too_long.exit_code == 1 and "exceeds the model's 64 positions" in too_long.stderr


def test_optimum_loads_the_default_model_with_file_name(tmp_path, tiny_supernet_with_tokenizer):
    """optimum loads model.onnx unless told; file_name=default_model loads the plan's choice."""
    from optimum.onnxruntime import ORTModelForFeatureExtraction

    export_bundle(tiny_supernet_with_tokenizer, SHAPE, tmp_path / "b",
                  ExportOptions(int8=True, int8_min_cosine=0.5))
    manifest = json.loads((tmp_path / "b" / "shaper.json").read_text())
    assert manifest["default_model"] == "model_quantized.onnx"
    ours = Bundle.load(tmp_path / "b")
    enc = ours.encode(TEXTS)
    expected = ours.run(enc.feeds)["last_hidden_state"]
    model = ORTModelForFeatureExtraction.from_pretrained(
        tmp_path / "b", file_name=manifest["default_model"])
    got = model(**{k: torch.from_numpy(v) for k, v in enc.feeds.items()}).last_hidden_state
    assert np.abs(got.numpy() - expected).max() < 1e-5


def test_every_bundle_file_is_verified_before_it_is_parsed(bundle):
    manifest = json.loads((bundle / "shaper.json").read_text())
    assert {"model.onnx", "config.json", "tokenizer.json"} <= set(manifest["files"])
    (bundle / "tokenizer.json").write_text("{not a tokenizer")
    with pytest.raises(ServingError, match="tokenizer.json does not match the sha256"):
        Bundle.load(bundle)
    del manifest["files"]["tokenizer.json"]  # deleting its entry does not turn its check off
    (bundle / "shaper.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="holds tokenizer.json, which shaper.json does not "
                                           "list"):
        Bundle.load(bundle)
    del manifest["files"]["model.onnx"]["sha256"]
    (bundle / "shaper.json").write_text(json.dumps(manifest))
    with pytest.raises(ServingError, match="files.model.onnx.sha256: Field required"):
        Bundle.load(bundle)


def test_a_bundle_is_safe_to_share_between_threads(bundle):
    """Threads with different length limits at once get what one thread gets."""
    import threading

    model = Bundle.load(bundle)
    jobs = [(TEXTS[i % 3:] + TEXTS[:i % 3], limit) for i, limit in enumerate([4, 8, 64] * 4)]
    expected = [model.embed(texts, max_length=limit) for texts, limit in jobs]
    got, errors = [None] * len(jobs), []

    def work(i):
        try:
            for _ in range(20):
                got[i] = model.embed(jobs[i][0], max_length=jobs[i][1])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)
    b = model.bench(batch=1, seq_len=8, concurrency=3, duration=0.3)
    assert b["failed"] == 0 and b["first_failure"] is None
    assert b["p99_over_p50"] == pytest.approx(b["latency_ms"]["p99"] / b["latency_ms"]["p50"])


def test_a_containers_memory_limit_bounds_what_a_request_may_use(tmp_path, monkeypatch):
    """/proc/meminfo in a container describes the host; its cgroup's limit less its usage is
    what the process may still take (v2 and v1, the lowest over the folders above, the
    mount's root where the host's path is not mounted), and a request sized by the host's
    memory is refused by the container's, in one line."""
    from shaper_deploy import runtime
    from shaper_deploy.errors import DeviceError

    def tree(name, cgroup, files):
        return cgroup_tree(tmp_path / name, cgroup, files)

    gib = 1 << 30
    v2 = tree("v2", "0::/ctr/job\n", {"sys/fs/cgroup/cgroup.controllers": "cpu memory",
                                      "sys/fs/cgroup/memory.max": "max",
                                      "sys/fs/cgroup/memory.current": str(3 * gib),
                                      "sys/fs/cgroup/ctr/memory.max": str(2 * gib),
                                      "sys/fs/cgroup/ctr/memory.current": str(gib // 2),
                                      "sys/fs/cgroup/ctr/job/memory.max": "max",
                                      "sys/fs/cgroup/ctr/job/memory.current": str(gib // 4)})
    assert runtime.cgroup_memory_left(v2) == 2 * gib - gib // 2
    v1 = tree("v1", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
              {"sys/fs/cgroup/memory/memory.limit_in_bytes": str(gib),
               "sys/fs/cgroup/memory/memory.usage_in_bytes": str(gib // 4)})
    assert runtime.cgroup_memory_left(v1) == gib - gib // 4
    unlimited = tree("none", "4:memory:/\n0::/\n",
                     {"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
                      "sys/fs/cgroup/memory/memory.usage_in_bytes": str(gib)})
    assert runtime.cgroup_memory_left(unlimited) is None
    assert runtime.cgroup_memory_left(tmp_path / "no-proc") is None
    space = {"intermediate_size": 1536, "hidden_size": 384, "num_heads": 12}
    monkeypatch.setattr(runtime, "cgroup_memory_left", lambda: gib)
    assert runtime.available_memory() <= gib
    with pytest.raises(DeviceError, match=r"^batch 64 x 512 tokens needs about 2\.\d GiB .*"
                                          r"container's memory limit.*at most --batch 14$"):
        runtime.check_workload(64, 512, space)
    runtime.check_workload(8, 512, space)
