#!/usr/bin/env python3
"""PyTorch eager / HF transformers reference for `rlft bench`.

Measures, for a Hugging Face model folder and a batch shape B x T, the same four things
`rlft bench` measures, with the same inputs:

- train:   forward + backward + AdamW (grad-norm clip 1.0, weight decay 0) on B x T
           pseudo-random tokens (the xorshift rows `rlft bench` uses), next-token loss;
- score:   a no-grad forward with the same loss over the same B x T rows;
- rollout: HF `generate` on B prompts of T/4 tokens, sampling (temperature 1, no top-k /
           top-p), exactly T - T/4 new tokens per row (EOS ignored), KV cache on;
- grpo:    one GRPO step (B/G prompts of T/2 tokens x G completions of T - T/2 tokens,
           exact-match reward on sums, group-scaled advantages, k3 KL (beta 0.04) to a frozen
           reference, DAPO token-mean loss, one AdamW step), split into generation / scoring /
           update like `rlft bench`.

Prints one JSON object (`--json`) or a table. With `--rlft-json FILE` (the `--json` line of
`rlft bench` for the same model and shape) it also prints rlft / torch ratios.

    python torch_reference.py --model assets/base --batch 8 --seq 128
"""

import argparse
import contextlib
import copy
import json
import os
import resource
import sys
import time

MASK64 = (1 << 64) - 1


def xorshift(x):
    x ^= (x << 13) & MASK64
    x ^= x >> 7
    x ^= (x << 17) & MASK64
    return x


def token_rows(batch, length, vocab, salt):
    """The rows of `rlft bench` (src/engine/bench.rs `token_rows`), bit for bit."""
    x = 0x9E3779B97F4A7C15 ^ salt
    rows = []
    for _ in range(batch):
        row = []
        for _ in range(length):
            x = xorshift(x)
            row.append(x % vocab)
        rows.append(row)
    return rows


def arithmetic_prompts(n, prompt_len, tokenizer):
    """The GRPO prompts of `rlft bench` (`arithmetic_prompts`): few-shot sums ending in a
    question, cut on the left to exactly `prompt_len` tokens."""
    x = 0x2545F4914F6CDD1D

    def nxt():
        nonlocal x
        x = xorshift(x)
        return 10 + x % 90

    out = []
    for _ in range(n):
        shots = ""
        a, b = nxt(), nxt()
        question = f"{a} + {b} ="
        while True:
            ids = tokenizer(shots + question, add_special_tokens=False)["input_ids"]
            if len(ids) >= prompt_len or (not ids and len(shots) > 4096):
                ids = ids[max(0, len(ids) - prompt_len):]
                break
            c, d = nxt(), nxt()
            shots += f"{c} + {d} = {c + d}\n"
        out.append({"ids": ids, "answer": str(a + b)})
    return out


def exact_match(completion, answer):
    """rlft's `ExactMatch` with `AnswerKind::Integer`: the first line, trimmed, equal as
    integers when both parse, else as strings."""
    line = completion.split("\n", 1)[0].strip()
    try:
        return float(int(line) == int(answer))
    except ValueError:
        return float(line == answer)


# Dense f16 / bf16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets.
PEAK_TFLOPS = [("H200", 989.4), ("H100 PCIe", 756.0), ("H100", 989.4), ("A100", 312.0),
               ("L40S", 362.1), ("L4", 121.0), ("A10G", 70.0), ("RTX 4090", 165.2)]


def known_peak_tflops(torch, dev):
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((peak for part, peak in PEAK_TFLOPS if part in name), None)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def sync_params(model):
    # Reading one value waits for the update (CUDA is asynchronous; eager CPU is not).
    next(model.parameters()).view(-1)[0].item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="assets/base", help="Hugging Face model folder")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations after a warm-up")
    ap.add_argument("--generations", type=int, default=4, help="GRPO completions per prompt")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch intra-op threads (default: os.cpu_count())")
    ap.add_argument("--attn", default="sdpa", help="attn_implementation: sdpa or eager")
    ap.add_argument("--device", default="cpu",
                    help="torch device: cpu (the issue's reference) or cuda (beside rlft's wgpu)")
    ap.add_argument("--no-grpo", action="store_true", help="skip the GRPO step")
    ap.add_argument("--autocast", default="none", choices=["none", "bf16", "f16"],
                    help="torch.autocast for every forward (what practitioners run on GPUs); "
                         "f16 training uses a GradScaler")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's dense f16 tensor-core peak, for MFU (default: known "
                         "NVIDIA parts by name)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    ap.add_argument("--rlft-json", help="rlft bench --json output to compare with")
    ap.add_argument("--save-json", help="also write this run's JSON object to this file")
    args = ap.parse_args()

    load_at_start = os.getloadavg()[0]
    if load_at_start > (os.cpu_count() or 1) + 0.5:
        print(f"warning: load average {load_at_start:.1f} on {os.cpu_count()} CPUs: figures "
              "are contended (see README: OMP_WAIT_POLICY)", file=sys.stderr)

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation=args.attn
    ).to(dev)
    cfg = model.config
    b = args.batch
    t = min(args.seq, cfg.max_position_embeddings)
    vocab = cfg.vocab_size
    iters = max(1, args.iters)
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0

    half = {"bf16": torch.bfloat16, "f16": torch.float16}.get(args.autocast)

    def autocast():
        if half is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=half)

    scaler = torch.amp.GradScaler(dev.type) if args.autocast == "f16" else None

    rows = torch.tensor(token_rows(b, t, vocab, 1), dtype=torch.long, device=dev)
    tokens = b * t

    # Scoring: no-grad forward + loss over the whole batch.
    model.eval()

    def score_once():
        start = time.perf_counter()
        with torch.inference_mode(), autocast():
            loss = model(input_ids=rows, labels=rows).loss
            loss.item()
        return time.perf_counter() - start

    score_once()
    score_s = sum(score_once() for _ in range(iters)) / iters

    # Rollouts: prompts of T/4 tokens, T - T/4 sampled tokens per row, EOS ignored.
    prompt_len = max(1, t // 4)
    new_tokens = t - prompt_len
    prompts = torch.tensor(token_rows(b, prompt_len, vocab, 2), dtype=torch.long, device=dev)

    def generate(input_ids, n_new, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # no_grad (what `generate` itself uses), so the output can feed a training forward.
        with torch.no_grad(), autocast():
            return model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=n_new,
                min_new_tokens=n_new,
                pad_token_id=pad,
                use_cache=True,
            )

    def rollout_once():
        start = time.perf_counter()
        out = generate(prompts, new_tokens)
        out[0, -1].item()
        elapsed = time.perf_counter() - start
        assert out.shape[1] - prompt_len == new_tokens, out.shape
        return elapsed

    rollout_once()
    rollout_s = rollout_once()

    # Training: forward + backward + clip + AdamW (rlft's defaults: wd 0, eps 1e-8).
    model.train()
    # dropout is 0 in these configs; train() only matters for parity of code paths.
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                              weight_decay=0.0)

    def train_once():
        start = time.perf_counter()
        with autocast():
            loss = model(input_ids=rows, labels=rows).loss
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optim)
        else:
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(optim)
            scaler.update()
        else:
            optim.step()
        optim.zero_grad(set_to_none=True)
        sync_params(model)
        return time.perf_counter() - start

    train_once()
    train_s = sum(train_once() for _ in range(iters)) / iters

    report = {
        "engine": "torch",
        "torch": torch.__version__,
        "device": args.device,
        "attn": args.attn,
        "model": args.model,
        "params": params,
        "batch": b,
        "seq": t,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "loadavg_1m_at_start": load_at_start,
        "train_tokens_per_s": tokens / train_s,
        "train_step_s": train_s,
        "rollout_tokens_per_s": b * new_tokens / rollout_s,
        "rollout_new_tokens": new_tokens,
        "score_tokens_per_s": tokens / score_s,
        "train_gflops": 6.0 * params * tokens / train_s / 1e9,
        "autocast": args.autocast,
    }
    peak = args.peak_tflops or known_peak_tflops(torch, dev)
    if peak:
        # Model FLOP utilisation against the dense f16/bf16 tensor-core peak: 6 N per trained
        # token, 2 N per scored one (attention's FLOPs left out, as nanoGPT / PaLM count).
        report["peak_tflops"] = peak
        report["train_mfu"] = 6.0 * params * report["train_tokens_per_s"] / (peak * 1e12)
        report["score_mfu"] = 2.0 * params * report["score_tokens_per_s"] / (peak * 1e12)

    if not args.no_grpo:
        report.update(grpo_bench(model, optim, args, b, t, pad, iters, generate, autocast, torch))
    report["peak_rss_mb"] = peak_rss_mb()
    if dev.type == "cuda":
        report["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20

    if args.save_json:
        with open(args.save_json, "w") as f:
            f.write(json.dumps(report) + "\n")
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    if args.rlft_json:
        with open(args.rlft_json) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip().startswith("{")]
        if not lines:
            sys.exit(f"{args.rlft_json}: no JSON line from rlft bench")
        print_ratios(json.loads(lines[-1]), report, out=sys.stderr if args.json else sys.stdout)


def grpo_bench(model, optim, args, b, t, pad, iters, generate, autocast, torch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    g = max(1, min(args.generations, b))
    prompt_len = max(1, t // 2)
    new_tokens = t - prompt_len
    items = arithmetic_prompts(b // g, prompt_len, tok)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    beta, eps = 0.04, 0.2
    totals = {"generation": 0.0, "scoring": 0.0, "update": 0.0}

    def token_logprobs(logits, targets):
        return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    for step in range(iters):
        torch.manual_seed(step + 1)
        # Generation: G samples per prompt, all prompts the same length (no padding needed).
        start = time.perf_counter()
        model.eval()
        dev = next(model.parameters()).device
        ids = torch.tensor([it["ids"] for it in items for _ in range(g)], dtype=torch.long,
                           device=dev)
        out = generate(ids, new_tokens)
        completions = out[:, ids.shape[1]:]
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        totals["generation"] += time.perf_counter() - start

        # Scoring: rewards, group advantages, reference log-probs.
        start = time.perf_counter()
        rewards = torch.tensor(
            [exact_match(txt, items[i // g]["answer"]) for i, txt in enumerate(texts)]
        ).view(-1, g).to(dev)
        std = rewards.std(dim=1, keepdim=True) if g > 1 else torch.zeros_like(rewards)
        adv = ((rewards - rewards.mean(dim=1, keepdim=True)) / (std + 1e-4)).view(-1)
        full = out
        targets = full[:, 1:]
        mask = torch.zeros_like(targets, dtype=torch.float32)
        mask[:, prompt_len - 1:] = 1.0
        with torch.no_grad(), autocast():
            ref_lp = token_logprobs(reference(input_ids=full).logits[:, :-1], targets)
            ref_lp[0, 0].item()
        totals["scoring"] += time.perf_counter() - start

        # Update: policy forward with grad, GRPO loss (mu = 1), backward, clip, AdamW.
        start = time.perf_counter()
        model.train()
        with autocast():
            logits = model(input_ids=full).logits[:, :-1]
        lp = token_logprobs(logits, targets)
        with torch.no_grad(), autocast():
            logp = torch.log_softmax(logits.detach(), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1)
            ((entropy * mask).sum() / mask.sum()).item()
        ratio = torch.exp(lp - lp.detach())
        a = adv.unsqueeze(1)
        per_token = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
        d = ref_lp - lp
        per_token = per_token + beta * (torch.exp(d) - d - 1)
        loss = (per_token * mask).sum() / mask.sum().clamp_min(1.0)
        loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync_params(model)
        totals["update"] += time.perf_counter() - start

    n = float(iters)
    gen, sc, up = (totals[k] / n for k in ("generation", "scoring", "update"))
    return {
        "grpo_step_s": gen + sc + up,
        "grpo_generation_s": gen,
        "grpo_scoring_s": sc,
        "grpo_update_s": up,
        "grpo_prompts": len(items),
        "grpo_generations": g,
        "grpo_new_tokens": new_tokens,
    }


def print_table(r):
    print(f"model            {r['model']} ({r['params']} parameters), torch {r['torch']} "
          f"eager {r['device']}, {r['threads']} threads, attn {r['attn']}, OMP_WAIT_POLICY "
          f"{r['omp_wait_policy']}, load {r['loadavg_1m_at_start']:.1f} at start")
    print(f"batch x seq      {r['batch']} x {r['seq']}")
    print(f"train            {r['train_tokens_per_s']:>10.1f} tokens/s  "
          f"({r['train_step_s']:.3f} s/step, {r['train_gflops']:.1f} GFLOP/s)")
    print(f"rollout          {r['rollout_tokens_per_s']:>10.1f} tokens/s  "
          f"({r['rollout_new_tokens']} new tokens per row, HF generate)")
    print(f"score (no grad)  {r['score_tokens_per_s']:>10.1f} tokens/s")
    if "grpo_step_s" in r:
        s = r["grpo_step_s"]
        print(f"GRPO step        {s:>10.3f} s  ({r['grpo_prompts']} prompts x "
              f"{r['grpo_generations']} completions of {r['grpo_new_tokens']} tokens)")
        for k in ("generation", "scoring", "update"):
            v = r[f"grpo_{k}_s"]
            print(f"  {k:<14} {v:>10.3f} s  ({100 * v / s:.0f} %)")
    print(f"peak RSS         {r['peak_rss_mb']:>10.1f} MB")


# (key, label, higher is better, issue-6 target as rlft-vs-torch speed-up)
COMPARED = [
    ("train_tokens_per_s", "train tokens/s", True, 1.2),
    ("rollout_tokens_per_s", "rollout tokens/s", True, 2.0),
    ("score_tokens_per_s", "score tokens/s", True, None),
    ("grpo_step_s", "GRPO step s", False, None),
    ("grpo_generation_s", "  generation s", False, None),
    ("grpo_scoring_s", "  scoring s", False, None),
    ("grpo_update_s", "  update s", False, None),
    ("peak_rss_mb", "peak RSS MB", False, None),
]


def print_ratios(rlft, torch_r, out=sys.stdout):
    for k in ("batch", "seq"):
        if rlft.get(k) != torch_r.get(k):
            print(f"warning: {k} differs: rlft {rlft.get(k)} vs torch {torch_r.get(k)}", file=out)
    print(file=out)
    print(f"{'':18} {'rlft':>12} {'torch':>12} {'rlft speed-up':>14}  target", file=out)
    for key, label, higher, target in COMPARED:
        a, b = rlft.get(key), torch_r.get(key)
        if a is None or b is None or a == 0 or b == 0:
            continue
        ratio = a / b if higher else b / a
        verdict = ""
        if target is not None:
            verdict = f">= {target:.1f}x  " + ("met" if ratio >= target else
                                             f"missed by {100 * (1 - ratio / target):.0f} %")
        print(f"{label:18} {a:>12.3f} {b:>12.3f} {ratio:>13.2f}x  {verdict}", file=out)
    print("(speed-up: rlft/torch for rates, torch/rlft for seconds and MB; > 1 = rlft better)",
          file=out)
    peak = torch_r.get("peak_tflops")
    if peak:
        params = torch_r["params"]
        for what, flops_per_token in (("train", 6.0), ("score", 2.0)):
            r = flops_per_token * params * rlft[f"{what}_tokens_per_s"] / (peak * 1e12)
            t = torch_r[f"{what}_mfu"]
            print(f"MFU {what:6} rlft {100 * r:5.1f} %  torch ({torch_r['autocast']}) "
                  f"{100 * t:5.1f} %  of {peak:.0f} TFLOP/s", file=out)


if __name__ == "__main__":
    main()
