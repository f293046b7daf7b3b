"""The optimized deployment graph, built directly with onnx.helper (no tracing, no optimizer).

Exporting a shape (trace + ONNX Runtime's optimizer) takes seconds; profiling hundreds of
shapes needs their graphs in a fraction of that. This builds the graph that
:func:`shaper_deploy.export.export_bundle` produces for ``feature-extraction``, node for node::

    embeddings, as the family's spec has them fused: EmbedLayerNormalization over
                  input_ids (and token types, or explicit position ids without them);
                  RoBERTa's padding-aware positions unfused (Gathers, CumSum, LayerNorm)
    MatMul + Add (D -> d_1)
    per layer i:  Attention(num_heads, 2-D mask) -> MatMul -> SkipLayerNormalization
                  -> MatMul -> BiasGelu | FastGelu | Add+Relu -> MatMul
                  -> SkipLayerNormalization
                  then MatMul + Add (d_i -> d_{i+1}), or (d_L -> D) after the last layer
    [pooler]      Gather(first token) -> Gemm -> Tanh

Tests hold it to that for every activation the config allows: the same operator counts as a
real export, and, given a fused network's weights, the same outputs as PyTorch. Latency does
not depend on weight values, so profiling fills it with random ones (in distinct memory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ProfileError
from ..families import TOKEN_TYPES
from ..shape import Shape, identity_projections
from ..supernet.config import SuperConfig

# The FFN's bias and activation as ONNX Runtime fuses each hidden_act: (op, bias fused).
# Its keys are the activations a profile can time; a test holds them to families.ACTIVATIONS.
FUSED_ACTIVATIONS = {"gelu": ("BiasGelu", True), "gelu_new": ("FastGelu", True),
                     "relu": ("Relu", False)}
GRAPH_ACTIVATIONS = tuple(FUSED_ACTIVATIONS)
OPSET = 17
OPSETS = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
IR_VERSION = 8


class RandomWeightFile:
    """One file of random float32 values that the matrix initializers of profiling graphs point
    into (ONNX external data): no values are generated, copied or serialized per shape.

    Every initializer of a graph gets its own region of the file, as a real model's weights
    occupy their own memory. When all of them pointed at offset 0, the full MiniLM graph ran
    9% faster than the real exported bundle (14.08 vs 15.36 ms, interleaved): aliased weights
    share cache lines that distinct weights do not. Weight values themselves do not matter
    (the same graph with the real weights shuffled ran as fast as with them unshuffled).
    """

    NAME = "random_weights.bin"
    ALIGN = 4096  # bytes; page-aligned regions, as ONNX Runtime may map them

    def __init__(self, folder: Path, seed: int = 0):
        self.folder = Path(folder)
        self.path = self.folder / self.NAME
        self.seed = seed
        self.n_bytes = self.path.stat().st_size if self.path.is_file() else 0

    def ensure(self, n_bytes: int) -> None:
        """Grow the file to at least ``n_bytes`` of random values."""
        if n_bytes <= self.n_bytes:
            return
        rng = np.random.default_rng([self.seed, self.n_bytes])
        extra = -(-(n_bytes - self.n_bytes) // 4)
        with open(self.path, "ab") as f:
            (rng.standard_normal(extra, dtype=np.float32) * 0.02).tofile(f)
        self.n_bytes += 4 * extra

    def vector(self, n: int) -> np.ndarray:
        self.ensure(4 * n)
        return np.fromfile(self.path, dtype=np.float32, count=n)


class _Weights:
    """Initializers: a fused network's weights, or views into a :class:`RandomWeightFile`."""

    def __init__(self, state: Mapping[str, np.ndarray] | None, random: RandomWeightFile | None):
        if (state is None) == (random is None):
            raise ProfileError("give exactly one of state and random")
        self.state, self.random = state, random
        self.initializers: list[onnx.TensorProto] = []
        self.offset = 0  # next free byte of the random file, for this graph

    def add(self, name: str, value: np.ndarray | tuple[int, ...]) -> str:
        if isinstance(value, np.ndarray):
            self.initializers.append(numpy_helper.from_array(
                np.ascontiguousarray(value, dtype=np.float32), name))
            return name
        tensor = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=value)
        n_bytes = 4 * int(np.prod(value))
        offset = self.offset
        self.offset += -(-n_bytes // RandomWeightFile.ALIGN) * RandomWeightFile.ALIGN
        self.random.ensure(self.offset)
        tensor.data_location = TensorProto.EXTERNAL
        for key, val in (("location", self.random.NAME), ("offset", str(offset)),
                         ("length", str(n_bytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, val
        self.initializers.append(tensor)
        return name

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray | tuple[int, ...]:
        if self.state is None:
            # Vectors are cheap, so they get realistic values: activations keep a trained
            # network's scale. With LayerNorm gains of 0.02 the graph ran 8% faster than a
            # real export (activations shrank layer by layer), so values do matter here.
            if len(shape) == 1:
                if key.endswith("norm.weight"):
                    return np.ones(shape, np.float32)
                if key.endswith("norm.bias"):
                    return np.zeros(shape, np.float32)
                return self.random.vector(shape[0])
            return shape
        value = np.asarray(self.state[key], dtype=np.float32)
        if value.shape != shape:
            raise ProfileError(f"weight {key} has shape {value.shape}, graph needs {shape}")
        return value

    def linear(self, key: str, n_in: int, n_out: int):
        """(weight as in x out for MatMul, bias)."""
        weight = self.get(f"{key}.weight", (n_out, n_in))
        weight = weight.T if isinstance(weight, np.ndarray) else (n_in, n_out)
        return weight, self.get(f"{key}.bias", (n_out,))

    def concat(self, parts: list, axis: int):
        if isinstance(parts[0], np.ndarray):
            return np.concatenate(parts, axis)
        shape = list(parts[0])
        shape[axis] = sum(p[axis] for p in parts)
        return tuple(shape)


def build_deploy_graph(config: SuperConfig, shape: Shape,
                       state: Mapping[str, np.ndarray] | None = None,
                       random: RandomWeightFile | None = None,
                       dropped: Sequence[str] = ()) -> onnx.ModelProto:
    """The optimized feature-extraction graph of ``shape``, without the projections named in
    ``dropped`` (square ones only: see :func:`identity_projections`).

    Weights come from ``state``, a :class:`~shaper_deploy.fusion.FusedBert` state dict as
    numpy arrays (``fold_last=False``), or from ``random``; then the model must be saved in
    (and loaded from) that file's folder.
    """
    unknown = set(dropped) - set(identity_projections(shape))
    if unknown:
        raise ProfileError(f"cannot drop {', '.join(sorted(unknown))} from {shape}: only "
                           "square projections can be identities")
    g = _Builder(config, _Weights(state, random), set(dropped))
    D, widths = config.space.hidden_size, shape.widths
    x = g.dense(g.embeddings(), "proj_in", D, widths[0], "proj_in")
    for i, d in enumerate(widths):
        x = g.layer(i, d, x)
        if i + 1 < len(widths):
            x = g.dense(x, f"transitions.{i}", d, widths[i + 1], f"transitions.{i}")
    return g.model(x, widths[-1])


class _Builder:
    """The nodes of one deployment graph, in order, and the weights they read (``_Weights``:
    initializers are added in the order the graph reads them, which is where each lands in
    a random weight file)."""

    MS = "com.microsoft"

    def __init__(self, config: SuperConfig, w: _Weights, dropped: set[str]) -> None:
        self.config, self.w, self.dropped = config, w, dropped
        self.nodes: list[onnx.NodeProto] = []
        # the attention mask, as every layer's Attention reads it (the graph's first node)
        self.mask = self.node("Cast", ["attention_mask"], "attention_mask_int32",
                              to=TensorProto.INT32)

    def node(self, op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain,
                                           **attrs))
        return output

    def const(self, name: str, value) -> str:
        self.w.initializers.append(numpy_helper.from_array(np.array(value, np.int64), name))
        return name

    def dense(self, x: str, key: str, n_in: int, n_out: int, name: str) -> str:
        if key in self.dropped:
            return x
        weight, bias = self.w.linear(key, n_in, n_out)
        y = self.node("MatMul", [x, self.w.add(f"{name}.w", weight)], f"{name}.mm")
        return self.node("Add", [self.w.add(f"{name}.b", bias), y], name)

    def skip_norm(self, y: str, residual: str, norm: str, bias_name: str, bias, d: int) -> str:
        """LayerNorm(y + bias + residual), as ONNX Runtime fuses BERT's residual norms."""
        w = self.w
        return self.node("SkipLayerNormalization",
                         [y, residual, w.add(f"{norm}.g", w.get(f"{norm}.weight", (d,))),
                          w.add(f"{norm}.b", w.get(f"{norm}.bias", (d,))), w.add(bias_name, bias)],
                         norm, domain=self.MS, epsilon=self.config.layer_norm_eps)

    def activation(self, h: str, bias: str, name: str) -> str:
        """The FFN's bias and activation as ONNX Runtime fuses each ``hidden_act``."""
        act = self.config.hidden_act
        if act not in FUSED_ACTIVATIONS:
            raise ProfileError(f"no profiling graph for activation {act!r}; "
                               f"supported: {', '.join(GRAPH_ACTIVATIONS)}")
        op, fused_bias = FUSED_ACTIVATIONS[act]
        if fused_bias:
            return self.node(op, [h, bias], name, domain=self.MS)
        return self.node(op, [self.node("Add", [h, bias], f"{name}.bias")], name)

    def embeddings(self) -> str:
        """The embeddings as the family's export leaves them; their output's name."""
        config, w, node, const = self.config, self.w, self.node, self.const
        s, fam, eps = config.space, config.family, config.layer_norm_eps
        D = s.hidden_size
        word = w.add("word", w.get("embeddings.word.weight", (s.vocab_size, D)))
        position = w.add("position", w.get("embeddings.position.weight", (s.max_positions, D)))
        gain = w.add("emb_norm.g", w.get("embeddings.norm.weight", (D,)))
        shift = w.add("emb_norm.b", w.get("embeddings.norm.bias", (D,)))
        if fam.padding_positions:
            # RoBERTa's positions (cumulative count of non-padding ids, from pad + 1) are not
            # fused by ONNX Runtime: word and position Gathers, the table's one token-type row
            # added, then LayerNormalization, as the export leaves them.
            pad = config.pad_token_id
            x = node("Gather", [word, "input_ids"], "emb.word")
            table = w.get("embeddings.token_type.weight", (s.type_vocab_size, D))
            row = table[0] if isinstance(table, np.ndarray) else w.random.vector(D)
            x = node("Add", [x, w.add("emb.type_row", row)], "emb.type")
            real = node("Cast", [node("Not", [node("Equal", ["input_ids", const("pad", pad)],
                                                    "emb.is_pad")], "emb.real")],
                        "emb.real_int", to=TensorProto.INT64)
            count = node("CumSum", [real, const("seq_axis", 1)], "emb.count")
            ids = node("Add", [node("Mul", [count, real], "emb.count_real"),
                               const("offset", pad)], "emb.position_ids")
            x = node("Add", [x, node("Gather", [position, ids], "emb.position")], "emb.sum")
            return node("LayerNormalization", [x, gain, shift], "embeddings", axis=-1,
                        epsilon=eps)
        ids = node("Cast", ["input_ids"], "input_ids_int32", to=TensorProto.INT32)
        emb_inputs = [ids, "", word, position, "", gain, shift]
        if fam.token_types:
            emb_inputs[1] = node("Cast", [TOKEN_TYPES], f"{TOKEN_TYPES}_int32",
                                 to=TensorProto.INT32)
            emb_inputs[4] = w.add("token_type", w.get("embeddings.token_type.weight",
                                                      (s.type_vocab_size, D)))
        else:
            # Without token types ONNX Runtime fuses the embeddings with explicit position
            # ids: the position buffer sliced to the sequence length.
            length = node("Unsqueeze", [node("Gather", [node("Shape", ["input_ids"],
                                                             "emb.shape"), const("one", 1)],
                                             "emb.length"), const("axes", [0])],
                          "emb.length_1d")
            positions = node("Slice", [const("position_ids", [list(range(s.max_positions))]),
                                       const("start", [0]), length, const("axis", [1]),
                                       const("step", [1])], "emb.position_ids")
            emb_inputs += ["", node("Cast", [positions], "emb.position_ids_int32",
                                    to=TensorProto.INT32)]
        self.nodes.append(helper.make_node("EmbedLayerNormalization", emb_inputs,
                                           ["embeddings", "embeddings_mask_index"],
                                           name="embeddings", domain=self.MS, epsilon=eps))
        return "embeddings"

    def layer(self, i: int, d: int, x: str) -> str:
        """Layer ``i`` at width ``d`` on ``x``: attention, then the FFN, each with its
        residual norm; its output's name."""
        w, node, F = self.w, self.node, self.config.space.intermediate_size
        p = f"layers.{i}"
        qkv = [w.linear(f"{p}.{k}", d, d) for k in ("query", "key", "value")]
        att = node("Attention", [x, w.add(f"{p}.qkv.w", w.concat([q[0] for q in qkv], 1)),
                                 w.add(f"{p}.qkv.b", w.concat([q[1] for q in qkv], 0)),
                                 self.mask],
                   f"{p}.attention", domain=self.MS, num_heads=self.config.space.num_heads,
                   mask_filter_value=float(np.finfo(np.float32).min))
        wo, bo = w.linear(f"{p}.attn_out", d, d)
        y = node("MatMul", [att, w.add(f"{p}.attn_out.w", wo)], f"{p}.attn_out.mm")
        attn = self.skip_norm(y, x, f"{p}.attn_norm", f"{p}.attn_out.b", bo, d)
        w1, b1 = w.linear(f"{p}.ffn_in", d, F)
        h = node("MatMul", [attn, w.add(f"{p}.ffn_in.w", w1)], f"{p}.ffn_in.mm")
        h = self.activation(h, w.add(f"{p}.ffn_in.b", b1), f"{p}.act")
        w2, b2 = w.linear(f"{p}.ffn_out", F, d)
        y = node("MatMul", [h, w.add(f"{p}.ffn_out.w", w2)], f"{p}.ffn_out.mm")
        return self.skip_norm(y, attn, f"{p}.ffn_norm", f"{p}.ffn_out.b", b2, d)

    def model(self, x: str, last_width: int) -> onnx.ModelProto:
        """The output projection (d_L -> D) on ``x``, the pooler if the config has one, and
        the model around the nodes."""
        w, node, config = self.w, self.node, self.config
        D = config.space.hidden_size
        if "proj_out" in self.dropped:  # the last layer's norm is the output
            self.nodes[-1].output[0] = self.nodes[-1].name = "last_hidden_state"
        else:
            w_out, b_out = w.linear("proj_out", last_width, D)
            y = node("MatMul", [x, w.add("proj_out.w", w_out)], "proj_out.mm")
            node("Add", [w.add("proj_out.b", b_out), y], "last_hidden_state")
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                                 ["batch", "sequence", D])]
        if config.pooler:
            first = node("Gather", ["last_hidden_state", self.const("cls", 0)], "pooler.cls",
                         axis=1)
            wp = w.get("pooler.dense.weight", (D, D))
            dense_p = node("Gemm", [first, w.add("pooler.w", wp),
                                    w.add("pooler.b", w.get("pooler.dense.bias", (D,)))],
                           "pooler.gemm", transB=1)
            node("Tanh", [dense_p], "pooler_output")
            outputs.append(helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT,
                                                         ["batch", D]))
        inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                  for n in config.family.inputs]
        graph = helper.make_graph(self.nodes, "shaper_deploy", inputs, outputs,
                                  w.initializers)
        return helper.make_model(graph, opset_imports=OPSETS, ir_version=IR_VERSION,
                                 producer_name="shaper-deploy")
