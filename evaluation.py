"""Evaluate a model on a task split: batched greedy generation, the task metric, format compliance and eval loss.

Generation is batched with left padding (so every prompt ends where generation starts), uses the KV cache, stops
each sequence at the end-of-turn token, and sorts prompts by length so that a batch wastes little padding.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from distributed import gather_indexed, shard
from metrics import MAX_NEW_TOKENS, score_sample
from training import autocast, response_positions
from utils_data import IGNORE_INDEX, render, tokenize_messages


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


@dataclass
class Reference:
    """A reference conversation tokenised as training sees it; it starts with its prompt's tokens."""
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX outside the assistant turns and past max_seq_len


def reference_for(tokenizer, record: dict, prompt_ids: list[int], max_seq_len: int) -> Reference | None:
    """The record's full conversation when its tokens start with exactly ``prompt_ids`` (so one forward pass can
    serve both the eval loss and the generation prefill); None when they do not or no supervised token is left."""
    feature = tokenize_messages(tokenizer, record["messages"], 10**9)
    ids, labels = feature["input_ids"], feature["labels"][:max_seq_len] + [IGNORE_INDEX] * (len(feature["labels"]) - max_seq_len)
    if ids[:len(prompt_ids)] != prompt_ids or all(label == IGNORE_INDEX for label in labels):
        return None
    return Reference(ids, labels)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, device: torch.device,
             amp_dtype: torch.dtype | None, desc: str = "generate",
             references: list[Reference | None] | None = None) -> tuple[list[str], list[tuple[float, int]]]:
    """Greedy completions of rendered prompts, in the prompts' order, and the reference loss of each prompt
    (summed token NLL, token count; (0, 0) without a reference).

    With references, each batch is one forward over [left padding | prompt | reference | right padding]: the
    supervised tokens give the eval loss, the KV cache is cut back to the prompt, and generation continues from it,
    so prompts are encoded once for both jobs. Positions come from the attention mask, as in generate.
    """
    was_training = model.training
    model.eval()
    references = references or [None] * len(prompts)
    encoded_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded_prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    stops, pad = stop_token_ids(tokenizer, model), tokenizer.pad_token_id
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, dynamic_ncols=True):
            chunk = order[start:start + batch_size]
            width = max(len(encoded_prompts[i]) for i in chunk)  # every prompt ends at column `width`
            tail = max([len(references[i].input_ids) - len(encoded_prompts[i]) for i in chunk if references[i]] or [0])
            ids = torch.full((len(chunk), width + tail), pad, dtype=torch.long)
            mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE_INDEX)
            for row, i in enumerate(chunk):
                prompt, ref = encoded_prompts[i], references[i]
                ids[row, width - len(prompt):width], mask[row, width - len(prompt):width] = torch.tensor(prompt), 1
                if ref is not None:
                    span = slice(width - len(prompt), width - len(prompt) + len(ref.input_ids))
                    ids[row, span], mask[row, span], labels[row, span] = torch.tensor(ref.input_ids), 1, torch.tensor(ref.labels)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            cache = None
            if tail:
                with autocast(device, amp_dtype):
                    out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=True,
                                           position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
                    for row, i in enumerate(chunk):
                        pos = response_positions(labels[row])
                        if len(pos):
                            logits = model.get_output_embeddings()(out.last_hidden_state[row, pos]).float()
                            nll = torch.nn.functional.cross_entropy(logits, labels[row, pos + 1], reduction="sum")
                            losses[i] = (float(nll), len(pos))
                cache = out.past_key_values
                cache.crop(-(tail + 1))  # keep the prompt but its last token, which generate feeds itself
            with autocast(device, amp_dtype):
                generated = model.generate(input_ids=ids[:, :width], attention_mask=mask[:, :width],
                                           past_key_values=cache, max_new_tokens=max_new_tokens, do_sample=False,
                                           use_cache=True, eos_token_id=stops, pad_token_id=pad)
            completions = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
            for index, text in zip(chunk, completions):
                outputs[index] = text.strip()
    finally:
        model.train(was_training)
    return outputs, losses


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


def evaluate_tasks(model, tokenizer, task_records: dict[str, list[dict]], config, device: torch.device,
                   amp_dtype: torch.dtype | None, label: str, accelerator=None) -> dict[str, tuple[dict, list[dict]]]:
    """Score several tasks' records with the model as it is: {task: (summary with score, format_rate, eval_loss,
    ...; per-sample rows)}.

    The prompts of all tasks that share a generation budget go through one length-sorted ``generate`` call, so short
    prompts of different tasks share batches (fewer decoding passes than task by task). With several processes each
    one generates and scores its share of the samples; the shares are gathered before the summaries.
    """
    budgets = {task: config.max_new_tokens or MAX_NEW_TOKENS.get(records[0].get("metric", "exact_match"), 256)
               for task, records in task_records.items()}
    prompts = {task: [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
               for task, records in task_records.items()}
    per_sample: dict[str, list[tuple[str, tuple[float, int], dict]]] = {}  # task -> (output, (nll, tokens), scores)
    for budget in sorted(set(budgets.values())):
        group = [task for task in task_records if budgets[task] == budget]
        items = [(task, r, p) for task in group for r, p in zip(task_records[task], prompts[task])]
        mine = shard(items, accelerator)
        references = [reference_for(tokenizer, r, tokenizer(p, add_special_tokens=False)["input_ids"], config.max_seq_len)
                      for _, (_, r, p) in mine]
        generated, nll = generate(model, tokenizer, [p for _, (_, _, p) in mine], budget, config.eval_batch_size,
                                  device, amp_dtype, desc=f"generate {label} ({len(group)} tasks)", references=references)
        scored = [(index, (out, loss, score_sample(r, out)))
                  for (index, (_, r, _)), out, loss in zip(mine, generated, nll)]
        for (task, _, _), result in zip(items, gather_indexed(scored, accelerator)):
            per_sample.setdefault(task, []).append(result)
    results = {}
    for task, records in task_records.items():
        outputs, losses, scored = zip(*per_sample[task])
        summary = summarise(records, list(scored))
        summary["format_rate"] = summary.pop("format_ok", 0.0)
        # Eval loss: token-weighted mean NLL of the references' supervised tokens (those within max_seq_len).
        total, count = sum(t for t, _ in losses), sum(c for _, c in losses)
        summary["eval_loss"] = total / count if count else None
        summary.update(samples=len(records), loss_samples=sum(c > 0 for _, c in losses),
                       metric=records[0].get("metric", "exact_match"), max_new_tokens=budgets[task])
        rows = [dict(id=r.get("id"), prompt=p, output=o, **res)
                for r, p, o, res in zip(records, prompts[task], outputs, scored)]
        results[task] = (summary, rows)
    return results
