"""The SuperShaper backbone: BERT with a linear bottleneck around every layer.

Its checkpoints are read and written by ``checkpoint`` (``load_supernet``, ``supernet_from_hf``,
``save_supernet``), which imports this module and never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping, NamedTuple, Sequence

import torch
from torch import nn

from ..errors import ShapeError, ShaperError
from ..shape import Shape
from .config import SuperConfig
from .modules import (BottleneckLayer, ClassifierHead, MLMHead, Pooler, attention_bias,
                      embeddings_for)


class EncoderOutput(NamedTuple):
    last_hidden_state: torch.Tensor  # (B, S, D): after the last output bottleneck
    pooler_output: torch.Tensor | None  # (B, D) when the network has a pooler
    # every layer's output after its output bottleneck (B, S, D), when asked for (training)
    layer_outputs: tuple[torch.Tensor, ...] | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a network came from. It travels with the network (slicing, training, export)
    as one value, and export records it in the bundle."""

    tokenizer_files: Mapping[str, bytes] = field(default_factory=dict)  # the source BERT's
    source: Mapping[str, Any] = field(default_factory=dict)  # the BERT / training it came from
    checkpoint: Mapping[str, Any] = field(default_factory=dict)  # file loaded, and its sha256


class BottleneckBert(nn.Module):
    """Embeddings, one BottleneckLayer per layer at the given widths, optional heads; any
    family (its spec decides the embeddings' positions and token types, the MLM activation).

    The super network holds every layer at the largest width; a sliced sub-network holds each
    layer at its own width. Both run the same forward code.
    """

    def __init__(self, config: SuperConfig, widths: Sequence[int]):
        super().__init__()
        s = config.space
        self.config = config
        self.embeddings = embeddings_for(config)
        self.layers = nn.ModuleList(
            BottleneckLayer(s.hidden_size, w, s.num_heads, s.intermediate_size,
                            config.hidden_act, config.layer_norm_eps, config.dropout)
            for w in widths)
        self.pooler = Pooler(s.hidden_size) if config.pooler else None
        self.mlm_head = (MLMHead(s.hidden_size, s.vocab_size,
                                 config.family.mlm_act(config.hidden_act),
                                 config.layer_norm_eps) if s.mlm_head else None)
        self.classifier = (ClassifierHead(s.hidden_size, config.task_head.num_outputs)
                           if config.task_head is not None else None)
        self.provenance = Provenance()

    # The provenance's parts, read and replaced one at a time (the value itself is frozen).
    @property
    def tokenizer_files(self) -> Mapping[str, bytes]:
        return self.provenance.tokenizer_files

    @tokenizer_files.setter
    def tokenizer_files(self, files: Mapping[str, bytes]) -> None:
        self.provenance = replace(self.provenance, tokenizer_files=dict(files))

    @property
    def source(self) -> Mapping[str, Any]:
        return self.provenance.source

    @source.setter
    def source(self, source: Mapping[str, Any]) -> None:
        self.provenance = replace(self.provenance, source=dict(source))

    @property
    def checkpoint(self) -> Mapping[str, Any]:
        return self.provenance.checkpoint

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                token_type_ids: torch.Tensor | None, widths: Sequence[int | None],
                layer_outputs: bool = False) -> EncoderOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)
        bias = attention_bias(attention_mask, x.dtype)
        outputs = [] if layer_outputs else None  # kept only when asked: they hold memory
        for layer, width in zip(self.layers, widths):
            x = layer(x, bias, width)
            if outputs is not None:
                outputs.append(x)
        pooled = self.pooler(x) if self.pooler is not None else None
        return EncoderOutput(x, pooled, tuple(outputs) if outputs is not None else None)

    def task_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None
                    ) -> torch.Tensor:
        """The task head's outputs (B, labels) from ``last_hidden_state``."""
        if self.classifier is None:
            raise ShaperError("this network has no task head; make one with shaperctl train "
                              "task")
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        return self.classifier(hidden, attention_mask)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM logits (B, S, vocab) from ``last_hidden_state``."""
        if self.mlm_head is None:
            raise ShaperError("this network has no MLM head; the fill-mask task and the mlm "
                              "objective need a model with one")
        return self.mlm_head(hidden, self.embeddings.word.weight)


class SuperBert(BottleneckBert):
    """The super network: every layer at the design space's largest width.

    ``forward(..., shape=S)`` runs sub-network S by slicing weights on the fly; the module is
    never mutated, so any number of shapes can run one after another (or in one training step).
    """

    def __init__(self, config: SuperConfig):
        super().__init__(config, config.space.largest.widths)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, shape: Shape | None = None,
                layer_outputs: bool = False) -> EncoderOutput:
        if shape is None:
            widths: Sequence[int | None] = [None] * len(self.layers)
        else:
            if shape.space != self.config.space:
                raise ShapeError("shape belongs to another design space than this network")
            widths = shape.widths
        return self._encode(input_ids, attention_mask, token_type_ids, widths, layer_outputs)
