#!/usr/bin/env bash
# rlft bench and the PyTorch / HF transformers reference, one after the other, same model and
# batch shape, then rlft-vs-torch ratios. See benches/reference/README.md.
#
#   benches/reference/run.sh [MODEL_DIR] [BATCH] [SEQ]
#
# Environment: RLFT (the rlft binary), PYTHON (a python with torch + transformers), ITERS (3),
# GENERATIONS (GRPO completions per prompt, 4), THREADS (threads of both engines; default:
# all CPUs, os.cpu_count() for torch), OMP_WAIT_POLICY (PASSIVE unless set), OUT_DIR (where
# the JSON lines go), RLFT_DEVICE (cpu; wgpu on a GPU) and TORCH_DEVICE (cpu; cuda beside
# RLFT_DEVICE=wgpu), RLFT_PRECISION (f32; f16 = rlft's mixed precision), TORCH_AUTOCAST (the
# torch runs, space-separated among none / bf16 / f16; default `none`, and `none bf16` on
# CUDA: PyTorch eager in f32 and with bf16 autocast, what practitioners run) and PEAK_TFLOPS
# (for MFU; known NVIDIA parts are recognised by name).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${1:-assets/base}
BATCH=${2:-8}
SEQ=${3:-128}
ITERS=${ITERS:-3}
GENERATIONS=${GENERATIONS:-4}
RLFT=${RLFT:-${CARGO_TARGET_DIR:-target}/release/rlft}
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t rlft-bench-XXXXXX)}
RLFT_DEVICE=${RLFT_DEVICE:-cpu}
TORCH_DEVICE=${TORCH_DEVICE:-cpu}
RLFT_PRECISION=${RLFT_PRECISION:-f32}
if [ "$TORCH_DEVICE" = cuda ]; then
    TORCH_AUTOCAST=${TORCH_AUTOCAST:-none bf16}
else
    TORCH_AUTOCAST=${TORCH_AUTOCAST:-none}
fi
peak=()
if [ -n "${PEAK_TFLOPS:-}" ]; then
    peak=(--peak-tflops "$PEAK_TFLOPS")
fi
# libgomp's default busy-waiting collapses when other processes share the cores (10x and
# worse at load 7 on 2 cores); PASSIVE costs little on an idle machine.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

if [ ! -x "$RLFT" ]; then
    echo "no rlft binary at $RLFT: build with cargo build --release or set RLFT" >&2
    exit 1
fi
if ! "$PYTHON" -c 'import torch, transformers' 2>/dev/null; then
    echo "$PYTHON cannot import torch and transformers: set PYTHON (see README.md)" >&2
    exit 1
fi
mkdir -p "$OUT_DIR"
# THREADS pins both engines: rayon's pool for rlft, torch.set_num_threads for torch.
threads=()
if [ -n "${THREADS:-}" ]; then
    threads=(--threads "$THREADS")
    export RAYON_NUM_THREADS=$THREADS
fi
echo "# $(date -u +%FT%TZ) $(uname -n) nproc=$(nproc) loadavg: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# model $MODEL, batch $BATCH, seq $SEQ, iters $ITERS, G $GENERATIONS, rlft on $RLFT_DEVICE, torch on $TORCH_DEVICE"
echo
echo "## rlft: $RLFT bench --model $MODEL --batch $BATCH --seq $SEQ --iters $ITERS --generations $GENERATIONS --device $RLFT_DEVICE --precision $RLFT_PRECISION --json"
"$RLFT" bench --model "$MODEL" --batch "$BATCH" --seq "$SEQ" --iters "$ITERS" \
    --generations "$GENERATIONS" --device "$RLFT_DEVICE" --precision "$RLFT_PRECISION" --json \
    | tee "$OUT_DIR/rlft.json"
# The first torch run is torch.json (sweep.sh reads it); the others say their autocast.
name=torch.json
for autocast in $TORCH_AUTOCAST; do
    echo
    echo "## torch (autocast $autocast): loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
    "$PYTHON" benches/reference/torch_reference.py --model "$MODEL" --batch "$BATCH" \
        --seq "$SEQ" --iters "$ITERS" --generations "$GENERATIONS" --device "$TORCH_DEVICE" \
        --autocast "$autocast" "${threads[@]}" "${peak[@]}" \
        --rlft-json "$OUT_DIR/rlft.json" --save-json "$OUT_DIR/${name:-torch-$autocast.json}" \
        2> >(grep -v -E "Loading weights|^\s*$" >&2)
    name=
done
echo
echo "# JSON lines in $OUT_DIR"
