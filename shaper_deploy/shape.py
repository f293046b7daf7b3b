"""Shapes, design spaces and their parameter and FLOP counts (no torch needed).

A *design space* fixes the architecture around the layers (model width D, heads, FFN size,
vocabulary) and the widths a layer may take. A *shape* is one width per layer. The parameter
count follows the SuperShaper paper's convention (SPEC section 4), so numbers compare with the
paper's tables.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import ShapeError

# The paper's per-layer widths for BERT-base (D = 768), as fractions of D they define the
# default widths of a design space derived from any other BERT.
PAPER_WIDTHS = (120, 240, 360, 480, 540, 600, 768)


def reject_unknown_fields(cls: type, data: dict[str, Any], what: str,
                          error: type[Exception], require_all: bool = False) -> None:
    """Raise ``error`` naming any key of ``data`` that is not a field of dataclass ``cls``,
    and with ``require_all`` any field missing (what we write, we write whole: a missing
    field is damage, never a reason to fall back on a default)."""
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {data!r}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"unknown {what} field(s) {', '.join(unknown)}; "
                    f"allowed: {', '.join(sorted(known))}")
    missing = sorted(known - set(data)) if require_all else []
    if missing:
        raise error(f"{what} lacks field(s) {', '.join(missing)}")


def _fmt_widths(widths: Sequence[int]) -> str:
    return ", ".join(str(w) for w in widths)


# The largest encoder any design space may describe: beyond every published BERT-family model
# (XLM-R XL: 36 layers, D = 2560, 250k vocabulary), far below what would exhaust memory when a
# config's numbers are taken at their word.
SPACE_LIMITS = {"num_layers": 128, "hidden_size": 16384, "num_heads": 256,
                "intermediate_size": 65536, "vocab_size": 1 << 21, "max_positions": 1 << 16,
                "type_vocab_size": 1024}


@dataclass(frozen=True)
class DesignSpace:
    """The architecture a super network fixes and the widths each layer may take."""

    num_layers: int = 12  # encoder layers; a shape has one width per layer
    widths: tuple[int, ...] = PAPER_WIDTHS  # allowed per-layer hidden widths, ascending
    hidden_size: int = 768  # model width D: embeddings and the outer side of every bottleneck
    num_heads: int = 12  # attention heads in every layer whatever its width (head size d/heads)
    intermediate_size: int = 3072  # FFN inner size F, the same in every layer
    vocab_size: int = 28996  # word-piece vocabulary (bert-base-cased by default)
    max_positions: int = 512  # learned position embeddings
    type_vocab_size: int = 2  # token type (segment) embeddings; 0: none (DistilBERT)
    mlm_head: bool = True  # the network carries an MLM head; its transform counts as parameters

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        for name, most in SPACE_LIMITS.items():
            value = getattr(self, name)
            least = 0 if name == "type_vocab_size" else 1  # 0: no token types (DistilBERT)
            if not isinstance(value, int) or isinstance(value, bool) or not least <= value <= most:
                raise ShapeError(f"design space {name} must be an integer in {least}..{most:,}, "
                                 f"got {value!r:.40}")
        if not self.widths:
            raise ShapeError("design space has no widths; give at least one layer width")
        if list(self.widths) != sorted(set(self.widths)):
            raise ShapeError(
                f"design space widths must be strictly ascending, got {_fmt_widths(self.widths)}")
        for w in self.widths:
            if w < 1 or w > self.hidden_size:
                raise ShapeError(
                    f"design space width {w} is outside 1..{self.hidden_size} (the model width)")
            if w % self.num_heads:
                raise ShapeError(
                    f"design space width {w} is not divisible by the {self.num_heads} attention "
                    f"heads; every width must be a multiple of {self.num_heads}")

    @classmethod
    def for_model(cls, hidden_size: int, num_heads: int, num_layers: int,
                  widths: Sequence[int] | None = None, **arch: Any) -> "DesignSpace":
        """A design space for a BERT of this size; widths default to the paper's fractions of D."""
        if widths is None:
            widths = paper_widths_for(hidden_size, num_heads)
        return cls(num_layers=num_layers, widths=tuple(widths), hidden_size=hidden_size,
                   num_heads=num_heads, **arch)

    def describe(self) -> str:
        """The space in a few words, for messages: layers, widths and model width."""
        return (f"{self.num_layers} layers, widths {', '.join(map(str, self.widths))}, model "
                f"width {self.hidden_size}")

    @property
    def size(self) -> int:
        """How many distinct shapes the space holds."""
        return len(self.widths) ** self.num_layers

    @property
    def smallest(self) -> "Shape":
        return Shape((self.widths[0],) * self.num_layers, self)

    @property
    def largest(self) -> "Shape":
        return Shape((self.widths[-1],) * self.num_layers, self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DesignSpace":
        reject_unknown_fields(cls, data, "design space", ShapeError, require_all=True)
        for f in fields(cls):
            value = data[f.name]
            if f.name == "widths":
                ok = isinstance(value, (list, tuple)) and all(_is_int(w) for w in value)
            elif f.name == "mlm_head":
                ok = isinstance(value, bool)
            else:
                ok = _is_int(value)
            if not ok:
                kind = ("a list of integers" if f.name == "widths" else
                        "true or false" if f.name == "mlm_head" else "an integer")
                raise ShapeError(f"design space field {f.name} must be {kind}, got {value!r}")
        return cls(**{**data, "widths": tuple(data["widths"])})


def paper_widths_for(hidden_size: int, num_heads: int) -> tuple[int, ...]:
    """The paper's widths scaled to model width D, each rounded to a multiple of the heads."""
    out = set()
    for w in PAPER_WIDTHS:
        scaled = round(w * hidden_size / PAPER_WIDTHS[-1] / num_heads) * num_heads
        out.add(min(max(scaled, num_heads), hidden_size))
    return tuple(sorted(out))


PAPER_SPACE = DesignSpace()


@dataclass(frozen=True)
class Shape:
    """One hidden width per layer, validated against its design space."""

    widths: tuple[int, ...]
    space: DesignSpace = field(default=PAPER_SPACE)

    def __post_init__(self) -> None:
        try:
            widths = tuple(int(w) for w in self.widths)
        except (TypeError, ValueError):
            raise ShapeError(f"a shape is a list of integer widths, got {self.widths!r}") from None
        object.__setattr__(self, "widths", widths)
        space = self.space
        if len(widths) != space.num_layers:
            raise ShapeError(f"shape has {len(widths)} widths but the design space has "
                             f"{space.num_layers} layers; give one width per layer")
        for i, w in enumerate(widths, start=1):
            if w % space.num_heads:
                raise ShapeError(
                    f"layer {i} width {w} is not divisible by the {space.num_heads} attention "
                    f"heads; allowed widths: {_fmt_widths(space.widths)}")
            if w not in space.widths:
                raise ShapeError(f"layer {i} width {w} is not in the design space; "
                                 f"allowed widths: {_fmt_widths(space.widths)}")

    @classmethod
    def uniform(cls, width: int, space: DesignSpace = PAPER_SPACE) -> "Shape":
        return cls((width,) * space.num_layers, space)

    def __iter__(self) -> Iterator[int]:
        return iter(self.widths)

    def __len__(self) -> int:
        return len(self.widths)

    def __getitem__(self, i: int) -> int:
        return self.widths[i]

    def __str__(self) -> str:
        if len(set(self.widths)) == 1:
            return f"{self.widths[0]}x{len(self.widths)}"
        return ",".join(str(w) for w in self.widths)

    def params(self, fused: bool = True) -> int:
        return param_count(self, fused=fused)


def _as_shape(shape: Shape | Sequence[int], space: DesignSpace | None) -> Shape:
    if isinstance(shape, Shape):
        if space is not None and space != shape.space:
            raise ShapeError("the shape belongs to another design space than the one given")
        return shape
    return Shape(tuple(shape), space or PAPER_SPACE)


def param_breakdown(shape: Shape | Sequence[int], space: DesignSpace | None = None,
                    fused: bool = True) -> dict[str, int]:
    """Parameters by part, in the paper's convention (SPEC section 4).

    ``bottlenecks`` is the fused chain (D->d1, d_i->d_{i+1}, dL->D) when ``fused`` and the
    per-layer input and output bottlenecks otherwise. ``mlm_transform`` is the MLM head's dense
    layer and LayerNorm (their code counts 2*d_12 for that LayerNorm; we count the real 2D).
    Never counted, as in the paper: the tied decoder weight, the decoder bias and the pooler.
    """
    shape = _as_shape(shape, space)
    s = shape.space
    D, F, w = s.hidden_size, s.intermediate_size, shape.widths
    embeddings = (s.vocab_size + s.max_positions + s.type_vocab_size) * D + 2 * D
    # q, k, v, attention output (d x d + d each), FFN (d x F + F, F x d + d), two LayerNorms.
    layers = sum(4 * (d * d + d) + 2 * d * F + F + d + 4 * d for d in w)
    if fused:
        chain = [D, *w, D]
        bottlenecks = sum(a * b + b for a, b in zip(chain[:-1], chain[1:]))
    else:
        bottlenecks = sum((D * d + d) + (d * D + D) for d in w)
    mlm = D * D + D + 2 * D if s.mlm_head else 0
    return {"embeddings": embeddings, "layers": layers, "bottlenecks": bottlenecks,
            "mlm_transform": mlm}


def param_count(shape: Shape | Sequence[int], space: DesignSpace | None = None,
                fused: bool = True) -> int:
    """Total parameters of a shape in the paper's convention; see :func:`param_breakdown`."""
    return sum(param_breakdown(shape, space, fused).values())


def flops(shape: Shape | Sequence[int], seq_len: int = 128, batch: int = 1,
          space: DesignSpace | None = None) -> int:
    """Floating-point operations (2 x multiply-adds) of the fused encoder's matrix products.

    Counts the fused bottleneck chain, q/k/v/output projections, the two attention products
    and the FFN; elementwise work (softmax, GELU, LayerNorm, embedding lookup) and heads are
    left out, as is usual for transformer FLOP counts.
    """
    shape = _as_shape(shape, space)
    if seq_len < 1 or batch < 1:
        raise ShapeError(f"seq_len and batch must be positive, got {seq_len} and {batch}")
    s, S = shape.space, seq_len
    D, F, w = s.hidden_size, s.intermediate_size, shape.widths
    chain = [D, *w, D]
    macs = sum(S * a * b for a, b in zip(chain[:-1], chain[1:]))
    macs += sum(4 * S * d * d + 2 * S * S * d + 2 * S * d * F for d in w)
    return 2 * macs * batch


def parse_shape(text: str | Path | Sequence[int], space: DesignSpace = PAPER_SPACE) -> Shape:
    """Read a shape as the CLI takes it.

    Accepted: ``360,240,240,...`` (one width per layer), ``360x12``, items mixed as
    ``360,240x3,480x8``, a JSON list, or a JSON file holding ``{"shape": [...]}`` (ours, also
    a bundle's ``shaper.json``) or ``{"sample_hidden_size": [...]}`` (the SuperShaper repo's).
    """
    if not isinstance(text, (str, Path)):
        return Shape(tuple(text), space)
    raw = str(text).strip()
    if len(raw) > MAX_SHAPE_TEXT:
        raise ShapeError(f"the shape is {len(raw):,} characters; at most {MAX_SHAPE_TEXT:,} "
                         "(a shape has one width per layer; a longer one belongs in a .json file)")
    if raw.endswith(".json") or (not raw[:1].isdigit() and not raw.startswith("[")
                                 and _is_file(raw)):
        return Shape(_widths_from_file(Path(raw)), space)
    if raw.startswith("["):
        return Shape(_widths_from_json(_loads(raw, "the shape"), "the shape"), space)
    widths: list[int] = []
    for item in raw.split(","):
        item = item.strip().lower()
        width, times, count = item.partition("x")
        if not width.isdigit() or (times and not count.isdigit()):
            raise ShapeError(f"cannot read {item!r} in shape {raw[:80]!r}: expected widths like "
                             "'360,240,...' (one per layer), '360x12' or a .json file")
        repeat = int(count) if count else 1
        if len(widths) + repeat > space.num_layers:
            raise ShapeError(f"shape {raw[:80]!r} has more widths than the design space's "
                             f"{space.num_layers} layers; give one width per layer")
        widths.extend([int(width)] * repeat)
    return Shape(tuple(widths), space)


MAX_SHAPE_TEXT = 64 * 1024  # the option's text (a file may be a whole bundle manifest)


def _is_file(raw: str) -> bool:
    try:
        return Path(raw).is_file()
    except OSError:  # a name too long to be a path is no file
        return False


def _loads(text: str, what: str) -> Any:
    from .schema import parse_json

    return parse_json(text.encode(), what, ShapeError)


def _widths_from_file(path: Path) -> list[int]:
    if not path.is_file():
        raise ShapeError(f"shape file {path} is a folder, not a JSON file" if path.is_dir()
                         else f"shape file {path} does not exist")
    from .io import read_regular
    from .schema import MAX_JSON_BYTES, parse_json

    data = parse_json(read_regular(path, MAX_JSON_BYTES, "shape file", ShapeError),
                      f"shape file {path}", ShapeError)
    return _widths_from_json(data, f"shape file {path}")


def _widths_from_json(data: Any, what: str) -> list[int]:
    if isinstance(data, dict):
        for key in ("shape", "sample_hidden_size"):
            if key in data:
                data = data[key]
                break
        else:
            raise ShapeError(f"{what} has neither a 'shape' nor a 'sample_hidden_size' list")
    if not isinstance(data, list) or not all(_is_int(w) for w in data):
        raise ShapeError(f"{what} must hold a list of integer widths, got {data!r}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no width


def identity_projections(shape: "Shape") -> list[str]:
    """The projections of ``shape`` that an identity super network (one made from a BERT,
    untrained) fuses to exact identities, which export drops (fusion.drop_identities): the
    input projection when d_1 = D, the output one when d_L = D, and every transition between
    two layers of equal width. Names as in ``FusedBert`` and the bundle's manifest."""
    w, D = shape.widths, shape.space.hidden_size
    return ((["proj_in"] if w[0] == D else [])
            + [f"transitions.{i}" for i in range(len(w) - 1) if w[i] == w[i + 1]]
            + (["proj_out"] if w[-1] == D else []))


def held_out_mask(params, held_out: float = 0.25):
    """A deterministic held-out mask spread evenly over the parameter range: every
    ``1 / held_out``-th shape by parameter count. One split for the latency and the quality
    predictors (profiling and training both import it from here)."""
    import numpy as np

    order = np.argsort(np.asarray(params), kind="stable")
    step = max(2, round(1 / held_out))
    mask = np.zeros(len(order), dtype=bool)
    mask[order[step // 2::step]] = True
    return mask
