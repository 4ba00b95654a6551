"""Continuous batching (evaluation.generate) against static batching (model.generate per batch of prompts, the
decoder this project used before) on one evaluation row: the test samples every task scores, each task with its
own generation budget, as the engine evaluates them.

    python bench/bench_continuous.py [--tasks T1_general,...] [--samples 16] [--batch 16] [--field value ...]

Static batching decodes each batch of length-sorted prompts until its last row stops, so rows that stopped early
keep their slot; continuous batching gives a freed slot to the next waiting prompt. Last line: JSON with both
timings, "speedup" (static seconds / continuous seconds), the decoding forward passes of each, and "same_outputs",
the share of prompts whose two completions are equal.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import add_config_arguments, parse_config  # noqa: E402
from evaluation import generate, generation_budget, prompt_messages, select_samples, stop_token_ids  # noqa: E402
from models.loading import device_tokenizer_model  # noqa: E402
from training import autocast  # noqa: E402
from utils_data import read_task, render  # noqa: E402


class RowBudget(StoppingCriteria):
    """Stops each row after its own number of new tokens (generate's max_new_tokens is one number per batch)."""

    def __init__(self, start: int, budgets: torch.Tensor):
        self.start, self.budgets = start, budgets

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return input_ids.shape[1] - self.start >= self.budgets


@torch.no_grad()
def static_generate(model, tokenizer, prompts: list[str], budgets: list[int], batch_size: int,
                    device: torch.device, amp_dtype) -> tuple[list[str], int]:
    """Greedy completions with model.generate over fixed batches of length-sorted prompts; and its decoding steps."""
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    outputs, steps, stops, pad = [""] * len(prompts), 0, stop_token_ids(tokenizer, model), tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(chunk):
            ids[row, width - len(encoded[i]):], mask[row, width - len(encoded[i]):] = torch.tensor(encoded[i]), 1
        limits = [budgets[i] for i in chunk]
        with autocast(device, amp_dtype):
            generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=max(limits), do_sample=False, eos_token_id=stops,
                                       pad_token_id=pad, stopping_criteria=StoppingCriteriaList(
                                           [RowBudget(width, torch.tensor(limits, device=device))]))
        steps += generated.shape[1] - width
        for row, (i, limit) in enumerate(zip(chunk, limits)):
            new_tokens = generated[row, width:width + limit].tolist()  # past a row's own budget: padding
            outputs[i] = tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
    return outputs, steps


def count_forwards(model) -> list[int]:
    """A one-element list that counts the model's forward calls from now on."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="T1_general,T2_math,T3_code,T4_tool,T5_safety")
    parser.add_argument("--samples", type=int, default=16, help="test samples per task (select_samples, seed 0)")
    parser.add_argument("--batch", type=int, default=16)
    add_config_arguments(parser)
    args, config = parse_config(parser)
    device, tokenizer, amp_dtype, model = device_tokenizer_model(config)
    prompts, budgets = [], []
    for task in args.tasks.split(","):
        records = select_samples(read_task(task, "test", config.data_dir)[0], args.samples, 0)
        budget = generation_budget(tokenizer, records, config.max_new_tokens, config.max_new_tokens_cap).tokens
        prompts += [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
        budgets += [budget] * len(records)
    generate(model, tokenizer, prompts[:2], 4, 2, device, amp_dtype)  # warm-up
    forwards = count_forwards(model)
    start = time.perf_counter()
    continuous, _, _ = generate(model, tokenizer, prompts, budgets, args.batch, device, amp_dtype, desc="continuous")
    continuous_s, continuous_forwards = time.perf_counter() - start, forwards[0]
    start = time.perf_counter()
    static, static_steps = static_generate(model, tokenizer, prompts, budgets, args.batch, device, amp_dtype)
    static_s = time.perf_counter() - start
    same = sum(a == b for a, b in zip(continuous, static)) / len(prompts)
    print(json.dumps(dict(bench="continuous_batching", device=torch.cuda.get_device_name() if device.type == "cuda"
                          else "cpu", threads=torch.get_num_threads(), tasks=args.tasks, prompts=len(prompts),
                          batch=args.batch, continuous_s=round(continuous_s, 1), static_s=round(static_s, 1),
                          speedup=round(static_s / continuous_s, 2), continuous_decoding_steps=continuous_forwards,
                          static_decoding_steps=static_steps, same_outputs=round(same, 3))))


if __name__ == "__main__":
    main()
