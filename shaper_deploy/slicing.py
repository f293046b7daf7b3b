"""Taking one sub-network out of the super network as a plain, independent module."""

from __future__ import annotations

import torch

from .errors import ShapeError
from .shape import Shape
from .supernet.model import BottleneckBert, EncoderOutput, SuperBert


class SubnetBert(BottleneckBert):
    """A static sub-network: every layer stored at its own width, no slicing at run time."""

    def __init__(self, config, shape: Shape):
        super().__init__(config, shape.widths)
        self.shape = shape

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        return self._encode(input_ids, attention_mask, token_type_ids, [None] * len(self.layers))


def slice_subnet(supernet: SuperBert, shape: Shape) -> SubnetBert:
    """Copy the weights of ``shape`` out of ``supernet`` into a new :class:`SubnetBert`.

    Every tensor of the sub-network is the leading block of the super network's tensor of the
    same name (``weight[:out, :in]``, ``bias[:out]``; SPEC section 2): bottlenecks keep their
    D side whole, attention and LayerNorms are cut to d on every side, the FFN keeps F.
    The result shares no storage with the super network.
    """
    if shape.space != supernet.config.space:
        raise ShapeError(f"shape {shape} belongs to another design space than the super network")
    subnet = SubnetBert(supernet.config, shape)
    source = supernet.state_dict()
    sliced = {}
    for key, target in subnet.state_dict().items():
        block = tuple(slice(0, n) for n in target.shape)
        sliced[key] = source[key][block].clone()
    subnet.load_state_dict(sliced, strict=True)
    subnet.provenance = supernet.provenance
    return subnet.train(supernet.training)
