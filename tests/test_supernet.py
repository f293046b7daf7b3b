import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from shaper_deploy.errors import CheckpointError, OutputError
from shaper_deploy.io import sha256_file
from shaper_deploy.shape import Shape
from shaper_deploy.supernet import (SuperBert, SuperConfig, load_supernet, save_supernet,
                                    supernet_from_hf)

from .conftest import TINY_SPACE, make_inputs, random_shapes, save_tiny_bert

TOL = 1e-5


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_identity_supernet_equals_bert_model(tmp_path, weights):
    ref = save_tiny_bert(tmp_path / "bert", masked_lm=False)
    if weights == "bin":
        state = load_file(tmp_path / "bert" / "model.safetensors")
        (tmp_path / "bert" / "model.safetensors").unlink()
        torch.save(state, tmp_path / "bert" / "pytorch_model.bin")
    model = supernet_from_hf(tmp_path / "bert")
    assert model.config.pooler and not model.config.space.mlm_head
    ids, mask, types = make_inputs(97)
    with torch.no_grad():
        ours = model(ids, mask, types)
        theirs = ref(ids, attention_mask=mask, token_type_ids=types)
    assert torch.allclose(ours.last_hidden_state, theirs.last_hidden_state, atol=TOL)
    assert torch.allclose(ours.pooler_output, theirs.pooler_output, atol=TOL)


def test_identity_supernet_equals_bert_for_masked_lm(tmp_path):
    ref = save_tiny_bert(tmp_path / "bert", masked_lm=True)
    model = supernet_from_hf(tmp_path / "bert")
    assert model.config.space.mlm_head and not model.config.pooler
    ids, mask, types = make_inputs(97)
    with torch.no_grad():
        ours = model(ids, mask, types)
        theirs = ref(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    assert torch.allclose(ours.last_hidden_state, theirs.hidden_states[-1], atol=TOL)
    assert torch.allclose(model.mlm_logits(ours.last_hidden_state), theirs.logits, atol=TOL)


def test_identity_supernet_equals_real_minilm(minilm_dir):
    from tokenizers import Tokenizer
    from transformers import BertModel

    model = supernet_from_hf(minilm_dir)
    assert model.config.space.widths == (60, 120, 180, 240, 264, 300, 384)
    tok = Tokenizer.from_str(model.tokenizer_files["tokenizer.json"].decode())
    tok.enable_padding()
    enc = tok.encode_batch(["Deploying BERT models to many devices.", "A short one."])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    assert mask[1].sum() < mask[0].sum()  # the batch really is padded
    with torch.no_grad():
        ours = model(ids, mask)
        # transformers' eager attention is the same arithmetic: equal to the bit.
        eager = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
        theirs = eager(ids, attention_mask=mask)
        assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
        # Its default (SDPA) kernel differs only in rounding on real tokens; padding
        # positions carry no meaning and are not compared.
        sdpa = BertModel.from_pretrained(minilm_dir).eval()(ids, attention_mask=mask)
    real = mask.bool()
    diff = (ours.last_hidden_state - sdpa.last_hidden_state)[real].abs().max()
    assert diff < TOL
    assert (ours.pooler_output - sdpa.pooler_output).abs().max() < TOL


def test_forward_with_shape_never_mutates(tiny_supernet):
    ids, mask, _ = make_inputs(97)
    before = {k: v.clone() for k, v in tiny_supernet.state_dict().items()}
    a, b = random_shapes(TINY_SPACE, 4)[2:]
    with torch.no_grad():
        first = tiny_supernet(ids, mask, shape=a).last_hidden_state
        tiny_supernet(ids, mask, shape=b)
        again = tiny_supernet(ids, mask, shape=a).last_hidden_state
    assert torch.equal(first, again)
    assert all(torch.equal(before[k], v) for k, v in tiny_supernet.state_dict().items())


def test_gradients_reach_only_the_shapes_slice(tiny_supernet):
    ids, mask, _ = make_inputs(97)
    shape = Shape((8, 48, 16), TINY_SPACE)
    tiny_supernet(ids, mask, shape=shape).last_hidden_state.sum().backward()
    q0 = tiny_supernet.layers[0].layer.query.weight.grad
    assert q0[:8, :8].abs().sum() > 0 and q0[8:].abs().sum() == 0 and q0[:, 8:].abs().sum() == 0
    ib2 = tiny_supernet.layers[2].input_bottleneck.weight.grad
    assert ib2[:16].abs().sum() > 0 and ib2[16:].abs().sum() == 0


def test_save_load_roundtrip(tmp_path, tiny_bert_dir):
    model = supernet_from_hf(tiny_bert_dir)
    randomize_bottlenecks(model)
    save_supernet(model, tmp_path / "super")
    loaded = load_supernet(tmp_path / "super")
    assert loaded.config == model.config and loaded.source == model.source
    ids, mask, _ = make_inputs(97)
    for shape in random_shapes(model.config.space, 4):
        with torch.no_grad():
            assert torch.equal(model(ids, mask, shape=shape).last_hidden_state,
                               loaded(ids, mask, shape=shape).last_hidden_state)
    header = json.loads((tmp_path / "super" / "config.json").read_text())
    assert header["format"] == "shaper-deploy/supernet" and header["weights_sha256"]
    with pytest.raises(OutputError, match="already exists"):
        save_supernet(model, tmp_path / "super")
    save_supernet(model, tmp_path / "super", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "super"]


def randomize_bottlenecks(model):
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.layers:
            for lin in (layer.input_bottleneck, layer.output_bottleneck):
                lin.weight.add_(torch.randn(lin.weight.shape, generator=g) * 0.05)
                lin.bias.add_(torch.randn(lin.bias.shape, generator=g) * 0.05)


def test_supershaper_repo_checkpoint(tmp_path):
    """Their layout: HF BertForMaskedLM keys + encoder.layer.N.{input,output}_bottleneck."""
    from transformers import BertForMaskedLM

    src = tmp_path / "theirs"
    save_tiny_bert(src, masked_lm=True)
    ref = BertForMaskedLM.from_pretrained(src, attn_implementation="eager").eval()
    state = load_file(src / "model.safetensors")
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        for name in ("input", "output"):
            state[f"bert.encoder.layer.{i}.{name}_bottleneck.weight"] = (
                torch.eye(48) + 0.05 * torch.randn(48, 48, generator=g))
            state[f"bert.encoder.layer.{i}.{name}_bottleneck.bias"] = 0.05 * torch.randn(48, generator=g)
    (src / "model.safetensors").unlink()
    torch.save(state, src / "pytorch_model.bin")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(mixing="bert-bottleneck", sample_hidden_size=[48, 48, 48])
    (src / "config.json").write_text(json.dumps(cfg))

    # D = 48: their config does not record the widths, so they must be declared.
    with pytest.raises(CheckpointError, match=r"has D = 48; its config does not record the "
                                              r"allowed widths.*declare them with --widths"):
        load_supernet(src)
    model = load_supernet(src, widths=(8, 16, 24, 32, 36, 48))
    assert model.source["kind"] == "supershaper"
    assert model.config.space.widths == (8, 16, 24, 32, 36, 48)
    ids, mask, types = make_inputs(97)
    with torch.no_grad():
        # Independent reference: HF's own layers wrapped in the bottlenecks by hand.
        x = ref.bert.embeddings(input_ids=ids, token_type_ids=types)
        ext = ref.get_extended_attention_mask(mask, ids.shape)
        for i, layer in enumerate(ref.bert.encoder.layer):
            def lin(name):
                return (state[f"bert.encoder.layer.{i}.{name}_bottleneck.weight"],
                        state[f"bert.encoder.layer.{i}.{name}_bottleneck.bias"])
            x = torch.nn.functional.linear(x, *lin("input"))
            x = layer(x, attention_mask=ext)[0]
            x = torch.nn.functional.linear(x, *lin("output"))
        ours = model(ids, mask, types).last_hidden_state
    assert torch.allclose(ours, x, atol=TOL)

    del state["bert.encoder.layer.1.output_bottleneck.bias"]
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"missing tensor 'layers.1.output_bottleneck.bias'"):
        load_supernet(src, widths=(8, 16, 24, 32, 36, 48))


def test_mis_shaped_tensor_names_key_and_both_shapes(tmp_path, tiny_supernet):
    save_supernet(tiny_supernet, tmp_path / "s")
    weights = tmp_path / "s" / "model.safetensors"
    state = load_file(weights)
    state["layers.1.layer.query.weight"] = torch.zeros(40, 48)
    save_file(state, weights)
    header = json.loads((tmp_path / "s" / "config.json").read_text())
    header["weights_sha256"] = sha256_file(weights)  # re-signed: the content checks still hold
    (tmp_path / "s" / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError) as err:
        load_supernet(tmp_path / "s")
    assert ("tensor 'layers.1.layer.query.weight' has shape [40, 48] but the architecture "
            "needs [48, 48]") in str(err.value)


def test_corrupted_checkpoints(tmp_path, tiny_supernet):
    save_supernet(tiny_supernet, tmp_path / "s")
    weights = tmp_path / "s" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupted: its sha256 differs"):
        load_supernet(tmp_path / "s")
    weights.write_bytes(b"not a safetensors file")
    header = json.loads((tmp_path / "s" / "config.json").read_text())
    header["weights_sha256"] = sha256_file(weights)  # re-signed: the content checks still hold
    (tmp_path / "s" / "config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="is corrupted or unreadable"):
        load_supernet(tmp_path / "s")


def test_pickles_with_objects_are_refused(tmp_path, tiny_bert_dir):
    (tiny_bert_dir / "model.safetensors").unlink()
    torch.save({"evil": Exception("not a tensor")}, tiny_bert_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="holds objects other than tensors and is refused") as e:
        supernet_from_hf(tiny_bert_dir)
    assert "weights_only=False" not in str(e.value)  # never advise loading arbitrary objects


@pytest.mark.parametrize("edit, message", [
    ({"model_type": "gpt2"}, "is a 'gpt2' model; supported model types: bert, roberta"),
    ({"position_embedding_type": "relative_key"}, "only 'absolute' is supported"),
    ({"mixing": "gmlp"}, "only 'bert-bottleneck' is supported"),
    ({"hidden_act": "swish"}, "activation 'swish' is not supported"),
])
def test_unsupported_berts(tiny_bert_dir, edit, message):
    cfg = json.loads((tiny_bert_dir / "config.json").read_text())
    cfg.update(edit)
    (tiny_bert_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        supernet_from_hf(tiny_bert_dir)


def test_missing_pieces(tmp_path, tiny_bert_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        supernet_from_hf(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="looks like a plain Hugging Face bert model"):
        load_supernet(tiny_bert_dir)
    (tiny_bert_dir / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="holds no weights"):
        supernet_from_hf(tiny_bert_dir)


def test_unexpected_tensors_are_named(tiny_bert_dir):
    state = load_file(tiny_bert_dir / "model.safetensors")
    state["classifier.weight"] = torch.zeros(2, 48)
    save_file(state, tiny_bert_dir / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not have: classifier.weight"):
        supernet_from_hf(tiny_bert_dir)


def test_supershaper_checkpoints_in_every_command(tmp_path):
    """Their checkpoints are read (widths declared, D != 768) by every command that takes a
    super network, from the config and the safetensors header alone where weights are not
    needed."""
    from click.testing import CliRunner

    from shaper_deploy.cli.main import main

    src = tmp_path / "theirs"
    save_tiny_bert(src, masked_lm=True)
    state = load_file(src / "model.safetensors")
    for i in range(3):
        for name in ("input", "output"):
            state[f"bert.encoder.layer.{i}.{name}_bottleneck.weight"] = torch.eye(48)
            state[f"bert.encoder.layer.{i}.{name}_bottleneck.bias"] = torch.zeros(48)
    save_file(state, src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(mixing="bert-bottleneck")
    (src / "config.json").write_text(json.dumps(cfg))
    runner = CliRunner()
    w = ["--widths", "8,16,24,48"]
    for args in (["supernet", "info", str(src)], ["params", "--shape", "16,24,48", "--supernet",
                                                  str(src)],
                 ["shapes", "--supernet", str(src)]):
        refused = runner.invoke(main, args)
        assert refused.exit_code == 1 and "declare them with --widths" in refused.stderr
        r = runner.invoke(main, [*args, *w, "--json"])
        assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(main, ["supernet", "info", str(src), *w, "--json"]).stdout)
    assert info["format"] == "supershaper" and info["design_space"]["widths"] == [8, 16, 24, 48]
    assert info["design_space"]["mlm_head"] is True
    r = runner.invoke(main, ["export", "--supernet", str(src), *w, "--shape", "16,24,48",
                             "--out", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    ours = tmp_path / "ours"
    save_supernet(SuperBert(SuperConfig(TINY_SPACE)), ours)
    r = runner.invoke(main, ["supernet", "info", str(ours), *w])
    assert r.exit_code == 1 and "--widths is for SuperShaper checkpoints" in r.stderr
