#!/usr/bin/env bash
# Single-stream decode of SmolLM2-135M at f32: llama.cpp's llama-bench against rlft's batch-1
# rollout, same thread count. See benches/reference/README.md for building llama.cpp from the
# PyPI llama-cpp-python sdist.
#
#   benches/reference/llama_cpp.sh [GGUF] [NEW_TOKENS]
#
# Environment: LLAMA_BIN (folder with llama-bench and llama-quantize; default
# ~/.cache/rlft/llama-build/bin), RLFT (the rlft binary), THREADS (default nproc),
# WORK (where the f32 GGUF and the converted HF folder go; default ~/.cache/rlft), REPS (3).
# llama-bench keeps its defaults otherwise (f16 KV cache: it accepts no f32 cache type).
set -euo pipefail
cd "$(dirname "$0")/../.."

GGUF=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
NEW=${2:-96}
LLAMA_BIN=${LLAMA_BIN:-$HOME/.cache/rlft/llama-build/bin}
RLFT=${RLFT:-${CARGO_TARGET_DIR:-target}/release/rlft}
THREADS=${THREADS:-$(nproc)}
WORK=${WORK:-$HOME/.cache/rlft}
name=$(basename "$GGUF" .gguf)
F32="$WORK/${name%.Q*}.F32.gguf"
HF="$WORK/${name%.Q*}-f32-hf"
# rlft bench's rollout: prompt T/4 random tokens, then T - T/4 new ones; pick T so that the
# new-token count is NEW, and give llama-bench the same prompt as context depth.
SEQ=$NEW
while [ $(( SEQ - SEQ / 4 )) -lt "$NEW" ]; do SEQ=$(( SEQ + 1 )); done
PROMPT=$(( SEQ / 4 ))

for tool in llama-bench llama-quantize; do
    if [ ! -x "$LLAMA_BIN/$tool" ]; then
        echo "no $LLAMA_BIN/$tool: build llama.cpp first (README.md) or set LLAMA_BIN" >&2
        exit 1
    fi
done
mkdir -p "$WORK"
# Same weights for both: Q4_1 dequantised to f32 (llama-quantize) and (rlft convert).
[ -f "$F32" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$GGUF" "$F32" F32 "$THREADS" >/dev/null 2>&1
[ -f "$HF/model.safetensors" ] || "$RLFT" convert "$GGUF" "$HF" >/dev/null

echo "# $(date -u +%FT%TZ) nproc=$(nproc) threads=$THREADS loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## llama.cpp: llama-bench -m $F32 -p 0 -n $NEW -d $PROMPT -t $THREADS -r ${REPS:-3} -o jsonl"
lc=$("$LLAMA_BIN/llama-bench" -m "$F32" -p 0 -n "$NEW" -d "$PROMPT" -t "$THREADS" -r "${REPS:-3}" \
    -o jsonl 2>/dev/null | tail -1)
echo "$lc"
echo "## rlft: RAYON_NUM_THREADS=$THREADS $RLFT bench --model $HF --batch 1 --seq $SEQ --iters 3 --generations 1 --json"
rl=$(RAYON_NUM_THREADS=$THREADS "$RLFT" bench --model "$HF" --batch 1 --seq "$SEQ" --iters 3 --generations 1 --json | tail -1)
echo "$rl"
python3 - "$lc" "$rl" <<'PY'
import json, sys
lc, rl = json.loads(sys.argv[1]), json.loads(sys.argv[2])
a, b = rl["decode_tokens_per_s"], lc["avg_ts"]
whole = rl["rollout_tokens_per_s"]
print()
print(f"single-stream decode, f32, {lc['n_gen']} new tokens after {lc.get('n_depth', 0)} context")
print(f"  rlft       {a:8.1f} tokens/s  (decode only; {whole:.1f} with the prefill)")
print(f"  llama.cpp  {b:8.1f} tokens/s  (+/- {lc.get('stddev_ts', 0):.1f}, decode only)")
print(f"  ratio      {a / b:8.2f}x  (target >= 0.8x: {'met' if a / b >= 0.8 else 'missed by %.0f %%' % (100 * (1 - a / b / 0.8))})")
PY
