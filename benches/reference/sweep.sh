#!/usr/bin/env bash
# run.sh over several batch shapes, then one table of train and score tokens/s, rlft against
# PyTorch, per shape: a regression at any shape shows (a figure that holds at batch 8 and
# collapses at batch 16 is not a result). See benches/reference/README.md.
#
#   benches/reference/sweep.sh [MODEL_DIR] [SHAPES...]      SHAPES like 8x128 (default:
#                                                           4x128 8x128 16x128 32x128 4x512)
#
# Environment: as run.sh (RLFT, PYTHON, ITERS, THREADS, ...); SWEEP_DIR keeps the JSON lines.
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${1:-assets/base}
shift || true
SHAPES=("$@")
if [ ${#SHAPES[@]} -eq 0 ]; then
    SHAPES=(4x128 8x128 16x128 32x128 4x512)
fi
PYTHON=${PYTHON:-python3}
SWEEP_DIR=${SWEEP_DIR:-$(mktemp -d -t rlft-sweep-XXXXXX)}
export ITERS=${ITERS:-2}

for shape in "${SHAPES[@]}"; do
    batch=${shape%x*}
    seq=${shape#*x}
    if ! [[ "$batch" =~ ^[0-9]+$ && "$seq" =~ ^[0-9]+$ ]]; then
        echo "shape \`$shape\` is not BATCHxSEQ (e.g. 8x128)" >&2
        exit 2
    fi
    echo "### $MODEL $shape" >&2
    OUT_DIR="$SWEEP_DIR/$shape" benches/reference/run.sh "$MODEL" "$batch" "$seq" >&2
done

"$PYTHON" - "$SWEEP_DIR" "${SHAPES[@]}" <<'EOF'
import json, sys
root, shapes = sys.argv[1], sys.argv[2:]
def last(path):
    with open(path) as f:
        return json.loads([l for l in f if l.strip().startswith("{")][-1])
rows = []
for s in shapes:
    r, t = last(f"{root}/{s}/rlft.json"), last(f"{root}/{s}/torch.json")
    rows.append((s, r["train_tokens_per_s"], t["train_tokens_per_s"],
                 r["score_tokens_per_s"], t["score_tokens_per_s"],
                 r["rollout_tokens_per_s"], t["rollout_tokens_per_s"]))
print(f"{'shape':>8} | {'train rlft':>10} {'torch':>8} {'ratio':>6} | "
      f"{'score rlft':>10} {'torch':>8} {'ratio':>6} | {'rollout rlft':>12} {'torch':>8} {'ratio':>6}")
for s, tr, tt, sr, st, rr, rt in rows:
    print(f"{s:>8} | {tr:>10.0f} {tt:>8.0f} {tr / tt:>6.2f} | {sr:>10.0f} {st:>8.0f} "
          f"{sr / st:>6.2f} | {rr:>12.0f} {rt:>8.0f} {rr / rt:>6.2f}")
print(f"\n# JSON lines in {root}")
EOF
