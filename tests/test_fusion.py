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


def _permuted(net, orders_in, order_out):
    """``net`` with permutation bottlenecks: layer i's input one takes feature
    ``orders_in[i][r]`` to r, every output one puts r back where its layer's input took it
    from, the last one at ``order_out[r]`` (as supernet init --order writes them; None: the
    last one stays dense, as trained)."""
    D = net.config.space.hidden_size
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            for lin, order in ((layer.input_bottleneck, orders_in[i]),
                               (layer.output_bottleneck, order_out if i == len(net.layers) - 1
                                else orders_in[i])):
                if order is None:
                    continue
                eye = torch.zeros(D, D)
                eye[torch.arange(D), torch.tensor(order)] = 1
                lin.weight.copy_(eye if lin is layer.input_bottleneck else eye.T)
                lin.bias.zero_()
    return net


def _orders(kind: str, D: int, layers: int):
    g = torch.Generator().manual_seed(5)
    p, q = (torch.randperm(D, generator=g).tolist() for _ in range(2))
    if kind == "shared":
        return [p] * layers, p
    if kind == "per layer":
        return [torch.randperm(D, generator=g).tolist() for _ in range(layers)], q
    if kind == "dense out":
        return [p] * layers, None
    return [p] * layers, q  # one order, a different one out of the last layer


@pytest.mark.parametrize("kind", ["shared", "per layer", "another out", "dense out"])
def test_permutations_moved_into_the_layers_compute_the_same(tiny_supernet, kind):
    """A super network with permutation bottlenecks (supernet init --order): the input and
    output projections' orders move into the layers next to them (fusion.align_orders),
    which then compute the same outputs, heads folded or not, and the projections left as
    identities are dropped, as dropped_projections predicts from the orders alone."""
    from shaper_deploy.fusion import bottleneck_orders, drop_identities, dropped_projections
    from shaper_deploy.shape import identity_projections

    s = TINY_SPACE
    D, w, L = s.hidden_size, sorted(s.widths)[-2], s.num_layers
    net = _permuted(tiny_supernet, *_orders(kind, D, L))
    orders = bottleneck_orders(net)
    ids, mask, types = make_inputs(97, batch=3, seq=11)
    for widths in ((D,) * L, (w,) * (L - 1) + (D,), (D,) + (w,) * (L - 1),
                   (D,) + (w,) * (L - 2) + (D,), (w,) + (D,) * (L - 1)):
        shape = Shape(widths, s)
        subnet = slice_subnet(net, shape)
        with torch.no_grad():
            ref = subnet(ids, mask, types)
            for fold in (False, True):
                fused = fuse_bottlenecks(subnet, fold_last=fold)
                dropped = drop_identities(fused)
                out = fused(ids, mask, types)
                if not fold:
                    assert torch.allclose(out.last_hidden_state, ref.last_hidden_state,
                                          atol=TOL)
                    assert sorted(dropped) == sorted(dropped_projections(orders, shape))
                assert torch.allclose(out.pooler_output, ref.pooler_output, atol=TOL)
                assert torch.allclose(fused.mlm_logits(ids, mask, types),
                                      subnet.mlm_logits(ref.last_hidden_state), atol=TOL)
        gone = dropped_projections(orders, shape)
        # a permutation there is always moved; a dense one stays and takes the input's order
        assert ("proj_out" in gone) == (widths[-1] == D and kind != "dense out")
        if kind in ("shared", "dense out") and widths[0] == D:
            assert "proj_in" in gone
        if widths == (D,) * L:
            full = sorted(identity_projections(shape))
            assert (sorted(gone) == full) == (kind == "shared")  # the original network
            if kind == "dense out":
                assert sorted(gone) == sorted(set(full) - {"proj_out"})
            if kind == "another out":  # one run, ordered by the output: the input keeps one
                assert sorted(gone) == sorted(set(full) - {"proj_in"})
