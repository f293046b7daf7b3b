"""Every model family as BERT: identity parity with Hugging Face (float64), slice, fuse, export
and validate, Optimum loading under the family's own class, the profiling graph equal to the
export, planning and serving. Tiny models built in code (tests/conftest.py)."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from shaper_deploy.errors import CheckpointError, PlannerError
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.families import FAMILIES, MODEL_TYPES, family
from shaper_deploy.fusion import fuse_bottlenecks
from shaper_deploy.serving import Bundle
from shaper_deploy.shape import Shape
from shaper_deploy.slicing import slice_subnet
from shaper_deploy.supernet import (SuperBert, SuperConfig, load_supernet, save_supernet,
                                    supernet_from_hf)

from .conftest import (FAMILY_MODELS, PLAN_SPACE, assert_profiling_graph_is_the_export, fast_protocol,
                       randomize, save_tiny_family)

TOL = 1e-5


def test_every_registered_family_has_a_tiny_model_in_the_per_family_tests():
    """A new spec without a tiny model would skip every parity test below."""
    assert {family(t).name for t in FAMILY_MODELS} == set(FAMILIES)


def padded_batch(config: SuperConfig, seed: int = 0):
    """Token ids with right padding *as the family pads* (RoBERTa's positions read the ids)."""
    feeds = config.dummy_inputs(3, 11, seed=seed, padding="right")
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


@pytest.mark.parametrize("model_type", FAMILY_MODELS)
@pytest.mark.parametrize("masked_lm", [False, True])
def test_identity_supernet_equals_the_hugging_face_model(tmp_path, model_type, masked_lm):
    ref = save_tiny_family(model_type, tmp_path / "hf", masked_lm).double()
    model = supernet_from_hf(tmp_path / "hf").double()
    assert model.config.model_type == model_type
    assert model.config.space.mlm_head == masked_lm
    inputs = padded_batch(model.config)
    assert set(inputs) == set(model.config.family.inputs)
    with torch.no_grad():
        ours = model(**inputs)
        theirs = ref(**inputs, output_hidden_states=True)
    assert (ours.last_hidden_state - theirs.hidden_states[-1]).abs().max() <= TOL
    if masked_lm:
        assert (model.mlm_logits(ours.last_hidden_state) - theirs.logits).abs().max() <= TOL
    elif model.config.pooler:
        assert (ours.pooler_output - theirs.pooler_output).abs().max() <= TOL
    assert model.config.pooler == (not masked_lm and model_type != "distilbert")


@pytest.mark.parametrize("model_type", FAMILY_MODELS)
def test_slice_fuse_export_validate_and_load_in_optimum(tmp_path, model_type):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoConfig

    save_tiny_family(model_type, tmp_path / "hf", masked_lm=False)
    supernet = randomize(supernet_from_hf(tmp_path / "hf"), seed=1).eval()
    space = supernet.config.space
    shape = Shape((space.widths[0], space.widths[-1], space.widths[2]), space)
    manifest = export_bundle(supernet, shape, tmp_path / "b", ExportOptions(int8=True))
    assert manifest.validation["passed"] and manifest.inputs == list(family(model_type).inputs)
    assert manifest.operators["Attention"] == 3
    # sliced == super network at that shape, through the deployed graph
    inputs = padded_batch(supernet.config, seed=4)
    with torch.no_grad():
        want = supernet(**inputs, shape=shape).last_hidden_state.numpy()
    bundle = Bundle.load(tmp_path / "b", model="model.onnx")
    got = bundle.run({k: v.numpy() for k, v in inputs.items()})["last_hidden_state"]
    assert np.abs(got - want).max() < 1e-4
    cfg = AutoConfig.from_pretrained(tmp_path / "b")
    assert cfg.model_type == model_type
    assert type(cfg).__name__ == f"{family(model_type).class_prefix[model_type]}Config"
    ort_model = ORTModelForFeatureExtraction.from_pretrained(
        tmp_path / "b", file_name="model.onnx", provider="CPUExecutionProvider")
    out = ort_model(**inputs).last_hidden_state
    assert np.abs(np.asarray(out) - want).max() < 1e-4
    # the torch-free half reads the family from the bundle: text in, vectors out
    vectors = bundle.embed(["we deploy the model", "fast"])
    assert vectors.shape == (2, space.hidden_size) and np.isfinite(vectors).all()
    assert manifest.quantization["mean_token_cosine"] > 0.9


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_fill_mask_per_family(tmp_path, model_type):
    from optimum.onnxruntime import ORTModelForMaskedLM

    save_tiny_family(model_type, tmp_path / "hf", masked_lm=True)
    supernet = supernet_from_hf(tmp_path / "hf").eval()
    export_bundle(supernet, supernet.config.space.largest, tmp_path / "b",
                  ExportOptions(task="fill-mask"))
    bundle = Bundle.load(tmp_path / "b")
    mask = family(model_type).special_tokens["mask"]
    answers = bundle.fill_mask([f"the {mask} is fast"], top_k=3)
    assert len(answers[0]) == 1 and len(answers[0][0]) == 3  # one mask token, three guesses
    inputs = padded_batch(supernet.config)
    with torch.no_grad():
        want = supernet.mlm_logits(supernet(**inputs).last_hidden_state).numpy()
    ort_model = ORTModelForMaskedLM.from_pretrained(tmp_path / "b",
                                                    provider="CPUExecutionProvider")
    assert np.abs(np.asarray(ort_model(**inputs).logits) - want).max() < 1e-3


@pytest.mark.parametrize("model_type", FAMILY_MODELS)
def test_profiling_graph_is_the_exported_graph(tmp_path, model_type):
    save_tiny_family(model_type, tmp_path / "hf", masked_lm=False)
    model = randomize(supernet_from_hf(tmp_path / "hf"), seed=2).eval()
    space = model.config.space
    shape = Shape((space.widths[1], space.widths[4], space.widths[0]), space)
    assert_profiling_graph_is_the_export(model, shape, tmp_path / "b")


@pytest.mark.parametrize("model_type", ["roberta", "distilbert"])
def test_planning_per_family_and_a_profile_of_another_family_is_refused(
        tmp_path, model_type, tiny_profile):
    from shaper_deploy.planner import export_for_budget
    from shaper_deploy.profiling.predictor import DeviceProfile, fit_profile
    from shaper_deploy.profiling.profile import run_profile

    fam = family(model_type)
    space = (replace(PLAN_SPACE, type_vocab_size=1, max_positions=66) if fam.token_type_table
             else replace(PLAN_SPACE, type_vocab_size=0))
    config = SuperConfig(space, model_type=model_type, pooler=fam.token_type_table,
                         pad_token_id=1 if fam.padding_positions else 0)
    supernet = randomize(SuperBert(config), seed=3).eval()
    bert_profile = DeviceProfile.load(tiny_profile)  # same widths, BERT's graph
    with pytest.raises(PlannerError, match="another design space"):
        export_for_budget(supernet, 10_000.0, bert_profile, tmp_path / "x")
    run_profile(tmp_path / "p", "cpu", fast_protocol(), config, samples=12)
    fit_profile(tmp_path / "p")
    profile = DeviceProfile.load(tmp_path / "p")
    assert profile.header.graph["family"] == fam.name
    manifest = export_for_budget(supernet, 10_000.0, profile, tmp_path / "b",
                                 allow_unreliable=True, workload=(2, 12),
                                 measure_seconds=0)  # the protocol's rounds: any time fits
    assert manifest.plan["shape"] == list(space.largest.widths)
    assert manifest.plan["fidelity"] == pytest.approx(1, abs=1e-5)
    assert manifest.inputs == list(fam.inputs)
    # the same design space profiled as BERT: refused by its graph record, not timed as BERT
    bert_config = SuperConfig(space, pooler=config.pooler) if fam.token_type_table else None
    if bert_config is not None:
        run_profile(tmp_path / "pb", "cpu", fast_protocol(), bert_config, samples=12)
        fit_profile(tmp_path / "pb")
        with pytest.raises(PlannerError, match="family 'bert' \\(profile\\) vs 'roberta'"):
            export_for_budget(supernet, 10_000.0, DeviceProfile.load(tmp_path / "pb"),
                              tmp_path / "y", allow_unreliable=True)


def test_family_refusals(tmp_path):
    save_tiny_family("distilbert", tmp_path / "d", masked_lm=False)
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps({**cfg, "sinusoidal_pos_embds": True}))
    with pytest.raises(CheckpointError, match="sinusoidal position embeddings"):
        supernet_from_hf(tmp_path / "d")
    (tmp_path / "d" / "config.json").write_text(json.dumps({**cfg, "dim": "48"}))
    with pytest.raises(CheckpointError, match="dim"):
        supernet_from_hf(tmp_path / "d")
    save_tiny_family("ernie", tmp_path / "e", masked_lm=False)
    cfg = json.loads((tmp_path / "e" / "config.json").read_text())
    (tmp_path / "e" / "config.json").write_text(json.dumps({**cfg, "use_task_id": True}))
    with pytest.raises(CheckpointError, match="task type embeddings"):
        supernet_from_hf(tmp_path / "e")
    with pytest.raises(CheckpointError, match="model_type 'gpt2' is not supported"):
        family("gpt2")
    with pytest.raises(CheckpointError, match="no token type embeddings"):
        SuperConfig(PLAN_SPACE, model_type="distilbert")
    assert set(MODEL_TYPES) >= {"bert", "roberta", "xlm-roberta", "camembert", "distilbert"}
    assert set(FAMILIES) == {"bert", "roberta", "distilbert", "ernie"}


def test_checkpoints_of_every_family_round_trip_and_old_ones_read_as_bert(tmp_path):
    save_tiny_family("roberta", tmp_path / "hf", masked_lm=False)
    model = supernet_from_hf(tmp_path / "hf")
    save_supernet(model, tmp_path / "s")
    again = load_supernet(tmp_path / "s")
    assert again.config == model.config and again.config.model_type == "roberta"
    data = SuperConfig().to_dict()
    del data["model_type"]  # a version 2 checkpoint's config
    assert SuperConfig.from_dict(data).model_type == "bert"


@pytest.mark.parametrize("model_type", FAMILY_MODELS)
def test_parameter_formulas_count_every_familys_deployed_network(tmp_path, model_type):
    """shape.param_breakdown (the paper's convention) + the pooler and MLM bias it leaves out
    = every tensor of the fused network, whatever the family's embeddings hold."""
    from shaper_deploy.shape import param_breakdown

    for masked_lm in (False, True):
        save_tiny_family(model_type, tmp_path / str(masked_lm), masked_lm)
        model = supernet_from_hf(tmp_path / str(masked_lm))
        s = model.config.space
        shape = Shape((s.widths[0], s.widths[3], s.widths[-1]), s)
        fused = fuse_bottlenecks(slice_subnet(model, shape))
        extra = (s.hidden_size ** 2 + s.hidden_size) * model.config.pooler + s.vocab_size * masked_lm
        assert sum(p.numel() for p in fused.parameters()) == \
            sum(param_breakdown(shape, fused=True).values()) + extra


def test_artifacts_written_before_families_and_task_heads_still_read(tmp_path, tiny_supernet):
    """Every shipped profile (made before model_type and task_head existed), and a bundle and a
    checkpoint config of that time, read as BERT without a task head."""
    from pathlib import Path

    from shaper_deploy.bundle import BundleManifest
    from shaper_deploy.profiling.predictor import DeviceProfile
    from shaper_deploy.profiling.folder import read_header

    shipped = sorted(p for p in (Path(__file__).parents[1] / "profiles").iterdir() if p.is_dir())
    assert len(shipped) >= 4
    # a profile as written before the fields existed (the shipped ones were refitted since)
    shutil.copytree(shipped[0], tmp_path / "old")
    header = json.loads((tmp_path / "old" / "profile.json").read_text())
    for key in ("model_type", "task_head"):
        header["config"].pop(key, None)
    (tmp_path / "old" / "profile.json").write_text(json.dumps(header))
    for folder in [*shipped, tmp_path / "old"]:
        header = read_header(folder)
        assert header.config.model_type == "bert" and header.config.task_head is None
        DeviceProfile.load(folder)  # predictor and measurements verified too
    export_bundle(tiny_supernet, tiny_supernet.config.space.smallest, tmp_path / "b")
    data = json.loads((tmp_path / "b" / "shaper.json").read_text())
    for key in ("model_type", "task_head"):
        del data["config"][key]
    (tmp_path / "b" / "shaper.json").write_text(json.dumps(data))
    manifest = BundleManifest.read(tmp_path / "b")
    assert manifest.family.name == "bert" and manifest.config["task_head"] is None
    assert Bundle.load(tmp_path / "b").run(
        tiny_supernet.config.dummy_inputs(1, 5))["last_hidden_state"].shape == (1, 5, 48)
