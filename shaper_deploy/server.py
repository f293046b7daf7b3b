"""Bundles behind KServe's ModelServer: the V1 and Open Inference Protocol (V2) REST and gRPC
endpoints, liveness/readiness, model metadata and Prometheus metrics, in a local process
(``shaperctl serve``) or under KServe on Kubernetes. Torch-free, like all of serving.

Each bundle is one :class:`BundleModel`. A V2 request carries either

* ``text``: BYTES ``[N]`` (UTF-8), answered with ``embedding`` FP32 ``[N, D]`` (mean-pooled,
  unit length) for feature-extraction bundles, or ``fill_mask`` BYTES ``[N]`` (one JSON list
  per text of the top tokens per mask token) for fill-mask bundles, or ``label`` BYTES ``[N]``
  and ``scores`` FP32 ``[N, labels]`` (class probabilities; ``score`` FP32 ``[N]`` for a
  regression) for text-classification bundles of single texts (pair classifiers take the
  graph's inputs); or
* the graph's inputs (``input_ids``, ``attention_mask`` and, for BERT, token types), INT64
  ``[B, S]``, for clients that tokenize themselves, answered with the graph's own outputs.

A V1 request is ``{"instances": ["text", ...]}`` and gets ``{"predictions": [...]}``. Every
mistake of the client is a KServe ``InvalidInput`` (HTTP 400, gRPC INVALID_ARGUMENT) with one
message naming what was wrong and what is allowed; an unknown model is KServe's 404.
"""

from __future__ import annotations

import asyncio
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import kserve  # the serve extra; shaperctl serve says how to install it when it is missing
from kserve import model_server
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse
from kserve.protocol.rest.multiprocess import server as multiprocess

from .bundle import BundleManifest, output_shape
from .errors import ServingError
from .serving import MAX_TEXT_CHARS, Bundle
from .triton import model_names, plan_threads

MAX_BATCH = 1024  # rows per request any server is configured for
DEFAULT_MAX_TEXT_BYTES = 16 * 1024  # a 512-token text is a few KB; 16 KiB is generous


@dataclass(frozen=True)
class ServeOptions:
    max_batch: int = 32  # texts or rows per request
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES  # UTF-8 bytes per text
    threads: int | None = None  # intra-op threads (None: the plan's profile's, else ORT's)
    batch_wait_ms: float = 0.0  # how long a run waits for more text requests to join it

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= MAX_BATCH:
            raise ServingError(f"--max-batch must be 1..{MAX_BATCH}, got {self.max_batch}")
        most = MAX_TEXT_CHARS * 4  # the serving library's own limit, in UTF-8's widest bytes
        if not 1 <= self.max_text_bytes <= most:
            raise ServingError(f"--max-text-bytes must be 1..{most:,}, got "
                               f"{self.max_text_bytes}")
        if not 0 <= self.batch_wait_ms <= 1000:  # NaN fails too
            raise ServingError(f"--batch-wait-ms must be 0..1000, got {self.batch_wait_ms}")


def load_models(bundles: list[Path], names: list[str] | None, options: ServeOptions
                ) -> list[Any]:
    """One loaded, verified :class:`BundleModel` per bundle (before any port is opened)."""
    models = []
    for bundle, name in zip(bundles, model_names(bundles, names)):
        model = BundleModel(name, bundle, options)
        model.load()
        models.append(model)
    return models


class BundleModel(kserve.Model):
    """One bundle as a KServe model."""

    def __init__(self, name: str, path: Path, options: ServeOptions):
        super().__init__(name)
        self.path, self.options = Path(path), options
        self.bundle: Bundle | None = None
        self._queue: asyncio.Queue | None = None  # text requests waiting to share a run

    def __getstate__(self) -> dict:
        """--workers > 1 sends the model to each worker process: without its session, which
        the worker makes again (verifying the bundle again) in __setstate__."""
        return {**self.__dict__, "bundle": None, "_queue": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.ready:
            self.load()

    def load(self) -> bool:
        threads = self.options.threads
        if threads is None:  # the threads its latency was planned with (manifest only)
            plan = BundleManifest.read(self.path).plan
            threads = plan_threads(plan) if plan else None
        self.bundle = Bundle.load(self.path, threads=threads)
        self.ready = True
        return self.ready

    # --- metadata (GET /v2/models/NAME) ---------------------------------------------
    def get_input_types(self) -> list[dict]:
        ids = [{"name": n, "datatype": "INT64", "shape": [-1, -1]}
               for n in self.bundle.manifest.inputs]
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}, *ids]

    def get_output_types(self) -> list[dict]:
        space = self.bundle.manifest.design_space
        head = self.bundle.manifest.config.get("task_head")
        if self.bundle.manifest.task == "feature-extraction":
            text = [{"name": "embedding", "datatype": "FP32", "shape": [-1, space["hidden_size"]]}]
        elif self.bundle.manifest.task == "fill-mask":
            text = [{"name": "fill_mask", "datatype": "BYTES", "shape": [-1]}]
        elif head["problem"] == "regression":
            text = [{"name": "score", "datatype": "FP32", "shape": [-1]}]
        else:
            text = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, len(head["labels"])]}]
        manifest = self.bundle.manifest
        return [*text, *({"name": o, "datatype": "FP32",
                          "shape": output_shape(o, manifest.task, manifest.config)}
                         for o in self.bundle.outputs)]

    # --- inference --------------------------------------------------------------------
    async def predict(self, payload, headers=None, response_headers=None):
        if isinstance(payload, InferRequest):
            outputs = await self._v2(payload)
            # Arrays stay arrays: KServe encodes them once, as JSON or, where the request
            # asks (binary_data_output, or per output; tritonclient's default), in the
            # binary tensor extension, and returns only the outputs the request names.
            return InferResponse(response_id=payload.id or "", model_name=self.name,
                                 infer_outputs=outputs,
                                 use_binary_outputs=payload.use_binary_outputs,
                                 requested_outputs=payload.request_outputs)
        if isinstance(payload, (bytes, bytearray)):
            # KServe hands V1 bodies of another Content-Type over undecoded (curl -d sends
            # application/x-www-form-urlencoded); V2 bodies it decodes whatever their type.
            try:
                payload = json.loads(payload)
            except (ValueError, UnicodeDecodeError):
                kind = (headers or {}).get("content-type", "none")
                raise InvalidInput('a V1 request is JSON, {"instances": ["text", ...]}; this '
                                   f"body (Content-Type {kind:.60}) is not") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
            raise InvalidInput('a V1 request is {"instances": ["text", ...]}')
        texts = [self._text(t, i) for i, t in enumerate(payload["instances"])]
        result = await self._texts(texts)
        return {"predictions": result.tolist() if isinstance(result, np.ndarray)
                else result}

    async def _v2(self, request) -> list:
        given = [i.name for i in request.inputs]
        if given == ["text"]:
            tensor = request.inputs[0]
            if tensor.datatype != "BYTES":
                raise InvalidInput(f"input 'text' must be BYTES, got {tensor.datatype}")
            if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2
                                                  and tensor.shape[1] != 1):
                raise InvalidInput(f"input 'text' must have shape [N] or [N, 1], got "
                                   f"{tensor.shape}")
            try:  # JSON data or the binary extension alike
                raw = list(tensor.as_numpy().reshape(-1))
            except (ValueError, TypeError) as exc:
                raise InvalidInput(f"input 'text' has shape {tensor.shape} but its data do not "
                                   f"fill it ({str(exc)[:80]})") from None
            texts = [self._text(t, i) for i, t in enumerate(raw)]
            head = self.bundle.manifest.config.get("task_head")
            if head and head["pair_column"]:
                raise InvalidInput("this model classifies text pairs: send the graph's inputs "
                                   "(input_ids, attention_mask, ...) of each tokenized pair")
            result = await self._texts(texts)
            if isinstance(result, np.ndarray):
                return [_output(request, "embedding", result)]
            if self.bundle.manifest.task == "text-classification":
                head = self.bundle.manifest.config["task_head"]
                if head["problem"] == "regression":
                    return [_output(request, "score",
                                    np.array([r["score"] for r in result], np.float32))]
                return [InferOutput("label", [len(result)], "BYTES",
                                    data=[r["label"] for r in result]),
                        _output(request, "scores", np.array(
                            [[r["scores"][n] for n in head["labels"]] for r in result],
                            np.float32))]
            return [InferOutput("fill_mask", [len(result)], "BYTES",
                                data=[json.dumps(r) for r in result])]
        if "input_ids" in given and "attention_mask" in given and set(given) <= set(
                self.bundle.manifest.inputs):
            feeds = {t.name: self._ids(t) for t in request.inputs}
            shapes = {a.shape for a in feeds.values()}
            if len(shapes) != 1:
                raise InvalidInput(f"inputs {', '.join(given)} must share one shape "
                                   f"[B, S]; got {sorted(shapes)}")
            b, s = shapes.pop()
            for name in self.bundle.manifest.inputs:
                feeds.setdefault(name, np.zeros((b, s), np.int64))
            self._check_ids(feeds)
            result = await asyncio.to_thread(self.bundle.run, feeds)
            outs = []
            for name, value in result.items():
                outs.append(_output(request, name, value))
            return outs
        allowed = ", ".join(self.bundle.manifest.inputs)
        raise InvalidInput(f"inputs {given} are not this model's: send 'text' (BYTES [N]) "
                           f"or input_ids and attention_mask (INT64 [B, S]; all of "
                           f"{allowed})")

    def _text(self, value: Any, index: int) -> str:
        if isinstance(value, (bytes, np.bytes_)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(f"text {index + 1} is not UTF-8 (byte {exc.start})"
                                   ) from None
        if not isinstance(value, str):
            raise InvalidInput(f"text {index + 1} must be a string, got "
                               f"{type(value).__name__}")
        size = len(value.encode("utf-8"))
        if size > self.options.max_text_bytes:
            raise InvalidInput(f"text {index + 1} is {size:,} bytes; this server takes "
                               f"at most {self.options.max_text_bytes:,} (--max-text-bytes)")
        if not value.strip():
            raise InvalidInput(f"text {index + 1} is empty; every text needs some content")
        return value

    async def _texts(self, texts: list[str]):
        if not texts:
            raise InvalidInput("no text given; send at least one")
        if len(texts) > self.options.max_batch:
            raise InvalidInput(f"{len(texts)} texts in one request; this server takes at "
                               f"most {self.options.max_batch} (--max-batch)")
        if self._queue is None:
            self._queue = asyncio.Queue()
            asyncio.get_running_loop().create_task(self._batcher())
        done = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, done))
        return await done

    def _compute(self, texts: list[str]):
        if self.bundle.manifest.task == "fill-mask":
            return self.bundle.fill_mask(texts)
        if self.bundle.manifest.task == "text-classification":
            return self.bundle.classify(texts)
        return self.bundle.embed(texts, "mean", True)

    async def _batcher(self) -> None:
        """Text requests share runs: one run at a time, each taking every request that
        arrived while the last one ran (and, with batch_wait_ms, those arriving that much
        later), up to max_batch texts. Measured for MiniLM on 2 cores: 4 texts per run
        give 1.7x the texts/s of one run per request (benchmarks/serve_batching.py)."""
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first, carry = carry or await self._queue.get(), None
            jobs, size = [first], len(first[0])
            deadline = loop.time() + self.options.batch_wait_ms / 1000
            while size < self.options.max_batch:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                if size + len(job[0]) > self.options.max_batch:
                    carry = job  # too big to join: it starts the next run
                    break
                jobs.append(job)
                size += len(job[0])
            await self._run(jobs)

    async def _run(self, jobs) -> None:
        texts = [t for job, _ in jobs for t in job]
        try:
            result = await asyncio.to_thread(self._compute, texts)
        except ServingError as exc:  # e.g. a fill-mask text without a mask: one at a time
            if len(jobs) > 1:
                for job in jobs:
                    await self._run([job])
                return
            jobs[0][1].set_exception(InvalidInput(str(exc)))
            return
        except Exception as exc:  # never leave a client waiting
            for _, done in jobs:
                if not done.done():
                    done.set_exception(exc)
            return
        start = 0
        for job, done in jobs:
            if not done.done():
                done.set_result(result[start:start + len(job)])
            start += len(job)

    def _ids(self, tensor) -> np.ndarray:
        if tensor.datatype not in ("INT64", "INT32"):
            raise InvalidInput(f"input {tensor.name!r} must be INT64, got {tensor.datatype}")
        if len(tensor.shape) != 2:
            raise InvalidInput(f"input {tensor.name!r} must have shape [B, S], got "
                               f"{tensor.shape}")
        b, s = tensor.shape
        if not 1 <= b <= self.options.max_batch or not 1 <= s <= self.bundle.max_length:
            raise InvalidInput(f"input {tensor.name!r} is [{b}, {s}]; allowed: 1.."
                               f"{self.options.max_batch} rows (--max-batch) of 1.."
                               f"{self.bundle.max_length} tokens (the model's positions)")
        try:
            return tensor.as_numpy().astype(np.int64).reshape(b, s)
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"input {tensor.name!r} does not hold {b} x {s} integers "
                               f"({exc})") from None

    def _check_ids(self, feeds: dict[str, np.ndarray]) -> None:
        space = self.bundle.manifest.design_space
        limits = {"input_ids": space["vocab_size"], "attention_mask": 2}
        for name, array in feeds.items():  # token types: ids of the model's table
            limits.setdefault(name, space["type_vocab_size"])
            if array.size and (array.min() < 0 or array.max() >= limits[name]):
                raise InvalidInput(f"input {name!r} holds values outside 0.."
                                   f"{limits[name] - 1}")
        if not feeds["attention_mask"][:, 0].all():
            raise InvalidInput("attention_mask must be 1 at the first token of every row")



def _output(request, name: str, array: np.ndarray) -> InferOutput:
    """An FP32 output. Over REST it stays an array, which KServe encodes once as the request
    asks (JSON or the binary extension); over gRPC it is a list, which KServe 0.21's
    ``to_grpc`` needs (an array there fails a truth test: a 500 on every raw-input request)."""
    array = array.astype(np.float32)
    if request.from_grpc:
        out = InferOutput(name, list(array.shape), "FP32")
        out.set_data_from_numpy(array, binary_data=False)
        return out
    return InferOutput(name, list(array.shape), "FP32", data=array)


class BoundRESTServer(model_server.RESTServer):
    """KServe's REST server on one interface (KServe binds every one, with no setting)."""

    host = "127.0.0.1"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config.host = self.host


def check_ports(host: str, http_port: int, grpc_port: int | None) -> None:
    """Fail with one line if a port the server needs cannot be bound now (in use, not
    allowed, an address this machine does not have): once the server starts, uvicorn and
    gRPC only log such a failure among their own lines. The REST port is tried on ``host``,
    the gRPC port on every interface (where KServe binds it); with SO_REUSEADDR, as uvicorn
    binds, so only a port another socket listens on is refused. A port taken between this
    check and the server's start still fails there."""
    import errno
    import socket

    for where, port, flag in ((host, http_port, "--http-port"),
                              *((("0.0.0.0", grpc_port, "--grpc-port"),) if grpc_port else ())):
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                where, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as exc:
            raise ServingError(f"--host {where!r} is not an address of this machine "
                               f"({exc.strerror}); give one, e.g. 127.0.0.1 or 0.0.0.0") from None
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                fix = ("give an address of this machine as --host, e.g. 127.0.0.1 or 0.0.0.0"
                       if exc.errno == errno.EADDRNOTAVAIL else f"choose another {flag}")
                raise ServingError(f"cannot listen on {where}:{port} ({exc.strerror}); "
                                   f"{fix}") from None


def serve(models: list[Any], host: str, http_port: int, grpc_port: int | None,
          workers: int = 1) -> None:
    """Run KServe's ModelServer on ``host`` until SIGTERM/SIGINT (in-flight requests drain).

    KServe binds its REST server to every interface; it is bound to ``host`` here. Its gRPC
    server binds every interface (``[::]``) whatever the host: it is off unless
    ``grpc_port`` is given.
    """
    BoundRESTServer.host = host
    model_server.RESTServer = multiprocess.RESTServer = BoundRESTServer
    server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port or 8081,
                                workers=workers, enable_grpc=grpc_port is not None,
                                enable_latency_logging=False, grace_period=30)
    _logs_to_stderr()  # stdout holds the one document the command printed
    # KServe's V2 routes return FastAPI's ORJSONResponse, which FastAPI deprecates with a
    # warning on the first request: not the user's to act on.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    server.start(models)


def _logs_to_stderr() -> None:
    """KServe's logging configuration sends uvicorn's access log to stdout; move every
    stream handler that writes there to stderr."""
    import logging
    import sys

    loggers = [logging.getLogger(),
               *(logging.getLogger(n) for n in logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)


