"""Plain BERT building blocks at any width, shared by the super network and its slices.

Every block computes with its own weights; a block of the super network may be asked to run
at a smaller width, in which case it uses the leading rows and columns of each weight (SPEC
section 2) as views, so gradients flow into the shared super weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..shape import DesignSpace


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT_FNS = {"gelu": F.gelu, "gelu_new": _gelu_tanh, "relu": F.relu}


def _linear(layer: nn.Linear, x: torch.Tensor, out: int | None = None,
            inp: int | None = None) -> torch.Tensor:
    """``layer`` applied with its leading ``out`` rows and ``inp`` columns (None: all)."""
    if out is None and inp is None:
        return layer(x)
    return F.linear(x, layer.weight[:out, :inp], layer.bias[:out])


def _layer_norm(norm: nn.LayerNorm, x: torch.Tensor, width: int | None) -> torch.Tensor:
    if width is None:
        return norm(x)
    return F.layer_norm(x, (width,), norm.weight[:width], norm.bias[:width], norm.eps)


def attention_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) mask of 1 = token, 0 = padding -> (B, 1, 1, S) additive bias for the scores."""
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


class Embeddings(nn.Module):
    """Word + position (+ token type) embeddings, LayerNorm, dropout; always D wide.

    Positions count from 0 (BERT), or as RoBERTa numbers them when ``padding_idx`` is given:
    from ``padding_idx + 1`` over the non-padding ids, padding at ``padding_idx``. A family
    without token types (``type_vocab_size`` 0) has no table; one whose graph is not fed them
    adds its table's first row to every token.
    """

    def __init__(self, space: DesignSpace, eps: float, dropout: float,
                 padding_idx: int | None = None):
        super().__init__()
        D = space.hidden_size
        self.word = nn.Embedding(space.vocab_size, D)
        self.position = nn.Embedding(space.max_positions, D)
        self.token_type = nn.Embedding(space.type_vocab_size, D) if space.type_vocab_size else None
        self.norm = nn.LayerNorm(D, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.padding_idx = padding_idx
        self.register_buffer("position_ids", torch.arange(space.max_positions)[None, :],
                             persistent=False)

    def positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.padding_idx is None:
            return self.position_ids[:, : input_ids.shape[1]]
        real = input_ids.ne(self.padding_idx).to(input_ids.dtype)
        return torch.cumsum(real, dim=1) * real + self.padding_idx

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
                ) -> torch.Tensor:
        x = self.word(input_ids)
        if self.token_type is not None:  # added before positions, as Hugging Face does
            x = x + (self.token_type.weight[0] if token_type_ids is None
                     else self.token_type(token_type_ids))
        x = x + self.position(self.positions(input_ids))
        return self.dropout(self.norm(x))  # (B, S, D)


def embeddings_for(config, dropout: float | None = None) -> Embeddings:
    """The embeddings of a network of ``config`` (a SuperConfig), positions numbered as its
    family numbers them; ``dropout`` None: the config's."""
    pad = config.pad_token_id if config.family.padding_positions else None
    return Embeddings(config.space, config.layer_norm_eps,
                      config.dropout if dropout is None else dropout, pad)


class TransformerLayer(nn.Module):
    """A post-LN BERT layer computed entirely at width d (SPEC section 1, step 2).

    ``num_heads`` heads of size d / num_heads; the FFN is d -> F -> d; both residuals are
    inside the layer at width d.
    """

    def __init__(self, width: int, num_heads: int, ffn_size: int, act: str, eps: float,
                 dropout: float):
        super().__init__()
        self.width, self.num_heads, self.ffn_size = width, num_heads, ffn_size
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.attn_norm = nn.LayerNorm(width, eps=eps)
        self.ffn_in = nn.Linear(width, ffn_size)
        self.ffn_out = nn.Linear(ffn_size, width)
        self.ffn_norm = nn.LayerNorm(width, eps=eps)
        self.act = ACT_FNS[act]
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor, head_size: int) -> torch.Tensor:
        # (B, S, d) -> (B, heads, S, d / heads); heads are contiguous chunks of the features.
        return x.view(x.size()[:-1] + (self.num_heads, head_size)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, width: int | None = None
                ) -> torch.Tensor:
        # Only a super network's layer run at a smaller width slices; a plain layer calls its
        # modules directly, which keeps the exported graph free of Slice nodes.
        cut = width if width is not None and width != self.width else None
        d = cut or self.width
        head_size = d // self.num_heads
        q = self._heads(_linear(self.query, x, cut, cut), head_size)
        k = self._heads(_linear(self.key, x, cut, cut), head_size)
        v = self._heads(_linear(self.value, x, cut, cut), head_size)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_size) + bias
        probs = self.dropout(torch.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(ctx.size()[:-2] + (d,))  # (B, S, d)
        attn = self.dropout(_linear(self.attn_out, ctx, cut, cut))
        attn = _layer_norm(self.attn_norm, attn + x, cut)
        inner = self.act(_linear(self.ffn_in, attn, None, cut))
        out = self.dropout(_linear(self.ffn_out, inner, cut, None))
        return _layer_norm(self.ffn_norm, out + attn, cut)


class BottleneckLayer(nn.Module):
    """input bottleneck (D -> d), a TransformerLayer at d, output bottleneck (d -> D)."""

    def __init__(self, hidden_size: int, width: int, num_heads: int, ffn_size: int, act: str,
                 eps: float, dropout: float):
        super().__init__()
        self.input_bottleneck = nn.Linear(hidden_size, width)
        self.layer = TransformerLayer(width, num_heads, ffn_size, act, eps, dropout)
        self.output_bottleneck = nn.Linear(width, hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, width: int | None = None
                ) -> torch.Tensor:
        cut = width if width is not None and width != self.layer.width else None
        h = self.layer(_linear(self.input_bottleneck, x, cut, None), bias, cut)
        return _linear(self.output_bottleneck, h, None, cut)  # no activation, residual or norm


class Pooler(nn.Module):
    """The pooler (BERT's, RoBERTa's): dense + tanh on the first token ([CLS], <s>)."""

    def __init__(self, hidden_size: int, in_features: int | None = None):
        super().__init__()
        self.dense = nn.Linear(in_features or hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class ClassifierHead(nn.Module):
    """A task head: the mean of the final states over real tokens (the pooling sentence
    encoders such as all-MiniLM-L6-v2 are trained with), then one dense layer to the task's
    outputs (class logits, or one regression score)."""

    def __init__(self, hidden_size: int, num_outputs: int):
        super().__init__()
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        weights = attention_mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.out(pooled)  # (B, outputs)


class MLMHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder tied to the word embeddings."""

    def __init__(self, hidden_size: int, vocab_size: int, act: str, eps: float,
                 in_features: int | None = None):
        super().__init__()
        self.transform = nn.Linear(in_features or hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.act = ACT_FNS[act]

    def forward(self, hidden: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.act(self.transform(hidden)))
        return F.linear(h, word_embeddings, self.bias)  # (B, S, vocab)
