"""Write a randomly initialised copy of a model (its config and tokenizer, new weights) to a folder.

    python bench/random_model.py --like embedded --out /tmp/smollm2_random
    python bench/random_model.py --like FOLDER_WITH_CONFIG_AND_TOKENIZER --out /tmp/random

For a machine that can neither reach a hub nor take the real weights along (the GPU machine: 64 MiB per call, the
embedded GGUF is 98 MB): carry the config and tokenizer files, make the weights there, then point ``--model_name``
at the output. Losses on random weights start near ln(vocab), so they show that a setting trains, not how well.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import Config  # noqa: E402
from models.loading import resolve_model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", default="embedded", help='"embedded" or a folder holding config.json and tokenizer')
    parser.add_argument("--out", required=True, help="folder to write (config, tokenizer, model.safetensors)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = resolve_model_path(args.like, Config().model_cache_dir)
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
    model.save_pretrained(args.out, safe_serialization=True)
    AutoTokenizer.from_pretrained(source).save_pretrained(args.out)
    print(f"[random_model] {sum(p.numel() for p in model.parameters()):,} random parameters shaped like {args.like} "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
