"""Importance-ordered super networks: the leading slice of every width keeps what matters.

Slicing keeps the *first* d features of a layer (SPEC section 2). A super network made from a
pretrained BERT has its features in no useful order, so a slice keeps an arbitrary d of them.
Network rewiring (DynaBERT; the SuperShaper repository's ``--rewire``) reorders them first,
measured on a little text:

* the residual features inside each layer (the input bottleneck's rows, the attention and FFN
  weights on the residual side, the LayerNorms, the output bottleneck's columns), by their
  energy E[h_j^2] at the layer's input plus at its output;
* the attention heads, by the energy of their contribution to the attention output; within a
  head, the query/key dimensions by E[q_j^2] E[k_j^2] and the value dimensions by E[v_j^2]
  times the norm of their column in the output projection.

Each is a permutation applied together with its inverse on the other side (bottlenecks,
LayerNorms, the query/key pair, the value/output pair), so the full shape computes exactly
what it computed before (tested); only what a slice keeps changes.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from ..errors import ShaperError, check_choice
from .config import ORDERS
from .model import SuperBert
from .modules import BottleneckLayer


def _stats(model: SuperBert, ids: torch.Tensor | dict[str, torch.Tensor], batch: int
           ) -> list[dict[str, torch.Tensor]]:
    """Per layer, the sums of squares of the features the permutations act on (full shape),
    over the tokens the attention mask keeps (padding counts nothing)."""
    inputs = ids if isinstance(ids, dict) else {"input_ids": ids}
    stats: list[dict[str, torch.Tensor]] = [{} for _ in model.layers]
    hooks = []
    keep: list[torch.Tensor | None] = [None]  # the batch's token mask, (B * S, 1)

    def add(i: int, name: str, x: torch.Tensor) -> None:
        sq = x.detach().double().pow(2).reshape(-1, x.shape[-1])
        if keep[0] is not None:
            sq = sq * keep[0]
        stats[i][name] = stats[i].get(name, 0) + sq.sum(0)

    for i, block in enumerate(model.layers):
        t = block.layer
        hooks += [
            t.register_forward_pre_hook(lambda m, a, i=i: add(i, "in", a[0])),
            t.register_forward_hook(lambda m, a, out, i=i: add(i, "out", out)),
            t.query.register_forward_hook(lambda m, a, out, i=i: add(i, "q", out)),
            t.key.register_forward_hook(lambda m, a, out, i=i: add(i, "k", out)),
            t.value.register_forward_hook(lambda m, a, out, i=i: add(i, "v", out)),
            t.attn_out.register_forward_pre_hook(lambda m, a, i=i: add(i, "ctx", a[0])),
        ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k in range(0, len(inputs["input_ids"]), batch):
                part = {name: v[k:k + batch] for name, v in inputs.items()}
                mask = part.get("attention_mask")
                keep[0] = None if mask is None else mask.reshape(-1, 1).double()
                model(**part)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats


def _permute_residual(block: BottleneckLayer, p: torch.Tensor) -> None:
    t = block.layer
    block.input_bottleneck.weight.copy_(block.input_bottleneck.weight[p])
    block.input_bottleneck.bias.copy_(block.input_bottleneck.bias[p])
    for lin in (t.query, t.key, t.value, t.ffn_in):  # the residual is their input
        lin.weight.copy_(lin.weight[:, p])
    for lin in (t.attn_out, t.ffn_out):  # ... and their output
        lin.weight.copy_(lin.weight[p])
        lin.bias.copy_(lin.bias[p])
    for norm in (t.attn_norm, t.ffn_norm):
        norm.weight.copy_(norm.weight[p])
        norm.bias.copy_(norm.bias[p])
    block.output_bottleneck.weight.copy_(block.output_bottleneck.weight[:, p])


def _permute_heads(block: BottleneckLayer, qk: torch.Tensor, v: torch.Tensor) -> None:
    t = block.layer
    for lin, p in ((t.query, qk), (t.key, qk), (t.value, v)):
        lin.weight.copy_(lin.weight[p])
        lin.bias.copy_(lin.bias[p])
    t.attn_out.weight.copy_(t.attn_out.weight[:, v])


def _descending(score: torch.Tensor) -> torch.Tensor:
    # stable, so equal scores (e.g. dead features) keep their order and the result is unique
    return torch.sort(-score, stable=True).indices


def _head_orders(t, s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    H, w = t.num_heads, t.width
    hs = w // H
    out_norm = t.attn_out.weight.detach().double().pow(2).sum(0)  # per ctx feature
    contribution = (s["ctx"] * out_norm).view(H, hs)
    order = _descending(contribution.sum(1))  # heads, most important first
    qk_score = (s["q"] * s["k"]).view(H, hs)
    v_score = (s["v"] * out_norm).view(H, hs)
    qk = torch.cat([h * hs + _descending(qk_score[h]) for h in order.tolist()])
    v = torch.cat([h * hs + _descending(v_score[h]) for h in order.tolist()])
    return qk, v


def text_inputs(model: SuperBert, texts: Sequence[str], seq_len: int = 128
                ) -> dict[str, torch.Tensor]:
    """The model's inputs for ``texts`` (cut at ``seq_len`` tokens, padded to the longest,
    with the attention mask), through its own tokenizer."""
    from ..runtime import model_tokenizer, text_feeds

    tok = model_tokenizer(model.config, model.tokenizer_files, seq_len)
    if tok is None:
        raise ShaperError("the super network has no tokenizer.json, which ordering its "
                          "features on text needs")
    feeds = text_feeds(model.config, tok, texts)
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def importance_order(model: SuperBert, ids: torch.Tensor | dict[str, torch.Tensor],
                     order: str = "residual+heads", batch: int = 32,
                     progress: Callable[[str], None] | None = None,
                     shared: bool = False) -> SuperBert:
    """A copy of ``model`` with every layer's features sorted by importance on ``ids``
    (token blocks, (N, S); or the model's inputs by name, padded texts with their
    ``attention_mask``, whose padding is not counted); the full shape's outputs are
    unchanged.

    ``shared``: one residual order for every layer, by the energies summed over the layers
    (``supernet init --order``). Identity bottlenecks then become one permutation P in and
    its inverse out of every layer, so between two layers of equal width the fused
    transition stays exactly the identity and export still drops it: the order costs no
    latency there (measured on all-MiniLM-L6-v2: slices keep as much as with an order per
    layer). Only the input projection and, at width D, the output one become P's."""
    check_choice("order", order, ORDERS)
    out = copy.deepcopy(model)
    if order == "none":
        return out
    stats = _stats(out, ids, batch)
    one = _descending(sum(s["in"] + s["out"] for s in stats)) if shared else None
    with torch.no_grad():
        for block, s in zip(out.layers, stats):
            if order == "residual+heads":
                _permute_heads(block, *_head_orders(block.layer, s))
            _permute_residual(block, one if one is not None else _descending(s["in"] + s["out"]))
    if progress:
        n = len(ids["input_ids"] if isinstance(ids, dict) else ids)
        progress(f"ordered the features of {len(out.layers)} layers by importance on "
                 f"{n} {'texts' if isinstance(ids, dict) else 'blocks'} ({order}"
                 f"{', one residual order shared by the layers' if shared else ''})")
    out.source = {**model.source, "importance_order": order,
                  **({"importance_order_shared": True} if shared else {})}
    return out
