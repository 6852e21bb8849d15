#!/usr/bin/env python3
"""Builds assets/data/arith_prefs_{train,eval}.jsonl: TRL preference rows for the arithmetic
task, where the truth is checkable: the correct sum is chosen over a near miss of the kind a
small model makes (last digit off by one or two, tens digit off by one, a dropped or doubled
carry, two digits swapped).

    {"prompt": "96+51=", "chosen": "147", "rejected": "146"}

Problems come from the task files, so the held-out eval pairs use only the held-out problems
of assets/tasks/arithmetic_eval.jsonl (never seen in pretraining, SFT or GRPO training):

    python3 scripts/make_arith_prefs.py
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Two near misses per training problem: each problem teaches the correct sum against
# different mistakes, and 2,000 problems give 4,000 pairs.
TRAIN_PAIRINGS = 2
SEED = 0


def near_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer close to `answer`, of one of the kinds small models get wrong."""
    while True:
        kind = rng.choice(["ones", "ones2", "tens", "carry", "swap"])
        if kind == "ones":
            wrong = answer + rng.choice([-1, 1])
        elif kind == "ones2":
            wrong = answer + rng.choice([-2, 2])
        elif kind == "tens":
            wrong = answer + rng.choice([-10, 10])
        elif kind == "carry":
            wrong = answer + rng.choice([-100, 100]) if answer >= 100 else answer + 100
        else:
            digits = list(str(answer))
            if len(digits) < 2:
                continue
            i = rng.randrange(len(digits) - 1)
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
            if digits[0] == "0":
                continue
            wrong = int("".join(digits))
        if wrong >= 0 and wrong != answer:
            return wrong


def pairs(task_file: Path, pairings: int, rng: random.Random):
    rows = []
    for line in task_file.read_text().splitlines():
        item = json.loads(line)
        answer = int(item["answer"])
        seen = set()
        for _ in range(pairings):
            wrong = near_miss(answer, rng)
            while wrong in seen:
                wrong = near_miss(answer, rng)
            seen.add(wrong)
            rows.append({"prompt": item["prompt"], "chosen": str(answer), "rejected": str(wrong)})
    return rows


def write(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{path.relative_to(ROOT)}: {len(rows)} pairs")


def main():
    rng = random.Random(SEED)
    tasks = ROOT / "assets" / "tasks"
    train = pairs(tasks / "arithmetic_train.jsonl", TRAIN_PAIRINGS, rng)
    rng.shuffle(train)
    evals = pairs(tasks / "arithmetic_eval.jsonl", 1, rng)
    out = ROOT / "assets" / "data"
    write(out / "arith_prefs_train.jsonl", train)
    write(out / "arith_prefs_eval.jsonl", evals)


if __name__ == "__main__":
    main()
