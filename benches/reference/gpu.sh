#!/usr/bin/env bash
# The GPU comparison issue 13 asks for, as one script to run on a machine with an NVIDIA GPU
# (build rlft first with `cargo build --release --features vulkan` and carry the binary):
# rlft on wgpu (SPIR-V) in f32 and in mixed f16, against PyTorch eager CUDA in f32 and with
# bf16 autocast, at SmolLM2-135M 16 x 256 and a Qwen2.5-0.5B shape 8 x 512, with MFU.
#
#   benches/reference/gpu.sh SMOLLM2_DIR QWEN05_SHAPE_DIR
#
# SMOLLM2_DIR: a Hugging Face folder (`rlft convert` of the GGUF); QWEN05_SHAPE_DIR: a folder
# with Qwen2.5-0.5B's config.json (random weights on both sides: `random_model.py` writes the
# torch side's). Environment as run.sh (RLFT, PYTHON, ITERS, PEAK_TFLOPS, OUT_DIR).
set -euo pipefail
cd "$(dirname "$0")/../.."
SMOL=${1:?SmolLM2 Hugging Face folder}
QWEN=${2:?Qwen2.5-0.5B shape folder}
OUT_DIR=${OUT_DIR:-$(mktemp -d -t rlft-gpu-XXXXXX)}
export RLFT_DEVICE=wgpu TORCH_DEVICE=cuda TORCH_AUTOCAST="none bf16"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for precision in f32 f16; do
    for shape in "$SMOL 16 256" "$QWEN 8 512"; do
        set -- $shape
        echo "### $1 $2x$3 rlft precision $precision"
        RLFT_PRECISION=$precision OUT_DIR="$OUT_DIR/$(basename "$1")-$2x$3-$precision" \
            benches/reference/run.sh "$1" "$2" "$3"
    done
done
echo "# JSON lines in $OUT_DIR"
