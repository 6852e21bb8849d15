#!/usr/bin/env python3
"""A Hugging Face model folder with random weights in the shape of another's config.

Throughput does not depend on the weights' values (the benchmarks ignore EOS), so a machine
that cannot receive a checkpoint (the GPU machine here takes 64 MiB per call) can still
benchmark its shape:

    python random_model.py SRC_DIR OUT_DIR

SRC_DIR needs config.json and tokenizer.json (tokenizer_config.json and
generation_config.json are copied too when present); OUT_DIR gets model.safetensors.
"""

import os
import shutil
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(src)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    # The original config, not transformers' re-serialisation of it.
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        if os.path.exists(os.path.join(src, name)):
            shutil.copy(os.path.join(src, name), os.path.join(out, name))


if __name__ == "__main__":
    main()
