"""Batched greedy generation (left padding, KV cache) against one prompt at a time, on the same prompts.

    python bench/bench_generate.py [--task T2_math] [--prompts 16] [--batch 16] [--max_new_tokens 64] [--field value ...]

``--max_new_tokens`` is the config field: here the tokens generated per prompt (64 when it is 0, its per-task
default).

Last line: JSON with "speedup" = one-at-a-time seconds / batched seconds (bar: >= 4 on CPU) and "same_outputs",
the share of prompts whose batched output equals the one-at-a-time output.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import add_config_arguments, parse_config  # noqa: E402
from evaluation import generate, prompt_messages  # noqa: E402
from models.loading import device_tokenizer_model  # noqa: E402
from utils_data import read_jsonl, render, task_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="T2_math")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    add_config_arguments(parser)
    args, config = parse_config(parser)
    new_tokens_per_prompt = config.max_new_tokens or 64  # per-task budgets (0) do not apply to a timing
    device, tokenizer, amp_dtype, model = device_tokenizer_model(config)
    records, _ = read_jsonl(task_file(args.task, "test", config.data_dir), limit=args.prompts)
    prompts = [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
    generate(model, tokenizer, prompts[:2], 4, 2, device, amp_dtype)  # warm-up
    timings, outputs = {}, {}
    for name, batch in (("batched", args.batch), ("one_at_a_time", 1)):
        start = time.perf_counter()
        outputs[name], _, _ = generate(model, tokenizer, prompts, new_tokens_per_prompt, batch, device, amp_dtype,
                                       desc=name)
        timings[name] = time.perf_counter() - start
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["one_at_a_time"])) / len(prompts)
    new_tokens = sum(len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs["batched"])
    print(json.dumps(dict(bench="generation", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          threads=torch.get_num_threads(), task=args.task, prompts=len(prompts), batch=args.batch,
                          max_new_tokens=new_tokens_per_prompt, new_tokens=new_tokens,
                          batched_s=round(timings["batched"], 2), one_at_a_time_s=round(timings["one_at_a_time"], 2),
                          speedup=round(timings["one_at_a_time"] / timings["batched"], 2), same_outputs=same)))


if __name__ == "__main__":
    main()
