"""A real TRL GRPO run on rlft's shipped base model and arithmetic task, reported to rlft
through `RlftCallback` (and to TensorBoard), so `rlft watch` can follow it:

    python integrations/trl/grpo_arith.py --out runs/trl-grpo [--steps 6]
    rlft watch runs/trl-grpo            # in another terminal, while it trains

Needs torch, transformers and trl (PyPI). Runs on the CPU in seconds a step.
"""

import argparse
import json
import os
import sys

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rlft_callback import RlftCallback  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def exact_match(completions, answer, **kwargs):
    """1 when the completion's first line is the sum (rlft's `exact_match`)."""
    return [1.0 if c.split("\n")[0].strip() == a else 0.0 for c, a in zip(completions, answer)]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--model", default=os.path.join(ROOT, "assets", "base"))
    args = p.parse_args()
    rows = [json.loads(l) for l in open(os.path.join(ROOT, "assets/tasks/arithmetic_train.jsonl"))]
    data = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])
    config = GRPOConfig(
        output_dir=args.out,
        max_steps=args.steps,
        per_device_train_batch_size=8,
        num_generations=8,
        max_completion_length=6,
        learning_rate=2e-5,
        logging_steps=1,
        report_to=["tensorboard"],
        save_strategy="steps",
        save_steps=args.steps,
        use_cpu=True,
        log_completions=False,
    )
    trainer = GRPOTrainer(model=args.model, reward_funcs=exact_match, args=config, train_dataset=data)
    trainer.add_callback(RlftCallback(args.out, trainer=trainer, method="grpo"))
    trainer.train()


if __name__ == "__main__":
    main()
