import pytest
import torch

from shaper_deploy.errors import ShapeError
from shaper_deploy.shape import DesignSpace, Shape
from shaper_deploy.slicing import SubnetBert, slice_subnet

from .conftest import TINY_SPACE, make_inputs, random_shapes

TOL = 1e-6


@pytest.mark.parametrize("shape", random_shapes(TINY_SPACE, 8), ids=str)
def test_sliced_equals_super_with_shape(tiny_supernet, shape):
    subnet = slice_subnet(tiny_supernet, shape)
    assert isinstance(subnet, SubnetBert) and subnet.shape == shape
    assert [layer.layer.width for layer in subnet.layers] == list(shape.widths)
    ids, mask, types = make_inputs(97, batch=4, seq=11)
    with torch.no_grad():
        ours = subnet(ids, mask, types)
        ref = tiny_supernet(ids, mask, types, shape=shape)
    assert torch.allclose(ours.last_hidden_state, ref.last_hidden_state, atol=TOL)
    assert torch.allclose(ours.pooler_output, ref.pooler_output, atol=TOL)
    assert torch.allclose(subnet.mlm_logits(ours.last_hidden_state),
                          tiny_supernet.mlm_logits(ref.last_hidden_state), atol=TOL)


def test_subnet_is_independent_of_the_super_network(tiny_supernet):
    shape = Shape((16, 8, 48), TINY_SPACE)
    subnet = slice_subnet(tiny_supernet, shape)
    ids, mask, _ = make_inputs(97)
    with torch.no_grad():
        before = subnet(ids, mask).last_hidden_state
        for p in tiny_supernet.parameters():
            p.add_(1.0)
        assert torch.equal(subnet(ids, mask).last_hidden_state, before)
    super_ptrs = {p.data_ptr() for p in tiny_supernet.parameters()}
    assert not super_ptrs & {p.data_ptr() for p in subnet.parameters()}


def test_subnet_parameters_match_the_unfused_count(tiny_supernet):
    """The module's real tensors agree with param_count(fused=False) plus what it excludes."""
    s = TINY_SPACE
    for shape in random_shapes(s, 5):
        subnet = slice_subnet(tiny_supernet, shape)
        real = sum(p.numel() for p in subnet.parameters())
        pooler = s.hidden_size ** 2 + s.hidden_size
        mlm_bias = s.vocab_size
        assert real == shape.params(fused=False) + pooler + mlm_bias


def test_slicing_refuses_a_shape_of_another_space(tiny_supernet):
    other = DesignSpace(num_layers=3, widths=(8, 48), hidden_size=48, num_heads=4,
                        intermediate_size=96, vocab_size=97, max_positions=64)
    with pytest.raises(ShapeError, match="another design space"):
        slice_subnet(tiny_supernet, Shape((8, 8, 48), other))
