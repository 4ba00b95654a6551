"""Evaluate a model on a task split: batched greedy generation, the task metric, format compliance and eval loss.

Generation is batched with left padding (so every prompt ends where generation starts), uses the KV cache, stops
each sequence at the end-of-turn token, and sorts prompts by length so that a batch wastes little padding.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from tqdm.auto import tqdm

from metrics import MAX_NEW_TOKENS, score_sample
from training import autocast, eval_loss
from utils_data import SFTDataset, make_loader, render


def prompt_messages(record: dict) -> list[dict]:
    """The conversation up to (not including) its last assistant turn: what the model must answer."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def stop_token_ids(tokenizer, model) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: torch.device,
             amp_dtype: torch.dtype | None, desc: str = "generate") -> list[str]:
    """Greedy completions of rendered prompts, in the prompts' order."""
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    stops = stop_token_ids(tokenizer, model)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, dynamic_ncols=True):
            chunk = order[start:start + batch_size]
            encoded = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            with autocast(device, amp_dtype):
                generated = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False,
                                           use_cache=True, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
            completions = tokenizer.batch_decode(generated[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
            for index, text in zip(chunk, completions):
                outputs[index] = text.strip()
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return outputs


def summarise(records: list[dict], results: list[dict]) -> dict:
    """Means of every numeric field of the per-sample results; refusal tasks also split harmful / benign."""
    sums: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for key, value in result.items():
            if isinstance(value, (bool, int, float)) and key not in ("harmful",):
                sums[key].append(float(value))
    summary = {key: sum(values) / len(values) for key, values in sums.items()}
    harmful = [r["refused"] for rec, r in zip(records, results) if "refused" in r and rec.get("harmful", True)]
    benign = [r["refused"] for rec, r in zip(records, results) if "refused" in r and not rec.get("harmful", True)]
    if harmful:
        summary["refusal_rate"] = sum(harmful) / len(harmful)
    if benign:
        summary["over_refusal_rate"] = sum(benign) / len(benign)
    return summary


def evaluate_records(model, tokenizer, records: list[dict], config, device: torch.device,
                     amp_dtype: torch.dtype | None, name: str) -> tuple[dict, list[dict]]:
    """Score one task's records: returns (summary with score, format_rate, eval_loss, ...; per-sample rows)."""
    metric = records[0].get("metric", "exact_match")
    max_new = config.max_new_tokens or MAX_NEW_TOKENS.get(metric, 256)
    prompts = [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
    outputs = generate(model, tokenizer, prompts, max_new, config.eval_batch_size, device, amp_dtype, desc=f"generate {name}")
    results = [score_sample(r, out) for r, out in zip(records, outputs)]
    summary = summarise(records, results)
    summary["format_rate"] = summary.pop("format_ok", 0.0)
    # Eval loss on the references; samples whose reference falls entirely past max_seq_len are counted, not scored.
    dataset = SFTDataset(records, tokenizer, config.max_seq_len, name, allow_empty=True)
    loader = make_loader(dataset, config.eval_batch_size, tokenizer.pad_token_id, shuffle=False)
    summary["eval_loss"] = eval_loss(model, loader, device, amp_dtype, desc=f"loss {name}") if len(dataset) else None
    summary.update(samples=len(records), loss_samples=len(dataset), metric=metric, max_new_tokens=max_new)
    rows = [dict(id=r.get("id"), prompt=p, output=o, **res) for r, p, o, res in zip(records, prompts, outputs, results)]
    return summary, rows
