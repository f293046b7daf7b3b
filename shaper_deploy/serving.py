"""Serving an exported bundle with onnxruntime, tokenizers and numpy alone (never torch).

    from shaper_deploy.serving import Bundle
    bundle = Bundle.load("bundle")                 # verifies model.onnx against shaper.json
    vectors = bundle.embed(["a sentence", "another"], pooling="mean", normalize=True)
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bundle import BundleManifest
from .errors import ServingError, check_choice
from .runtime import check_workload, make_session, padded_tokenizer

POOLINGS = ("mean", "cls", "pooler")
MAX_CONCURRENCY = 256  # client threads of bench sharing one session
MAX_TEXT_CHARS = 100_000  # one text; tokenizing more only to cut it at max_length is waste


@dataclass
class Encoded:
    feeds: dict[str, np.ndarray]
    truncated: list[bool] = field(default_factory=list)  # per text: cut to the length limit


def _check_vocabulary(tokenizer, manifest: BundleManifest, where: Path) -> None:
    """Every id the tokenizer can produce must index the model's embeddings."""
    vocab = manifest.design_space["vocab_size"]
    top = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab:
        raise ServingError(f"{where} produces token ids up to {top}, beyond the model's "
                           f"vocabulary of {vocab}; export the bundle again with its own "
                           "tokenizer")


class Bundle:
    """A loaded bundle: a verified ONNX Runtime session plus its tokenizer."""

    def __init__(self, path: Path, manifest: BundleManifest, session, tokenizer,
                 model_file: str):
        self.path, self.manifest, self.session = path, manifest, session
        self.tokenizer, self.model_file = tokenizer, model_file
        self.outputs = [o.name for o in session.get_outputs()]
        # One configured tokenizer per length limit, made once: reconfiguring a shared one on
        # every call raced between threads. ONNX Runtime's session.run is thread-safe.
        self._tokenizers: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def max_length(self) -> int:
        """The longest input in tokens (the model's positions)."""
        return self.manifest.max_length

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", threads: int | None = None,
             model: str | None = None) -> "Bundle":
        """Open a bundle; the ONNX file must match the sha256 recorded in shaper.json."""
        path = Path(path)
        manifest = BundleManifest.read(path)
        model_file = model or manifest.default_model
        onnx_path = manifest.verified(path, model_file)
        for name in manifest.support_files():  # tokenizer, config, any external data
            manifest.verified(path, name)
        session = make_session(onnx_path, device, threads=threads)
        tokenizer = None
        if "tokenizer.json" in manifest.files:
            from tokenizers import Tokenizer

            tok_path = path / "tokenizer.json"
            try:
                tokenizer = Tokenizer.from_file(str(tok_path))
            except Exception as exc:  # tokenizers raises its own untyped errors
                raise ServingError(f"{tok_path} is not a readable tokenizer "
                                   f"({str(exc).splitlines()[0][:120]}); export the bundle "
                                   "again") from None
            _check_vocabulary(tokenizer, manifest, tok_path)
        return cls(path, manifest, session, tokenizer, model_file)

    def encode(self, texts: Sequence[str], max_length: int | None = None,
               pairs: Sequence[str] | None = None) -> Encoded:
        """Token ids, mask and types, padded to the longest text, cut at ``max_length``;
        with ``pairs``, each text is encoded with its second text (text-pair tasks)."""
        if self.tokenizer is None:
            raise ServingError(f"bundle {self.path} has no tokenizer.json, so it cannot take "
                               "text; feed token ids to its session instead")
        if not texts:
            raise ServingError("no text given")
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ServingError(f"text {i + 1} is empty; every text needs some content")
            if len(t) > MAX_TEXT_CHARS:
                raise ServingError(f"text {i + 1} has {len(t):,} characters; at most "
                                   f"{MAX_TEXT_CHARS:,} (the model reads {self.max_length} "
                                   "tokens, a few thousand characters)")
        if pairs is not None:
            if len(pairs) != len(texts):
                raise ServingError(f"{len(texts)} texts but {len(pairs)} second texts; give "
                                   "one pair per text")
            for i, t in enumerate(pairs):
                if not isinstance(t, str) or not t.strip() or len(t) > MAX_TEXT_CHARS:
                    raise ServingError(f"second text {i + 1} is empty or longer than "
                                       f"{MAX_TEXT_CHARS:,} characters")
        limit = min(max_length or self.max_length, self.max_length)
        if limit < 2:
            raise ServingError(f"max length must be at least 2 tokens, got {limit}")
        items = list(texts) if pairs is None else list(zip(texts, pairs))
        enc = self._tokenizer(limit).encode_batch(items)
        return Encoded(self.manifest.family.feeds(enc), [bool(e.overflowing) for e in enc])

    def _tokenizer(self, limit: int):
        with self._lock:
            tok = self._tokenizers.get(limit)
            if tok is None:
                tok = self._tokenizers[limit] = padded_tokenizer(
                    self.tokenizer.to_str(), limit, int(self.manifest.config["pad_token_id"]))
        return tok

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ServingError(f"ONNX Runtime refused the input for bundle {self.path} "
                               f"({first[:160]}); the bundle's graph does not match its "
                               "shaper.json (max_positions, vocabulary): export it again"
                               ) from None

    def embed(self, texts: Sequence[str], pooling: str = "mean", normalize: bool = False,
              batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """One vector per text: masked mean of the last hidden state, its first token's row
        ([CLS], <s>), or the pooler's output."""
        if self.manifest.task != "feature-extraction":
            raise ServingError(f"bundle {self.path} computes {self.manifest.task}, not "
                               "embeddings; use logits() for fill-mask bundles")
        check_choice("pooling", pooling, POOLINGS, ServingError)
        if pooling == "pooler" and "pooler_output" not in self.outputs:
            raise ServingError(f"bundle {self.path} has no pooler; allowed pooling: mean, cls")
        if batch_size < 1:
            raise ServingError(f"batch size must be positive, got {batch_size}")
        out = []
        for start in range(0, len(texts), batch_size):
            enc = self.encode(texts[start:start + batch_size], max_length)
            result = self.run(enc.feeds)
            if pooling == "pooler":
                vec = result["pooler_output"]
            elif pooling == "cls":
                vec = result["last_hidden_state"][:, 0]
            else:
                mask = enc.feeds["attention_mask"][..., None].astype(np.float32)
                vec = (result["last_hidden_state"] * mask).sum(1) / mask.sum(1)
            out.append(vec)
        vectors = np.concatenate(out)
        if normalize:
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
        return vectors

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                 batch_size: int = 32, max_length: int | None = None) -> list[dict[str, Any]]:
        """Per text (or text pair): the label and its probability, and every label's
        probability; for a regression head the score."""
        head = self.manifest.config.get("task_head")
        if self.manifest.task != "text-classification" or not head:
            raise ServingError(f"bundle {self.path} computes {self.manifest.task}, not a "
                               "classification; export a task super network with --task "
                               "text-classification")
        if (pairs is None) != (not head["pair_column"]):
            raise ServingError(f"bundle {self.path} classifies "
                               + ("text pairs: give a second text for each (--pair)"
                                  if head["pair_column"] else "single texts, not pairs"))
        if batch_size < 1:
            raise ServingError(f"batch size must be positive, got {batch_size}")
        answers: list[dict[str, Any]] = []
        for start in range(0, len(texts), batch_size):
            chunk = None if pairs is None else pairs[start:start + batch_size]
            enc = self.encode(texts[start:start + batch_size], max_length, chunk)
            logits = self.run(enc.feeds)["logits"].astype(np.float64)
            if head["problem"] == "regression":
                answers += [{"score": float(row[0])} for row in logits]
                continue
            z = np.exp(logits - logits.max(1, keepdims=True))
            probs = z / z.sum(1, keepdims=True)
            for row in probs:
                best = int(row.argmax())
                answers.append({"label": head["labels"][best], "score": float(row[best]),
                                "scores": {n: float(p) for n, p in zip(head["labels"], row)}})
        return answers

    def fill_mask(self, texts: Sequence[str], top_k: int = 5
                  ) -> list[list[list[tuple[str, float]]]]:
        """Per text, per mask token (BERT's [MASK], RoBERTa's <mask>): the top-k (token,
        probability)."""
        if self.manifest.task != "fill-mask":
            raise ServingError(f"bundle {self.path} computes {self.manifest.task}, not "
                               "masked-token logits")
        enc = self.encode(texts)
        logits = self.run(enc.feeds)["logits"]
        mask_id = self.manifest.family.special_token_id(self.tokenizer, "mask")
        answers = []
        for row, ids in enumerate(enc.feeds["input_ids"]):
            per_text = []
            for pos in np.flatnonzero(ids == mask_id):
                z = logits[row, pos] - logits[row, pos].max()
                p = np.exp(z) / np.exp(z).sum()
                best = np.argsort(-p)[:top_k]
                per_text.append([(self.tokenizer.id_to_token(int(i)), float(p[i])) for i in best])
            answers.append(per_text)
        return answers

    def bench(self, batch: int = 1, seq_len: int = 128, concurrency: int = 1,
              duration: float = 10.0, warmup: int = 5,
              texts: Sequence[str] | None = None,
              percentile: float | None = None) -> dict[str, Any]:
        """Latency percentiles and throughput: ``concurrency`` threads share the session.
        Every request is ``batch`` rows of ``seq_len`` tokens, or, with ``texts``, the next
        ``batch`` of them in turn (cycled), tokenized as served: padded to the request's
        longest, cut at the model's length (``texts`` in the result: their lengths).
        ``percentile``: one more level in ``latency_ms`` (a plan's, e.g. ``p95``)."""
        if batch < 1 or seq_len < 1 or concurrency < 1 or duration <= 0:
            raise ServingError("batch, seq-len and concurrency must be positive, and the "
                               "duration above zero")
        if seq_len > self.max_length:
            raise ServingError(f"seq-len {seq_len} exceeds the model's {self.max_length} positions")
        if concurrency > MAX_CONCURRENCY:
            raise ServingError(f"--concurrency {concurrency} is above {MAX_CONCURRENCY} threads")
        lengths: list[int] = []
        if texts is None:
            check_workload(batch * concurrency, seq_len, self.manifest.design_space)
            requests = [self.manifest.super_config.dummy_inputs(batch, seq_len, padding="none")]
        else:
            check_workload(batch * concurrency, self.max_length, self.manifest.design_space)
            requests = [self.encode(texts[i:i + batch]).feeds
                        for i in range(0, len(texts), batch)]
            lengths = [int(n) for r in requests for n in r["attention_mask"].sum(1)]
        for i in range(warmup):
            self.session.run(self.outputs, requests[i % len(requests)])
        times: list[list[float]] = [[] for _ in range(concurrency)]
        failures: list[str] = []
        stop = time.perf_counter() + duration

        def worker(slot: list[float], start: int) -> None:
            turn = start
            while time.perf_counter() < stop:
                feeds = requests[turn % len(requests)]
                turn += 1
                t = time.perf_counter()
                try:
                    self.session.run(self.outputs, feeds)
                except Exception as exc:  # counted and reported, never silent
                    failures.append(str(exc).splitlines()[0][:200] if str(exc) else
                                    type(exc).__name__)
                    continue
                slot.append((time.perf_counter() - t) * 1000.0)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(slot, k * len(requests) // concurrency))
                   for k, slot in enumerate(times)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
        every = [x for slot in times for x in slot]
        if not every:
            raise ServingError(f"every request failed ({len(failures)}): {failures[0]}"
                               if failures else "no request finished within the duration")
        p50, p99 = float(np.percentile(every, 50)), float(np.percentile(every, 99))
        levels = {} if percentile is None else {f"p{percentile:g}": float(
            np.percentile(every, percentile))}
        return {"batch": batch, "seq_len": seq_len if texts is None else None,
                "concurrency": concurrency,
                "duration_s": round(wall, 3), "requests": len(every),
                "failed": len(failures), "first_failure": failures[0] if failures else None,
                "p99_over_p50": p99 / p50,
                "latency_ms": {"p50": p50, "p90": float(np.percentile(every, 90)), "p99": p99,
                               "mean": statistics.fmean(every), **levels},
                "throughput_rps": len(every) / wall,
                "sequences_per_s": len(every) * batch / wall,
                "model": self.model_file,
                "texts": None if texts is None else {
                    "count": len(texts), "requests": len(requests),
                    "tokens": {"median": float(np.median(lengths)),
                               "p90": float(np.percentile(lengths, 90)),
                               "max": max(lengths)}}}
