#!/usr/bin/env bash
# Do two rlft binaries train to the same numbers? Runs four short headless trainings with each
# (GRPO as shipped; GRPO with RLOO, GSPO, num_iterations = 2, a KL term, dynamic sampling,
# demonstrations, overlong punishment and eval with pass@2; PPO with a VADER reward; online
# DPO labelled by a judge program) and compares their metrics.jsonl, timings aside. Used to
# check that a refactor changed no number:
#
#     git worktree add /tmp/old <commit> && (cd /tmp/old && cargo build --release)
#     scripts/same-metrics.sh /tmp/old/target/release/rlft target/release/rlft
set -euo pipefail
old=$1; new=$2
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
abs() { sed -e "s#\"assets/#\"$root/assets/#" "$1"; }
cat > judge.py <<'PY'
import json, sys
batch = json.load(sys.stdin)
def key(t): return (len(t), t)
print(json.dumps([1 if key(c["first"]) > key(c["second"]) else 2 if key(c["second"]) > key(c["first"]) else 0 for c in batch]))
PY
abs "$root/configs/grpo.toml" | sed -e 's/^max_steps = .*/max_steps = 12/' > grpo.toml
abs "$root/configs/grpo.toml" | sed -e 's/^max_steps = .*/max_steps = 6/' \
  -e 's/^eval_steps = .*/eval_steps = 3\neval_before_train = true\nnum_eval_generations = 2/' \
  -e 's/^beta = 0.0/beta = 0.04\nnum_iterations = 2\ndynamic_sampling = true\nsft_coef = 0.1\noverlong_buffer_len = 2\nmask_truncated_completions = true\nadvantage_estimator = "rloo"\nimportance_sampling_level = "sequence"/' > grpo2.toml
abs "$root/configs/ppo.toml" | sed -e 's/^max_steps = .*/max_steps = 4/' -e 's#^value_model = .*##' \
  | python3 -c "import sys; s=sys.stdin.read(); i=s.rindex('\n[[rewards]]'); print(s[:i]+'\n[[rewards]]\ntype = \"sentiment\"\n')" > ppo.toml
abs "$root/configs/online_dpo.toml" | sed -e 's/^max_steps = .*/max_steps = 5/' -e 's/^eval_steps = .*/eval_steps = 5/' \
  -e 's/^labeler = "human"/labeler = "judge"/' > odpo.toml
printf '\n[judge]\ntype = "command"\ncommand = ["python3", "%s/judge.py"]\nprinciple = "longer"\ntimeout_secs = 20\n' "$work" >> odpo.toml
for tag in old new; do
  bin=${!tag}
  for c in grpo grpo2 ppo odpo; do
    # From the repository root: reward sources find their shipped files (the VADER lexicon).
    (cd "$root" && "$bin" train "$work/$c.toml" --headless --run-dir "$work/$tag/$c") > "$tag-$c.log" 2>&1 \
      || { echo "$tag $c failed:"; tail -3 "$tag-$c.log"; exit 1; }
  done
done
python3 - <<'PY'
import json, sys
skip = ("step_time", "timing/", "wall_time")
bad = 0
for c in ["grpo", "grpo2", "ppo", "odpo"]:
    a = [json.loads(l) for l in open(f"old/{c}/metrics.jsonl")]
    b = [json.loads(l) for l in open(f"new/{c}/metrics.jsonl")]
    diffs = [(ra.get("step"), k) for ra, rb in zip(a, b) for k in set(ra) | set(rb)
             if not k.startswith(skip) and ra.get(k) != rb.get(k)]
    if len(a) != len(b):
        diffs.append(("rows", len(a), len(b)))
    print(f"{c}: {len(a)} rows, {len(diffs)} differences {diffs[:5]}")
    bad += len(diffs)
sys.exit(1 if bad else 0)
PY
