"""``shaperctl serve``: a real KServe server process on 127.0.0.1, spoken to over HTTP with
tritonclient's V2 client and plain requests; bad requests are 4xx and never take it down."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import requests

from .conftest import TINY_SPACE

pytest.importorskip("kserve")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, port):
    import tempfile

    log = tempfile.TemporaryFile(mode="w+")  # a pipe nobody reads would fill and block it
    proc = subprocess.Popen([sys.executable, "-m", "shaper_deploy.cli.main", "serve", *args,
                             "--http-port", str(port), "--json"],
                            stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise AssertionError(log.read())
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not become ready in 90 s")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from shaper_deploy.export import ExportOptions, export_bundle
    from shaper_deploy.shape import Shape
    from shaper_deploy.supernet import SuperBert, SuperConfig
    from shaper_deploy.supernet.config import TaskHead

    from .conftest import randomize, tiny_tokenizer_json

    root = tmp_path_factory.mktemp("served")
    sup = randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=True))).eval()
    sup.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    export_bundle(sup, Shape((24, 24, 24), TINY_SPACE), root / "b", ExportOptions(int8=True))
    # a second family beside it: RoBERTa (no token types fed, positions from pad + 1)
    space = replace(TINY_SPACE, type_vocab_size=1, max_positions=66)
    rob = randomize(SuperBert(SuperConfig(space, model_type="roberta", pad_token_id=1,
                                          pooler=True)), seed=5).eval()
    rob.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json(97, "roberta").encode()}
    export_bundle(rob, Shape((16, 24, 48), space), root / "r")
    # and a classifier (a random task head: serving is tested, not learning)
    head = TaskHead("single_label_classification", ("neg", "pos"))
    cls = randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=True, task_head=head)), seed=6)
    cls.tokenizer_files = sup.tokenizer_files
    export_bundle(cls.eval(), Shape((24, 48, 16), TINY_SPACE), root / "c",
                  ExportOptions(task="text-classification"))
    port = _free_port()
    proc = _start([str(root / "b"), str(root / "r"), str(root / "c"), "--name", "tiny",
                   "--name", "tiny-roberta", "--name", "tiny-classifier", "--max-batch", "8",
                   "--max-text-bytes", "2000"], port)
    yield root, port, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def _int64_inputs(feeds, names):
    import tritonclient.http as httpclient

    tensors = []
    for name in names:
        t = httpclient.InferInput(name, list(feeds[name].shape), "INT64")
        t.set_data_from_numpy(feeds[name])
        tensors.append(t)
    return tensors


def _url(port, path):
    return f"http://127.0.0.1:{port}{path}"


def test_v2_text_and_token_ids_agree_with_the_bundle(served):
    import tritonclient.http as httpclient

    from shaper_deploy.serving import Bundle

    root, port, _ = served
    bundle = Bundle.load(root / "b")
    texts = ["the model is fast", "we deploy bert on device"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    assert client.is_server_live() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert [i["name"] for i in meta["inputs"]][0] == "text"
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    got = client.infer("tiny", [text]).as_numpy("embedding")
    want = bundle.embed(texts, "mean", True)
    assert got.shape == (2, 48) and np.allclose(got, want, atol=1e-5)
    for binary in (True, False):  # the binary tensor extension when asked for, else JSON
        result = client.infer("tiny", [text], outputs=[
            httpclient.InferRequestedOutput("embedding", binary_data=binary)])
        out = result.get_response()["outputs"][0]
        assert ("binary_data_size" in (out.get("parameters") or {})) == binary
        assert ("data" in out) != binary
        assert np.array_equal(result.as_numpy("embedding"), got)
    feeds = bundle.encode(texts).feeds
    result = client.infer("tiny", _int64_inputs(
        feeds, ("input_ids", "attention_mask", "token_type_ids")))
    assert np.allclose(result.as_numpy("last_hidden_state"),
                       bundle.run(feeds)["last_hidden_state"], atol=1e-5)
    v1 = requests.post(_url(port, "/v1/models/tiny:predict"), json={"instances": texts}).json()
    assert np.allclose(np.array(v1["predictions"]), want, atol=1e-5)
    metrics = requests.get(_url(port, "/metrics")).text
    assert "request_predict_seconds" in metrics or "python_gc" in metrics


def test_a_roberta_bundle_is_served_beside_bert_with_its_own_inputs(served):
    import tritonclient.http as httpclient

    from shaper_deploy.serving import Bundle

    root, port, _ = served
    bundle = Bundle.load(root / "r")
    texts = ["the model is fast", "we deploy"]
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    meta = client.get_model_metadata("tiny-roberta")
    assert [i["name"] for i in meta["inputs"]] == ["text", "input_ids", "attention_mask"]
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    got = client.infer("tiny-roberta", [text]).as_numpy("embedding")
    assert np.allclose(got, bundle.embed(texts, "mean", True), atol=1e-5)
    feeds = bundle.encode(texts).feeds
    assert feeds["input_ids"][1, -1] == 1  # padded with RoBERTa's pad id, not 0
    result = client.infer("tiny-roberta", _int64_inputs(feeds, ("input_ids", "attention_mask")))
    assert np.allclose(result.as_numpy("last_hidden_state"),
                       bundle.run(feeds)["last_hidden_state"], atol=1e-5)
    # a BERT client's token types are refused by name, not ignored
    r = requests.post(_url(port, "/v2/models/tiny-roberta/infer"), json={"inputs": [
        {"name": n, "datatype": "INT64", "shape": list(feeds[n].shape),
         "data": feeds[n].ravel().tolist()} for n in ("input_ids", "attention_mask")] + [
        {"name": "token_type_ids", "datatype": "INT64", "shape": list(feeds["input_ids"].shape),
         "data": [0] * feeds["input_ids"].size}]})
    assert r.status_code == 400 and "not this model's" in r.text


def test_a_classifier_answers_labels_and_scores(served):
    import tritonclient.http as httpclient

    from shaper_deploy.serving import Bundle

    root, port, _ = served
    want = Bundle.load(root / "c").classify(["the model is fast", "we deploy"])
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    meta = client.get_model_metadata("tiny-classifier")
    assert [o["name"] for o in meta["outputs"]] == ["label", "scores", "logits"]
    assert meta["outputs"][2]["shape"] == [-1, 2]
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(np.array([b"the model is fast", b"we deploy"], dtype=object))
    result = client.infer("tiny-classifier", [text])
    assert [x.decode() for x in result.as_numpy("label")] == [w["label"] for w in want]
    assert np.allclose(result.as_numpy("scores")[:, 1], [w["scores"]["pos"] for w in want],
                       atol=1e-6)
    v1 = requests.post(_url(port, "/v1/models/tiny-classifier:predict"),
                       json={"instances": ["the model is fast"]}).json()
    assert v1["predictions"][0]["label"] == want[0]["label"]


def test_concurrent_requests_share_runs_and_each_gets_its_own_answer(served):
    """The batcher joins concurrent text requests into one run and splits the result: every
    client's embeddings are the bundle's for its own texts. The bundle serves dynamic int8,
    whose activation scale is computed over the whole run, so a text's vector moves with its
    run-mates by ~1e-3 (cosine > 0.9999), as in any batched int8 serving; fp32 is exact."""
    from concurrent.futures import ThreadPoolExecutor

    from shaper_deploy.serving import Bundle

    root, port, _ = served
    bundle = Bundle.load(root / "b")
    words = "the model is fast small bert on device latency shape layer".split()
    requests_texts = [[" ".join(words[: 1 + (i + j) % len(words)]) for j in range(1 + i % 3)]
                      for i in range(24)]

    def ask(texts):
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                            "data": texts}]}
        r = requests.post(_url(port, "/v2/models/tiny/infer"), json=body, timeout=60)
        out = r.json()["outputs"][0]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, requests_texts))
    for texts, got in zip(requests_texts, answers):
        want = bundle.embed(texts, "mean", True)
        assert got.shape == want.shape
        assert (np.sum(got * want, axis=1) > 0.9999).all(), texts  # unit vectors: cosine


BAD = {
    "wrong input name": ({"inputs": [{"name": "txt", "datatype": "BYTES", "shape": [1],
                                      "data": ["x"]}]}, 400, "are not this model's"),
    "wrong dtype": ({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1],
                                 "data": [1.0]}]}, 400, "must be BYTES"),
    "wrong shape": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 2],
                                 "data": ["a", "b"]}]}, 400, "shape"),
    "shape and data disagree": ({"inputs": [{"name": "text", "datatype": "BYTES",
                                             "shape": [5], "data": ["a"]}]}, 400, "do not fill it"),
    "empty text": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                "data": [" "]}]}, 400, "empty"),
    "oversized text": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                    "data": ["ab" * 2000]}]}, 400, "--max-text-bytes"),
    "too many texts": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [9],
                                    "data": ["a"] * 9}]}, 400, "--max-batch"),
    "no text": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0],
                             "data": []}]}, 400, "no text"),
    "a number as text": ({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                      "data": [5]}]}, 400, "must be a string"),
    "ids beyond the vocabulary": ({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [2, 500, 3]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 3], "data": [1, 1, 1]}]},
        400, "outside 0..96"),
    "too long": ({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 100], "data": [2] * 100},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 100],
         "data": [1] * 100}]}, 400, "64 tokens"),
    "shapes differ": ({"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": [1, 3], "data": [2, 5, 3]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 1]}]},
        400, "one shape"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_are_4xx_with_one_message(served, case):
    _, port, proc = served
    body, status, message = BAD[case]
    r = requests.post(_url(port, "/v2/models/tiny/infer"), json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.text
    assert proc.poll() is None


def test_unknown_models_invalid_utf8_and_garbage(served):
    _, port, proc = served
    r = requests.post(_url(port, "/v2/models/nope/infer"), json={"inputs": []})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    for raw in (b'{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"data":["\xff"]}]}',
                b'{"inputs":', b"[1, 2]", b"\x00" * 100):
        r = requests.post(_url(port, "/v2/models/tiny/infer"), data=raw,
                          headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (raw, r.status_code, r.text)
    r = requests.post(_url(port, "/v1/models/tiny:predict"), json={"instances": "x"})
    assert r.status_code == 400
    # curl -d without -H: application/x-www-form-urlencoded, a JSON body all the same
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = requests.post(_url(port, "/v1/models/tiny:predict"), headers=form,
                      data=json.dumps({"instances": ["the model is fast"]}))
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1, r.text
    r = requests.post(_url(port, "/v1/models/tiny:predict"), headers=form, data=b"text=hi")
    assert r.status_code == 400 and r.json()["error"] == (
        'a V1 request is JSON, {"instances": ["text", ...]}; this body (Content-Type '
        "application/x-www-form-urlencoded) is not"), r.text
    assert requests.get(_url(port, "/v2/health/live")).ok and proc.poll() is None


def test_a_damaged_bundle_is_refused_at_start_up(served, tmp_path):
    import shutil

    root, _, _ = served
    bad = tmp_path / "bad"
    shutil.copytree(root / "b", bad)
    data = bytearray((bad / "model_quantized.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bad / "model_quantized.onnx").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "shaper_deploy.cli.main", "serve", str(bad),
                        "--http-port", str(_free_port())], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"Error: {bad / 'model_quantized.onnx'} does not match the sha256 recorded in "
        "shaper.json: the file was altered or corrupted; export the bundle again"]
    r = subprocess.run([sys.executable, "-m", "shaper_deploy.cli.main", "serve", str(root / "b"),
                        "--max-batch", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "--max-batch must be 1..1024" in r.stderr


def test_a_port_in_use_is_one_line_before_the_server_starts(served):
    """The REST port (and the gRPC one) another server listens on: refused with one line,
    exit 1, nothing printed on stdout, the running server untouched."""
    root, port, proc = served
    for flags, line in (
            (["--http-port", str(port)],
             f"Error: cannot listen on 127.0.0.1:{port} (Address already in use); choose "
             "another --http-port"),
            (["--http-port", str(_free_port()), "--grpc-port", str(port)],
             f"Error: cannot listen on 0.0.0.0:{port} (Address already in use); choose "
             "another --grpc-port")):
        r = subprocess.run([sys.executable, "-m", "shaper_deploy.cli.main", "serve",
                            str(root / "b"), *flags, "--json"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1 and r.stdout == "" and r.stderr.strip().splitlines() == [line]
    assert requests.get(_url(port, "/v2/health/ready")).ok and proc.poll() is None


def test_sigterm_drains_requests_in_flight(served):
    root, _, _ = served
    port = _free_port()
    proc = _start([str(root / "b")], port)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [8],
                        "data": ["the model is fast " * 3] * 8}]}
    results: list[int] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            try:
                results.append(requests.post(_url(port, "/v2/models/b/infer"), json=body,
                                             timeout=30).status_code)
            except requests.ConnectionError:
                return  # the server has closed: no new connections after SIGTERM
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    proc.wait(timeout=60)
    assert results and all(code == 200 for code in results), results
    assert proc.returncode == 0
    assert json.loads(proc.stdout.read())["models"][0]["name"] == "b"


def test_two_workers_serve_and_stop(served):
    root, _, _ = served
    port = _free_port()
    proc = _start([str(root / "b"), "--workers", "2"], port)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["the model"]}]}
    codes = [requests.post(_url(port, "/v2/models/b/infer"), json=body, timeout=30).status_code
             for _ in range(6)]
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert codes == [200] * 6 and proc.returncode == 0


def test_grpc_v2_text_and_a_bad_request(served):
    """With --grpc-port, KServe's gRPC endpoint answers V2 as REST does (KServe's own gRPC
    client; tritonclient.grpc's protobufs clash with KServe's in one process): the same
    embeddings as the bundle, and a client's mistake is INVALID_ARGUMENT."""
    import asyncio

    import grpc
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    from shaper_deploy.serving import Bundle

    root, _, _ = served
    port, grpc_port = _free_port(), _free_port()
    proc = _start([str(root / "b"), "--name", "tiny", "--grpc-port", str(grpc_port)], port)
    texts = ["the model is fast", "we deploy bert on device"]

    def request(name: str, values: list[str]) -> InferRequest:
        tensor = InferInput(name, [len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array([v.encode() for v in values], dtype=object))
        return InferRequest(model_name="tiny", infer_inputs=[tensor])

    async def talk():
        async with InferenceGRPCClient(f"127.0.0.1:{grpc_port}", retries=0) as client:
            for _ in range(100):
                try:
                    if await client.is_model_ready("tiny"):
                        break
                except grpc.RpcError:
                    await asyncio.sleep(0.2)
            good = await client.infer(request("text", texts))
            try:
                await client.infer(request("txt", ["x"]))
                bad = None
            except grpc.RpcError as exc:
                bad = exc
            return good, bad, await client.is_server_ready()

    try:
        good, bad, ready = asyncio.run(talk())
        got = good.outputs[0].as_numpy()
        want = Bundle.load(root / "b").embed(texts, "mean", True)
        assert good.outputs[0].name == "embedding" and got.shape == (2, 48)
        assert np.allclose(got, want, atol=1e-5)
        assert bad is not None and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not this model's" in bad.details() and ready
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
