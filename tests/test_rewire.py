import numpy as np
import pytest
import torch

from shaper_deploy.errors import ShaperError
from shaper_deploy.supernet import load_supernet, supernet_from_hf
from shaper_deploy.supernet.rewire import _stats, importance_order

from .conftest import make_inputs, random_shapes, sample_inputs, save_tiny_bert


def _ids(model, n=24, seq=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.config.space.vocab_size, (n, seq), generator=g)


@pytest.mark.parametrize("order", ["residual", "residual+heads"])
@pytest.mark.parametrize("source", ["random", "bert"])
def test_ordered_supernet_equals_the_original_at_full_shape(tiny_supernet, tmp_path, order,
                                                            source):
    if source == "bert":  # identity bottlenecks, as made from a pretrained BERT
        save_tiny_bert(tmp_path / "bert", masked_lm=True)
        model = supernet_from_hf(tmp_path / "bert").eval()
    else:  # trained-looking: every bottleneck a dense matrix
        model = tiny_supernet.double()
    model = model.double()
    ordered = importance_order(model, _ids(model), order)
    inputs = make_inputs(model.config.space.vocab_size, batch=3, seq=9)
    with torch.no_grad():
        a, b = model(*inputs), ordered(*inputs)
        assert torch.allclose(a.last_hidden_state, b.last_hidden_state, atol=1e-10, rtol=0)
        if a.pooler_output is not None:
            assert torch.allclose(a.pooler_output, b.pooler_output, atol=1e-10, rtol=0)
        # ... while a slice keeps other features than before: the order did something
        small = random_shapes(model.config.space, 3, seed=2)[0]
        assert not torch.allclose(model(*inputs, shape=small).last_hidden_state,
                                  ordered(*inputs, shape=small).last_hidden_state, atol=1e-3)
    assert ordered.source["importance_order"] == order
    assert "importance_order" not in model.source  # the original is left alone


def test_leading_features_are_the_most_important(tiny_supernet):
    model = tiny_supernet.double()
    ids = _ids(model)
    ordered = importance_order(model, ids, "residual+heads")
    for s in _stats(ordered, ids, 32):
        energy = s["in"] + s["out"]
        assert torch.all(energy[:-1] >= energy[1:])  # sorted, most important first
    before = _stats(model, ids, 32)[0]
    after = _stats(ordered, ids, 32)[0]
    # the same features, only moved: the multiset of energies is unchanged
    assert torch.allclose(torch.sort(before["in"]).values, torch.sort(after["in"]).values)


def test_unknown_order_is_refused(tiny_supernet):
    with pytest.raises(ShaperError, match="unknown order 'random'; allowed: none, residual"):
        importance_order(tiny_supernet, _ids(tiny_supernet), "random")


def test_padding_is_not_counted(tiny_supernet):
    """Texts padded to one length, with their attention mask, give the energies of the same
    texts run one by one unpadded: the padding's hidden states count nothing."""
    model = tiny_supernet.double().eval()
    texts = [_ids(model, n=1, seq=n, seed=n)[0] for n in (5, 8, 3)]
    padded = torch.zeros(len(texts), 8, dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, t in enumerate(texts):
        padded[i, :len(t)], mask[i, :len(t)] = t, 1
    padded[mask == 0] = 7  # padding that would weigh if it were counted
    together = _stats(model, {"input_ids": padded, "attention_mask": mask}, 32)
    alone = [_stats(model, t[None], 1) for t in texts]
    for layer, got in enumerate(together):
        for name, value in got.items():
            expected = sum(a[layer][name] for a in alone)
            assert torch.allclose(value, expected, rtol=1e-9, atol=1e-12), (layer, name)
    unmasked = _stats(model, padded, 32)[0]["in"]
    assert not torch.allclose(unmasked, together[0]["in"])  # padding would have counted


def test_one_shared_order_keeps_the_identity_networks_graph(tmp_path):
    """supernet init --order: one residual order for every layer, so the fused transition
    between two layers of equal width is still exactly the identity and export drops it, and
    the input and output projections' orders move into the layers, so at the full width
    those are dropped too (the planner's prediction of what is dropped agrees); an order per
    layer keeps its transitions. The export computes the super network's outputs."""
    from shaper_deploy.export import export_bundle
    from shaper_deploy.fusion import bottleneck_orders, dropped_projections
    from shaper_deploy.runtime import make_session
    from shaper_deploy.shape import Shape
    from shaper_deploy.slicing import slice_subnet

    save_tiny_bert(tmp_path / "bert", masked_lm=False)
    model = supernet_from_hf(tmp_path / "bert").eval()
    ids = _ids(model)
    shared = importance_order(model, ids, "residual+heads", shared=True)
    per_layer = importance_order(model, ids, "residual+heads")
    assert shared.source["importance_order_shared"] is True
    inputs = make_inputs(model.config.space.vocab_size, batch=3, seq=9)
    with torch.no_grad():
        assert torch.allclose(model(*inputs).last_hidden_state,
                              shared(*inputs).last_hidden_state, atol=1e-5, rtol=0)
    orders = bottleneck_orders(shared)
    assert len({o for layer in orders for o in layer}) == 1  # one permutation, in and out
    assert orders[0][0] != tuple(range(model.config.space.hidden_size))  # not the identity
    space = model.config.space
    D, w = space.hidden_size, sorted(space.widths)[-2]
    for widths in ((D,) * 3, (w, w, D), (D, w, w)):
        shape = Shape(widths, space)
        between = [f"transitions.{i}" for i in range(2) if widths[i] == widths[i + 1]]
        moved = ["proj_in"] * (widths[0] == D) + ["proj_out"] * (widths[-1] == D)
        manifest = export_bundle(shared, shape, tmp_path / f"s{widths}")
        assert sorted(manifest.dropped_identities) == sorted(between + moved)
        assert sorted(dropped_projections(orders, shape)) == sorted(between + moved)
        feeds = sample_inputs(model.config.space.vocab_size, batch=2, seq_len=9,
                              padding="mixed")
        got = make_session(tmp_path / f"s{widths}" / "model.onnx").run(
            ["last_hidden_state"], feeds)[0]
        with torch.no_grad():
            want = slice_subnet(shared, shape)(
                *(torch.from_numpy(feeds[k]) for k in ("input_ids", "attention_mask",
                                                       "token_type_ids")))
        assert np.abs(got - want.last_hidden_state.numpy()).max() < 1e-5
        manifest = export_bundle(per_layer, shape, tmp_path / f"p{widths}")
        assert sorted(dropped_projections(bottleneck_orders(per_layer), shape)) == sorted(
            manifest.dropped_identities)


def test_supernet_init_orders_its_features_on_text(tmp_path):
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main
    from shaper_deploy.fusion import bottleneck_orders

    from .conftest import tiny_tokenizer_json

    save_tiny_bert(tmp_path / "bert", masked_lm=False)
    (tmp_path / "bert" / "tokenizer.json").write_text(tiny_tokenizer_json())
    texts = tmp_path / "texts.txt"
    texts.write_text("the model is small\n\nlatency on device and shape\n")
    r = CliRunner().invoke(main, ["supernet", "init", "--from-hf", str(tmp_path / "bert"),
                                  "--order", "residual+heads", "--order-texts", str(texts),
                                  "--out", str(tmp_path / "s"), "--json"])
    assert r.exit_code == 0, r.output
    assert "ordered the features of 3 layers by importance on 2 texts" in r.stderr
    net = load_supernet(tmp_path / "s")
    assert net.source["importance_order"] == "residual+heads"
    assert len({o for layer in bottleneck_orders(net) for o in layer}) == 1
    r = CliRunner().invoke(main, ["supernet", "init", "--from-hf", str(tmp_path / "bert"),
                                  "--order-texts", str(texts), "--out", str(tmp_path / "t")])
    assert r.exit_code != 0 and "give --order residual or residual+heads with it" in r.output
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    r = CliRunner().invoke(main, ["supernet", "init", "--from-hf", str(tmp_path / "bert"),
                                  "--order", "residual", "--order-texts",
                                  str(tmp_path / "bad.txt"), "--out", str(tmp_path / "u")])
    assert r.exit_code == 1 and "is not UTF-8 text" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "u").exists()
