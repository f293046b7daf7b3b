"""What moving the input and output projections' permutations into the layers buys
(``fusion.align_orders``), on a super network whose features were ordered by importance
(``shaperctl supernet init --order residual+heads``, as the demo makes it).

Each shape is exported twice from the same super network: as before (the permutations left
in the input and output projections, two D x D matrices at the full width) and as export
writes it now. Both graphs, fp32 and int8, are timed interleaved in one run with the
profiling protocol (2 threads); reported per shape, precision and size: each one's median
and p90, the median of the per-round ratios now / before, the projections dropped, and the
int8 model's closeness to its own fp32 graph (mean token and sentence cosine on the export's
32 English sentences, as the bundle records it). No timing assertions anywhere.

    .venv/bin/python benchmarks/masked_isa.py --isa avx2 -- .venv/bin/python \\
        benchmarks/aligned_orders.py --supernet runs/minilm-super \\
        --out benchmarks/results/aligned_orders_masked_avx2_amd_zen4_s57.json

(``masked_isa.py`` hides AVX-512 from ONNX Runtime, the AVX2-only class's stand-in; without
it the cores' own ISA is measured.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from pathlib import Path
from unittest import mock

from shaper_deploy import fusion
from shaper_deploy.export import ExportOptions, export_bundle
from shaper_deploy.profiling.protocol import Protocol, measure_interleaved
from shaper_deploy.runtime import make_session
from shaper_deploy.shape import parse_shape
from shaper_deploy.supernet.checkpoint import load_supernet

SHAPES = ("384x6", "300,300,300,384,384,384", "384,300,300,300,300,384",
          "180,60,180,180,240,300")  # the last: no full-width edge, nothing moves (control)
WORKLOADS = [(1, 32), (1, 128), (4, 64)]
VARIANTS = ("before", "now")


def export_both(net, shape, work: Path) -> dict:
    """``variant -> (bundle folder, manifest)``: "before" with the permutations left where
    fusion put them, "now" as export writes it."""
    out = {}
    for variant in VARIANTS:
        folder = work / f"{shape}-{variant}".replace(",", "_")
        keep = (mock.patch.object(fusion, "align_orders", lambda fused: None)
                if variant == "before" else contextlib.nullcontext())
        with keep:
            out[variant] = (folder, export_bundle(net, shape, folder, ExportOptions(int8=True)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--supernet", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    net = load_supernet(args.supernet)
    space = net.config.space
    rows, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for text in SHAPES:
            shape = parse_shape(text, space)
            print(f"exporting {shape} before and now", file=sys.stderr)
            both = export_both(net, shape, Path(tmp))
            for variant, (folder, m) in both.items():
                q = m.quantization or {}
                models.append({"shape": text, "variant": variant,
                               "dropped": m.dropped_identities,
                               "int8_token_cosine": q.get("mean_token_cosine"),
                               "int8_sentence_cosine": q.get("mean_sentence_cosine")})
            sessions = {(v, p): make_session(folder / name, "cpu", threads=2)
                        for v, (folder, _) in both.items()
                        for p, name in (("fp32", "model.onnx"),
                                        ("int8", "model_quantized.onnx"))}
            for b, s in WORKLOADS:
                feeds = net.config.dummy_inputs(b, s, padding="none")
                res = measure_interleaved(
                    {k: (lambda x=x: x.run(["last_hidden_state"], feeds))
                     for k, x in sessions.items()}, Protocol(rounds=args.rounds), seed=7)
                for p in ("fp32", "int8"):
                    a, z = res[("before", p)], res[("now", p)]
                    ratio = statistics.median(n / o for n, o in zip(z["round_medians"],
                                                                     a["round_medians"]))
                    rows.append({"shape": text, "precision": p, "batch": b, "seq_len": s,
                                 "before_ms": a["median_ms"], "now_ms": z["median_ms"],
                                 "before_p90_ms": a["p90_ms"], "now_p90_ms": z["p90_ms"],
                                 "ratio_now_over_before": ratio})
                    print(f"{text} {p} {b}x{s}: before {a['median_ms']:.2f} ms (p90 "
                          f"{a['p90_ms']:.2f}), now {z['median_ms']:.2f} ms (p90 "
                          f"{z['p90_ms']:.2f}), now / before x{ratio:.3f}", file=sys.stderr)
    for m in models:
        print(f"{m['shape']} {m['variant']}: {len(m['dropped'])} dropped, int8 cosine token "
              f"{m['int8_token_cosine']}, sentence {m['int8_sentence_cosine']}", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "aligned_orders", "rounds": args.rounds,
                                    "models": models, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
