"""Fusing the bottlenecks of a sliced sub-network into its deployment form.

Output bottleneck i and input bottleneck i+1 are two affine maps back to back with nothing in
between, so they are one ``d_i -> d_{i+1}`` map (paper, Appendix C)::

    W = W_in(i+1) @ W_out(i)        b = W_in(i+1) @ b_out(i) + b_in(i+1)

The first input bottleneck (D -> d_1) and the last output bottleneck (d_L -> D) stay. One step
past the paper: when only a head's output is wanted, the last output bottleneck is folded into
the head's first dense layer as well (``fold_last=True``), since the MLM transform and the
pooler both begin with an affine map of the D-wide state. Before export, projections that are
exactly identities are dropped, after the input and output projections' permutations (a super
network ordered by importance has them) are moved into the layers next to them.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from .errors import ExportError
from .shape import Shape, identity_projections
from .slicing import SubnetBert
from .supernet.config import SuperConfig
from .supernet.modules import (ClassifierHead, MLMHead, Pooler, TransformerLayer, attention_bias,
                               embeddings_for)


class FusedOutput(NamedTuple):
    last_hidden_state: torch.Tensor | None  # (B, S, D); None when folded into a head
    pooler_output: torch.Tensor | None  # (B, D)


def _compose(first: nn.Linear, second: nn.Linear) -> nn.Linear:
    """One Linear computing ``second(first(x))``; products in float64, stored in float32."""
    w1, b1 = first.weight.double(), first.bias.double()
    w2, b2 = second.weight.double(), second.bias.double()
    fused = nn.Linear(w1.shape[1], w2.shape[0])
    with torch.no_grad():
        fused.weight.copy_(w2 @ w1)
        fused.bias.copy_(w2 @ b1 + b2)
    return fused


class FusedBert(nn.Module):
    """The deployment network: D -> d_1, L layers joined by d_i -> d_{i+1}, d_L -> D."""

    def __init__(self, config: SuperConfig, shape: Shape, fold_last: bool = False):
        super().__init__()
        s = config.space
        w = shape.widths
        self.config, self.shape, self.fold_last = config, shape, fold_last
        self.embeddings = embeddings_for(config, dropout=0.0)
        self.proj_in = nn.Linear(s.hidden_size, w[0])
        self.layers = nn.ModuleList(
            TransformerLayer(d, s.num_heads, s.intermediate_size, config.hidden_act,
                             config.layer_norm_eps, 0.0) for d in w)
        self.transitions = nn.ModuleList(nn.Linear(a, b) for a, b in zip(w[:-1], w[1:]))
        self.proj_out = None if fold_last else nn.Linear(w[-1], s.hidden_size)
        # With fold_last the heads read the d_L-wide state directly.
        head_in = w[-1] if fold_last else s.hidden_size
        self.pooler = Pooler(s.hidden_size, head_in) if config.pooler else None
        self.mlm_head = (MLMHead(s.hidden_size, s.vocab_size,
                                 config.family.mlm_act(config.hidden_act),
                                 config.layer_norm_eps, head_in) if s.mlm_head else None)
        self.classifier = (ClassifierHead(head_in, config.task_head.num_outputs)
                           if config.task_head is not None else None)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
               token_type_ids: torch.Tensor | None) -> torch.Tensor:
        """The encoder's final state: (B, S, D), or (B, S, d_L) when folded."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = attention_bias(attention_mask, x.dtype)
        x = self.proj_in(x)
        for i, layer in enumerate(self.layers):
            if i:
                x = self.transitions[i - 1](x)
            x = layer(x, bias)
        return x if self.proj_out is None else self.proj_out(x)  # proj_out may be an Identity

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> FusedOutput:
        x = self.encode(input_ids, attention_mask, token_type_ids)
        pooled = self.pooler(x) if self.pooler is not None else None
        return FusedOutput(None if self.fold_last else x, pooled)

    def task_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.classifier is None:
            raise ExportError("this network has no task head; the text-classification task "
                              "needs a task super network (shaperctl train task)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.encode(input_ids, attention_mask, token_type_ids)
        return self.classifier(x, attention_mask)

    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.mlm_head is None:
            raise ExportError("this network has no MLM head; the fill-mask task needs a model "
                              "with one")
        x = self.encode(input_ids, attention_mask, token_type_ids)
        return self.mlm_head(x, self.embeddings.word.weight)


def _is_identity(linear: nn.Module) -> bool:
    if not isinstance(linear, nn.Linear) or linear.in_features != linear.out_features:
        return False
    eye = torch.eye(linear.in_features, dtype=linear.weight.dtype)
    return bool(torch.equal(linear.weight, eye) and not linear.bias.any())


def _index_of(linear: nn.Module | None) -> Order:
    """``index`` when ``linear`` is exactly a square permutation with zero bias (output
    feature r is input feature ``index[r]``: :func:`_permutation`), else None."""
    return _permutation(linear.weight, linear.bias) if isinstance(linear, nn.Linear) else None


def _runs(fused: FusedBert) -> tuple[range, range]:
    """The layers joined to the first one (and to the last one) by exact identities, every
    one of the model's width: the first and last runs a permutation can be moved through."""
    L, D = len(fused.layers), fused.config.space.hidden_size
    joined = [fused.shape.widths[i] == D and fused.shape.widths[i + 1] == D
              and _is_identity(fused.transitions[i]) for i in range(L - 1)]
    first = next((i for i, j in enumerate(joined) if not j), L - 1) + 1
    last = L - 1 - next((i for i, j in enumerate(reversed(joined)) if not j), L - 1)
    return range(first), range(last, L)


def _rebase(fused: FusedBert, run: range, order: Sequence[int]) -> None:
    """Express the layers of ``run`` in another order of their features (feature j of the
    new state is feature ``order[j]`` of the old): a post-LN layer computes the same in any
    order of its state's features once its weights follow (input columns of the query, key,
    value and FFN matrices; output rows, biases and LayerNorms of the attention output and
    FFN output), and so do the matrices into and out of the run (those within it are
    identities, which stay so: P I P^T = I). Exact: every number is only moved."""
    p = torch.tensor(order)
    last = len(fused.layers) - 1
    reading = ([fused.proj_out] if fused.proj_out is not None else
               [m for m in (fused.pooler and fused.pooler.dense,
                            fused.mlm_head and fused.mlm_head.transform,
                            fused.classifier and fused.classifier.out) if m is not None])
    into = [fused.proj_in if run.start == 0 else fused.transitions[run.start - 1]]
    out = reading if run.stop - 1 == last else [fused.transitions[run.stop - 1]]
    with torch.no_grad():
        for i in run:
            layer = fused.layers[i]
            into.append(layer.attn_out)
            into.append(layer.ffn_out)
            out += [layer.query, layer.key, layer.value, layer.ffn_in]
            for norm in (layer.attn_norm, layer.ffn_norm):
                norm.weight.copy_(norm.weight[p])
                norm.bias.copy_(norm.bias[p])
        for m in into:
            m.weight.copy_(m.weight[p])
            m.bias.copy_(m.bias[p])
        for m in out:
            m.weight.copy_(m.weight[:, p])


def align_orders(fused: FusedBert) -> None:
    """Move the permutation of the output projection (and of the input one) into the layers
    next to it, where it costs nothing, so that the projection becomes the identity.

    A super network whose features were ordered by importance (``supernet init --order``)
    has permutations for bottlenecks: at the full shape the transitions are ``P P^T = I``,
    but the input and output projections are P and P^T, two D x D matrices that computed
    nothing but an order, cost 1.8-3.2% of the full MiniLM's latency on 2 cores, and in int8
    rounded the embeddings and the final state to 8 bits (docs/benchmarks.md). The last run
    of full-width layers takes the output projection's order, and then the first run takes
    the input projection's (the same run at the full shape, where one order is both). A
    permutation in a transition that stays a matrix costs nothing more."""
    first, last = _runs(fused)
    out_order = _index_of(fused.proj_out)
    if out_order is not None and not _is_identity(fused.proj_out):
        _rebase(fused, last, out_order)
    in_order = _index_of(fused.proj_in)
    if in_order is None or _is_identity(fused.proj_in):
        return
    if first.stop == len(fused.layers) and out_order is not None:
        return  # one run, ordered by the output projection: the input one keeps the rest
    _rebase(fused, first, torch.tensor(in_order).argsort().tolist())  # the inverse order


def drop_identities(fused: FusedBert) -> list[str]:
    """Replace every projection that is exactly the identity with zero bias by nothing,
    after moving the input and output projections' permutations into the layers
    (:func:`align_orders`).

    A super network made from a BERT starts with identity bottlenecks, so at the full shape
    every transition is ``I @ I = I`` (computed in float64, exact in float32): computing them
    cost 8-12% of the latency of the plain BERT graph. Only exact identities are dropped, so
    outputs are those of the unpruned network (bit-for-bit, up to the order of the sums the
    moved permutations change). Returns the dropped modules' names.
    """
    align_orders(fused)
    dropped = []
    for name in ("proj_in", "proj_out"):
        if _is_identity(getattr(fused, name)):
            setattr(fused, name, nn.Identity())
            dropped.append(name)
    for i, t in enumerate(fused.transitions):
        if _is_identity(t):
            fused.transitions[i] = nn.Identity()
            dropped.append(f"transitions.{i}")
    return dropped


def fuse_bottlenecks(subnet: SubnetBert, fold_last: bool = False) -> FusedBert:
    """The deployment form of ``subnet``: same outputs, fewer matrices; ``subnet`` untouched.

    Parameters of the result = ``param_count(shape, fused=True)`` (embeddings, layers, fused
    bottleneck chain, MLM transform) + the MLM decoder bias (vocab) + the pooler (D*D + D), the
    two parts the paper's convention leaves out. ``fold_last`` removes the last output
    bottleneck (d_L*D + D) and changes each head's first dense layer from D x D to D x d_L.
    """
    fused = FusedBert(subnet.config, subnet.shape, fold_last=fold_last)
    layers = subnet.layers
    with torch.no_grad():
        fused.embeddings.load_state_dict(subnet.embeddings.state_dict())
        fused.proj_in.load_state_dict(layers[0].input_bottleneck.state_dict())
        for i, layer in enumerate(layers):
            fused.layers[i].load_state_dict(layer.layer.state_dict())
            if i + 1 < len(layers):
                fused.transitions[i].load_state_dict(
                    _compose(layer.output_bottleneck, layers[i + 1].input_bottleneck).state_dict())
        last = layers[-1].output_bottleneck
        if fused.proj_out is not None:
            fused.proj_out.load_state_dict(last.state_dict())
        if fused.pooler is not None:
            dense = subnet.pooler.dense
            fused.pooler.dense.load_state_dict(
                (_compose(last, dense) if fold_last else dense).state_dict())
        if fused.mlm_head is not None:
            head = subnet.mlm_head
            fused.mlm_head.norm.load_state_dict(head.norm.state_dict())
            fused.mlm_head.bias.copy_(head.bias)
            fused.mlm_head.transform.load_state_dict(
                (_compose(last, head.transform) if fold_last else head.transform).state_dict())
        if fused.classifier is not None:  # the mean commutes with the affine d_L -> D map
            out = subnet.classifier.out
            fused.classifier.out.load_state_dict(
                (_compose(last, out) if fold_last else out).state_dict())
    return fused.eval()


Order = Optional[tuple[int, ...]]  # a bottleneck's feature order, when it is a permutation


def _permutation(weight: torch.Tensor, bias: torch.Tensor) -> Order:
    """``p`` when ``weight`` (out x in, square) has exactly one 1 per row, at column p[row],
    zeros elsewhere, and the bias is zero; else None."""
    n = weight.shape[0]
    if weight.shape[1] != n or bias.any():
        return None
    p = weight.argmax(1)
    if len(set(p.tolist())) != n:
        return None
    eye = torch.zeros_like(weight)
    eye[torch.arange(n), p] = 1
    return tuple(p.tolist()) if torch.equal(weight, eye) else None


def bottleneck_orders(supernet) -> list[tuple[Order, Order]]:
    """Per layer of a super network, the permutations its input and output bottlenecks are
    (None: a dense matrix, as in a trained network). A network made from a BERT has
    identities; ``supernet init --order`` one order P in (input rows) and out (output
    columns) of every layer."""
    return [(_permutation(layer.input_bottleneck.weight, layer.input_bottleneck.bias),
             _permutation(layer.output_bottleneck.weight.T, layer.output_bottleneck.bias))
            for layer in supernet.layers]


def dropped_projections(orders: list[tuple[Order, Order]], shape) -> list[str]:
    """What :func:`drop_identities` removes from ``shape``'s fused network, from the super
    network's :func:`bottleneck_orders` alone. Only square projections can be identities
    (:func:`~shaper_deploy.shape.identity_projections`). The transition between layers i and
    i + 1 (both of width d) is one when their first d features are the same:
    ``P_{i+1}[:d] @ P_i^T[:, :d] = I`` exactly when the two orders agree there. The output
    projection is one whenever the last output bottleneck is a permutation
    (:func:`align_orders` moves it into the layers), and the input projection whenever the
    first input bottleneck is one, unless every layer is one run joined by identities with a
    permutation at the output, which then orders that run: the input one is the identity
    exactly when the two orders are the same."""
    widths, D = shape.widths, shape.space.hidden_size

    def joined(i: int) -> bool:  # transitions.i = output of layer i, input of i + 1
        out, into, d = orders[i][1], orders[i + 1][0], widths[i]
        return out is not None and into is not None and out[:d] == into[:d]

    order_in, order_out = orders[0][0], orders[-1][1]
    one_run = set(widths) == {D} and all(joined(i) for i in range(len(widths) - 1))

    def is_dropped(name: str) -> bool:
        if name == "proj_out":
            return order_out is not None
        if name == "proj_in":
            return order_in is not None and (not one_run or order_out is None
                                             or order_in == order_out)
        return joined(int(name.split(".")[1]))

    return [n for n in identity_projections(shape) if is_dropped(n)]
