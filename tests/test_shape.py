import json

import pytest

from shaper_deploy.errors import ShapeError
from shaper_deploy.shape import (PAPER_SPACE, DesignSpace, Shape, flops, paper_widths_for,
                                 param_breakdown, param_count, parse_shape)

LOWER_TRIANGLE = [120, 120, 240, 240, 360, 360, 360, 480, 540, 540, 600, 768]
EA_BEST = [480, 360, 360, 240, 240, 360, 480, 480, 360, 480, 540, 540]


@pytest.mark.parametrize("widths, expected", [
    ([768] * 12, 115_989_504),
    ([120] * 12, 33_190_656),
    ([360] * 12, 58_079_616),
    (LOWER_TRIANGLE, 64_212_768),
    (EA_BEST, 64_742_016),
])
def test_param_count_matches_paper_convention(widths, expected):
    assert param_count(widths) == expected
    assert Shape(widths).params() == expected


def test_unfused_count_of_bert_base():
    assert param_count([768] * 12, fused=False) == 122_486_016


def test_breakdown_sums_and_mlm_flag():
    parts = param_breakdown(LOWER_TRIANGLE)
    assert parts["embeddings"] == 22_665_216
    assert sum(parts.values()) == 64_212_768
    no_head = DesignSpace(mlm_head=False)
    assert param_count(LOWER_TRIANGLE, no_head) == 64_212_768 - (768 * 768 + 3 * 768)


def test_flops_by_hand_for_a_tiny_shape():
    space = DesignSpace(num_layers=2, widths=(4, 8), hidden_size=8, num_heads=4,
                        intermediate_size=16, vocab_size=10, max_positions=8)
    S = 3
    chain = S * (8 * 4 + 4 * 8 + 8 * 8)  # D->4, 4->8, 8->D
    layer = lambda d: 4 * S * d * d + 2 * S * S * d + 2 * S * d * 16  # noqa: E731
    assert flops([4, 8], seq_len=S, space=space) == 2 * (chain + layer(4) + layer(8))
    assert flops([4, 8], seq_len=S, batch=5, space=space) == 5 * flops([4, 8], S, space=space)


def test_parse_every_accepted_form(tmp_path):
    assert parse_shape("360x12") == Shape.uniform(360)
    assert parse_shape(",".join(map(str, LOWER_TRIANGLE))).widths == tuple(LOWER_TRIANGLE)
    assert parse_shape("120x2,240x2,360x3,480,540x2,600,768").widths == tuple(LOWER_TRIANGLE)
    assert parse_shape(json.dumps(EA_BEST)).widths == tuple(EA_BEST)
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"shape": EA_BEST}))
    theirs = tmp_path / "theirs.json"
    theirs.write_text(json.dumps({"sample_hidden_size": LOWER_TRIANGLE, "other": 1}))
    assert parse_shape(str(ours)).widths == tuple(EA_BEST)
    assert parse_shape(theirs).widths == tuple(LOWER_TRIANGLE)
    assert str(parse_shape("360x12")) == "360x12"
    assert parse_shape(str(parse_shape(",".join(map(str, EA_BEST))))).widths == tuple(EA_BEST)


@pytest.mark.parametrize("text, message", [
    ("360x11", "shape has 11 widths but the design space has 12 layers"),
    ("360x11,350", "layer 12 width 350 is not divisible by the 12 attention heads; "
                   "allowed widths: 120, 240, 360, 480, 540, 600, 768"),
    ("360x11,372", "layer 12 width 372 is not in the design space; "
                   "allowed widths: 120, 240, 360, 480, 540, 600, 768"),
    ("36a,240", "cannot read '36a'"),
    ("360x", "cannot read '360x'"),
    ("missing.json", "shape file missing.json does not exist"),
    ("[1, 2", "the shape is not readable JSON"),
])
def test_bad_shapes_say_what_is_allowed(text, message):
    with pytest.raises(ShapeError) as err:
        parse_shape(text)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_shape_files(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"widths": [1]}))
    with pytest.raises(ShapeError, match="neither a 'shape' nor a 'sample_hidden_size'"):
        parse_shape(f)
    f.write_text(json.dumps({"shape": ["360"] * 12}))
    with pytest.raises(ShapeError, match="must hold a list of integer widths"):
        parse_shape(f)


@pytest.mark.parametrize("kwargs, message", [
    ({"widths": (120, 125)}, "width 125 is not divisible by the 12 attention heads"),
    ({"widths": (240, 120)}, "strictly ascending"),
    ({"widths": (120, 780)}, "outside 1..768"),
    ({"widths": ()}, "has no widths"),
    ({"num_layers": 0}, "num_layers must be an integer in 1..128"),
])
def test_bad_design_spaces(kwargs, message):
    with pytest.raises(ShapeError, match=message):
        DesignSpace(**kwargs)


def test_design_space_roundtrip_and_derivation():
    assert DesignSpace.from_dict(PAPER_SPACE.to_dict()) == PAPER_SPACE
    assert paper_widths_for(768, 12) == PAPER_SPACE.widths
    # MiniLM (D=384): the paper's fractions, rounded to multiples of the 12 heads.
    assert paper_widths_for(384, 12) == (60, 120, 180, 240, 264, 300, 384)
    assert PAPER_SPACE.size == 7 ** 12
    with pytest.raises(ShapeError, match="unknown design space field"):
        DesignSpace.from_dict({"layers": 3})
