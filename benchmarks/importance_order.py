"""What the importance order does to an untrained super network's slices.

A slice keeps the first d features of each layer. The identity super network of
all-MiniLM-L6-v2 (``supernet init --from-hf``) has them in the pretrained model's order;
``train supernet`` (by default) and ``train task --order`` sort them by importance first, an
order per layer; ``supernet init --order`` one residual order shared by every layer, on the
built-in calibration sentences unless given texts (``supernet/rewire.py``).
This measures the slices' fidelity to the full model (mean cosine of mean-pooled final hidden
states over real tokens, as ``export``'s fidelity for feature-extraction) with no training at
all, for each order, measured on one set of texts and judged on another (PyTorch, float32).

    python benchmarks/classifier.py --data-only --out runs/classifier   # the fixed split
    python benchmarks/importance_order.py --supernet runs/minilm-super \\
        --order-texts runs/classifier/data/train.csv --judge-texts runs/classifier/data/validation.csv \\
        --out benchmarks/results/importance_order_minilm.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shaper_deploy.heuristics import cigar_shape  # noqa: E402
from shaper_deploy.shape import Shape  # noqa: E402
from shaper_deploy.supernet import SuperBert, load_supernet  # noqa: E402
from shaper_deploy.supernet.config import TaskHead  # noqa: E402
from shaper_deploy.taskdata import read_task_data  # noqa: E402
from shaper_deploy.fidelity import CALIBRATION_TEXTS  # noqa: E402
from shaper_deploy.supernet.rewire import ORDERS, importance_order, text_inputs  # noqa: E402
from shaper_deploy.training.task import ORDER_TEXTS, encode  # noqa: E402


def pooled(model: SuperBert, inputs: dict[str, torch.Tensor], shape: Shape | None,
           batch: int = 64) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for k in range(0, len(inputs["input_ids"]), batch):
            part = {n: v[k:k + batch] for n, v in inputs.items()}
            h = model(**part, shape=shape).last_hidden_state
            mask = part["attention_mask"].unsqueeze(-1).to(h.dtype)
            out.append((h * mask).sum(1) / mask.sum(1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--order-texts", type=Path, required=True)
    ap.add_argument("--judge-texts", type=Path, required=True)
    ap.add_argument("--judge", type=int, default=512, help="texts judged")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    net = load_supernet(args.supernet).eval()
    space = net.config.space

    def texts(path: Path, n: int) -> dict[str, torch.Tensor]:  # only the texts are used
        data = read_task_data(path)
        head = TaskHead("single_label_classification", tuple(sorted(set(data.labels))))
        return {k: v[:n] for k, v in encode(data, net, head, args.seq_len).inputs.items()}

    order_on, judge_on = texts(args.order_texts, ORDER_TEXTS), texts(args.judge_texts, args.judge)
    full = pooled(net, judge_on, None)
    shapes = {f"{w}x{space.num_layers}": Shape((w,) * space.num_layers, space)
              for w in sorted(space.widths, reverse=True)[1:]}
    for p in (0.9, 0.8, 0.7, 0.6):
        s = cigar_shape(int(p * space.largest.params()), space)
        shapes[f"cigar {s.params() / 1e6:.1f}M"] = s
    builtin = text_inputs(net, CALIBRATION_TEXTS, args.seq_len)
    variants = [(order, order_on, False, "order texts") for order in ORDERS]
    variants += [(order, on, True, texts) for order in ORDERS[1:]
                 for on, texts in ((order_on, "order texts"), (builtin, "built-in sentences"))]
    rows = []
    for order, on, shared, texts in variants:
        model = importance_order(net, on, order, shared=shared)
        label = f"{order}{' shared' if shared else ''}{' builtin' if on is builtin else ''}"
        for name, shape in shapes.items():
            cos = F.cosine_similarity(pooled(model, judge_on, shape), full).mean().item()
            rows.append({"order": order, "shared": shared, "ordered_on": texts,
                         "shape": list(shape.widths), "name": name,
                         "params": shape.params(), "fidelity": round(cos, 4)})
            print(f"{label:30s} {name:12s} {cos:.4f}", file=sys.stderr)
    args.out.write_text(json.dumps({
        "benchmark": "importance_order", "supernet": str(args.supernet),
        "order_texts": f"{ORDER_TEXTS} of {args.order_texts}",
        "judge_texts": f"{args.judge} of {args.judge_texts}", "seq_len": args.seq_len,
        "metric": "mean cosine of mean-pooled final hidden states to the full shape's",
        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
