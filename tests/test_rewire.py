import pytest
import torch

from shaper_deploy.errors import TrainingError
from shaper_deploy.supernet import SuperBert
from shaper_deploy.training.rewire import _stats, importance_order

from .conftest import make_inputs, random_shapes, save_tiny_bert


def _ids(model, n=24, seq=12, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, model.config.space.vocab_size, (n, seq), generator=g)


@pytest.mark.parametrize("order", ["residual", "residual+heads"])
@pytest.mark.parametrize("source", ["random", "bert"])
def test_ordered_supernet_equals_the_original_at_full_shape(tiny_supernet, tmp_path, order,
                                                            source):
    if source == "bert":  # identity bottlenecks, as made from a pretrained BERT
        save_tiny_bert(tmp_path / "bert", masked_lm=True)
        model = SuperBert.from_hf(tmp_path / "bert").eval()
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
    with pytest.raises(TrainingError, match="unknown order 'random'; allowed: none, residual"):
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
