import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from shaper_deploy.fusion import FusedBert, fuse_bottlenecks
from shaper_deploy.shape import Shape, flops
from shaper_deploy.slicing import slice_subnet

from .conftest import TINY_SPACE, make_inputs, random_shapes

TOL = 1e-5


@pytest.mark.parametrize("shape", random_shapes(TINY_SPACE, 6, seed=1), ids=str)
def test_fused_equals_unfused(tiny_supernet, shape):
    subnet = slice_subnet(tiny_supernet, shape)
    fused = fuse_bottlenecks(subnet)
    assert isinstance(fused, FusedBert)
    assert [(t.in_features, t.out_features) for t in fused.transitions] == list(
        zip(shape.widths[:-1], shape.widths[1:]))
    ids, mask, types = make_inputs(97, batch=4, seq=13)
    with torch.no_grad():
        ref = subnet(ids, mask, types)
        out = fused(ids, mask, types)
        assert torch.allclose(out.last_hidden_state, ref.last_hidden_state, atol=TOL)
        assert torch.allclose(out.pooler_output, ref.pooler_output, atol=TOL)
        assert torch.allclose(fused.mlm_logits(ids, mask, types),
                              subnet.mlm_logits(ref.last_hidden_state), atol=TOL)


@pytest.mark.parametrize("shape", random_shapes(TINY_SPACE, 4, seed=2), ids=str)
def test_folding_the_last_bottleneck_into_the_heads(tiny_supernet, shape):
    subnet = slice_subnet(tiny_supernet, shape)
    folded = fuse_bottlenecks(subnet, fold_last=True)
    assert folded.proj_out is None
    assert folded.pooler.dense.in_features == shape.widths[-1]
    assert folded.mlm_head.transform.in_features == shape.widths[-1]
    ids, mask, types = make_inputs(97)
    with torch.no_grad():
        ref = subnet(ids, mask, types)
        out = folded(ids, mask, types)
        assert out.last_hidden_state is None
        assert torch.allclose(out.pooler_output, ref.pooler_output, atol=TOL)
        assert torch.allclose(folded.mlm_logits(ids, mask, types),
                              subnet.mlm_logits(ref.last_hidden_state), atol=TOL)


def test_fused_parameters_are_the_paper_count_plus_what_it_leaves_out(tiny_supernet):
    s = TINY_SPACE
    D, V = s.hidden_size, s.vocab_size
    for shape in random_shapes(s, 5):
        subnet = slice_subnet(tiny_supernet, shape)
        fused = sum(p.numel() for p in fuse_bottlenecks(subnet).parameters())
        # The paper's fused count excludes the pooler (D*D + D) and the MLM decoder bias (V).
        assert fused == shape.params(fused=True) + (D * D + D) + V
        folded = sum(p.numel() for p in fuse_bottlenecks(subnet, fold_last=True).parameters())
        d_last = shape.widths[-1]
        # Folding drops d_L -> D and shrinks both heads' first dense from D x D to D x d_L.
        assert folded == fused - (d_last * D + D) - 2 * (D - d_last) * D


def test_flops_match_torch_flop_counter(tiny_supernet):
    for shape in random_shapes(TINY_SPACE, 4, seed=3):
        fused = fuse_bottlenecks(slice_subnet(tiny_supernet, shape))
        ids, mask, types = make_inputs(97, batch=2, seq=10)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fused.encode(ids, mask, types)
        assert counter.get_total_flops() == flops(shape, seq_len=10, batch=2)


def test_fusing_leaves_the_subnet_untouched(tiny_supernet):
    subnet = slice_subnet(tiny_supernet, Shape((16, 16, 8), TINY_SPACE))
    before = {k: v.clone() for k, v in subnet.state_dict().items()}
    fuse_bottlenecks(subnet, fold_last=True)
    assert all(torch.equal(before[k], v) for k, v in subnet.state_dict().items())
