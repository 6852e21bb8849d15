"""rlft's callback for TRL (and any transformers `Trainer`): writes the run into a folder in
rlft's format while it trains, so `rlft watch FOLDER` (or `rlft` on the runs folder) shows
its curves, samples and health live.

    from rlft_callback import RlftCallback
    trainer = GRPOTrainer(...)
    trainer.add_callback(RlftCallback("runs/trl-grpo", trainer=trainer, method="grpo"))
    trainer.train()

Written into the folder:
- `metrics.jsonl`: one line per `Trainer.log` call, `{"step", "wall_time", <metric>: value}`
  with TRL's metric names (which rlft uses too), flushed at once;
- `samples.jsonl`: with `trainer=` a GRPO/RLOO trainer, the newest generation batch's
  prompts, completions, rewards per function and advantages at each log (up to
  `samples_per_step` of them), `{"step", "prompt", "completion", "rewards", "advantage"}`;
- `config.toml` (method, name, max steps) and `status.json` (running / finished / failed).

Only the main process writes (`state.is_world_process_zero`). No dependency beyond
transformers.
"""

import json
import math
import os
import time

from transformers import TrainerCallback


class RlftCallback(TrainerCallback):
    def __init__(self, run_dir, trainer=None, method="grpo", name=None, samples_per_step=8):
        self.run_dir = run_dir
        self.trainer = trainer
        self.method = method
        self.name = name or os.path.basename(os.path.normpath(run_dir))
        self.samples_per_step = samples_per_step
        self.started = None
        self.last_sample_step = -1

    def _path(self, name):
        return os.path.join(self.run_dir, name)

    def _status(self, status, step, error=None):
        state = {"status": status, "step": step}
        if error:
            state["error"] = error
        tmp = self._path("status.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self._path("status.json"))

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        os.makedirs(self.run_dir, exist_ok=True)
        self.started = time.time()
        with open(self._path("config.toml"), "w") as f:
            f.write("# Written by rlft's TRL callback (integrations/trl/rlft_callback.py).\n")
            f.write(f"method = {json.dumps(self.method)}\nname = {json.dumps(self.name)}\n")
            f.write(f"\n[train]\nmax_steps = {int(state.max_steps or 0)}\n")
        self._status("running", state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if self.started is None:
            self.on_train_begin(args, state, control)
        row = {"step": state.global_step, "wall_time": time.time() - self.started}
        for key, value in logs.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            # JSON has no NaN: null, which rlft reads back as NaN (its Health pane warns).
            row[key] = float(value) if math.isfinite(value) else None
        with open(self._path("metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_samples(state.global_step)

    def _write_samples(self, step):
        logs = getattr(self.trainer, "_logs", None)
        if not logs or step == self.last_sample_step or not logs.get("prompt"):
            return
        self.last_sample_step = step
        prompts = list(logs["prompt"])
        completions = list(logs["completion"])
        rewards = {name: list(values) for name, values in logs.get("rewards", {}).items()}
        advantages = list(logs.get("advantages", []))
        lines = []
        for i in range(min(len(prompts), len(completions), self.samples_per_step)):
            prompt, completion = prompts[i], completions[i]
            # Conversational datasets log message lists: show the last message's text.
            if isinstance(prompt, list) and prompt:
                prompt = prompt[-1].get("content", str(prompt[-1]))
            if isinstance(completion, list) and completion:
                completion = completion[-1].get("content", str(completion[-1]))
            sample = {
                "step": step,
                "prompt": str(prompt),
                "completion": str(completion),
                "rewards": {
                    name: float(v[i])
                    for name, v in rewards.items()
                    if i < len(v) and v[i] is not None and math.isfinite(v[i])
                },
            }
            if i < len(advantages):
                sample["advantage"] = float(advantages[i])
            lines.append(json.dumps(sample) + "\n")
        with open(self._path("samples.jsonl"), "a") as f:
            f.writelines(lines)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.started is not None:
            self._status("finished", state.global_step)
