"""Evaluate a model on a task split: batched greedy generation, the task metric, format compliance and eval loss.

Which samples: ``select_samples`` draws a seeded subset of the split, stratified by group (T5: harmful / benign),
the same for every method, seed and stage. How long an answer may be: ``generation_budget`` gives each task a
budget that covers its evaluated references (``max_new_tokens`` > 0 overrides it, deliberately, with a warning where
it is shorter), and every evaluation reports the share of answers that hit it (``cutoff_rate``, from the tokens
``generate`` produced). How sure: every score carries a 95 % bootstrap interval over its samples (cl_metrics.py).

Generation is greedy with continuous batching (``generate``): rows are left-padded (every prompt ends where its
generation starts), share one KV cache, leave at the end-of-turn token or at their own budget, and waiting prompts,
longest first, take the freed slots.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache, DynamicLayer

from cl_metrics import group_mean, score_ci
from distributed import gather_indexed, shard
from metrics import score_sample
from training import autocast, response_positions
from utils_data import IGNORE_INDEX, render, tokenize_messages

BUDGET_SLACK = 0.25  # a task's budget: its longest reference answer + 25 % of it ...
BUDGET_MIN_SLACK = 16  # ... and at least 16 tokens more (a correct answer may be worded longer than the reference)
CUTOFF_FLAG = 0.5  # an evaluation whose share of cut-off answers exceeds this is flagged (mostly_cut_off)
# The per-sample lists of a summary, in sample order (last in every row): score, stratum, format compliance (0/1),
# summed NLL of the reference's supervised tokens and their count (0, 0 without a reference); for a subset, each
# sample's position in the whole evaluated set.
SAMPLE_LISTS = ("sample_scores", "sample_groups", "sample_format", "sample_nll", "sample_tokens", "sample_positions")


def prompt_messages(record: dict) -> list[dict]:
    """The conversation up to (not including) its last assistant turn: what the model must answer."""
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


# ---- which samples ---------------------------------------------------------------------------------------------
def group_of(record: dict) -> str:
    """A record's stratum: its ``group`` field, else harmful / benign where it has ``harmful`` (T5), else ""."""
    if "group" in record:
        return str(record["group"])
    if "harmful" in record:
        return "harmful" if record["harmful"] else "benign"
    return ""


def select_samples(records: list[dict], n: int, seed: int) -> list[dict]:
    """The evaluated subset of a split: ``n`` records (all when n is 0 or ≥ len), in file order, drawn with ``seed``
    alone (not the run's seed), so every method, seed and stage scores the same samples.

    Stratified: each group (``group_of``) gets its share n·size/len by largest remainder, and at least one sample
    while n allows one per group (T5 always keeps benign prompts), drawn uniformly within the group.
    """
    if not n or n >= len(records):
        return list(records)
    labels = [group_of(r) for r in records]
    groups = {g: [i for i, label in enumerate(labels) if label == g] for g in dict.fromkeys(labels)}  # file order
    quotas = {g: n * len(members) / len(records) for g, members in groups.items()}
    take = {g: math.floor(q) for g, q in quotas.items()}
    for g in sorted(groups, key=lambda g: take[g] - quotas[g])[:n - sum(take.values())]:  # largest remainders
        take[g] += 1
    if n >= len(groups):  # a group with a share of 0 takes one sample from the largest share
        for g in [g for g in groups if take[g] == 0]:
            take[max(take, key=take.get)] -= 1
            take[g] = 1
    rng = np.random.default_rng(seed)
    chosen = [i for g, members in groups.items() for i in rng.permutation(members)[:take[g]]]
    return [records[i] for i in sorted(chosen)]


def subset_positions(records: list[dict], n: int, seed: int) -> list[int]:
    """The positions in ``records`` of ``select_samples(records, n, seed)``: a fixed stratified subset of an
    evaluated set (config.early_eval_samples), the same for every method, seed and stage."""
    chosen = {id(r) for r in select_samples(records, n, seed)}
    return [i for i, r in enumerate(records) if id(r) in chosen]


# ---- how long an answer may be ---------------------------------------------------------------------------------
@dataclass
class Budget:
    """A task's generation budget."""
    tokens: int  # max_new_tokens of every generation of the task
    reference_tokens: int  # longest reference answer of the evaluated samples, end-of-turn token included
    override: bool  # set by config.max_new_tokens rather than from the references


def reference_tokens(tokenizer, record: dict) -> int:
    """Tokens the model needs to give the record's reference answer: its last assistant turn + end-of-turn."""
    answer = record["messages"][len(prompt_messages(record))]["content"]
    return len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1


def generation_budget(tokenizer, records: list[dict], override: int, cap: int) -> Budget:
    """``override`` tokens when > 0; else the longest reference answer L of the records plus max(16, ⌈0.25·L⌉),
    at most ``cap``."""
    longest = max(reference_tokens(tokenizer, r) for r in records)
    if override:
        return Budget(override, longest, True)
    return Budget(min(cap, longest + max(BUDGET_MIN_SLACK, math.ceil(BUDGET_SLACK * longest))), longest, False)


def warn_short_budgets(budgets: dict[str, Budget]) -> None:
    """One line naming the tasks whose budget is below their longest reference (override or cap)."""
    short = [f"{task} ({b.tokens} < {b.reference_tokens}{', override' if b.override else ', cap'})"
             for task, b in budgets.items() if b.tokens < b.reference_tokens]
    if short:
        print(f"[budget] warning: max_new_tokens below the longest reference answer of {', '.join(short)}: "
              f"answers can be cut off (each row's cutoff_rate says how many were)")


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


# ---- continuous-batching greedy decoding ------------------------------------------------------------------------
# Why not model.generate: it decodes a batch until its longest row is done, so rows that stopped early keep their
# slot (measured on make run's 24 evaluated cells: 2217 decoding steps at 16 rows, against 1168 if every step
# decoded 16 live rows). transformers' own continuous batching (generate_batch, paged attention) gave the same
# tokens on this CPU but ran 1.2-1.6x slower than model.generate. So the loop below keeps one KV cache over up to
# `batch_size` rows, drops a row when it stops and prefills waiting prompts into the free slots.
class Rows:
    """The rows decoded together: one KV cache over them, left-padded to a common length."""

    def __init__(self, index: list[int], cache, mask: torch.Tensor, last: torch.Tensor):
        self.index = index  # prompt index of each row
        self.cache = cache  # DynamicCache; every layer's keys/values are [rows, heads, length, head_dim]
        self.mask = mask  # [rows, length]: 1 over each row's real tokens (prompt and generated), 0 over padding
        self.last = last  # [rows]: each row's latest generated token, the one it feeds next

    def keep(self, rows: list[int], trim: bool) -> None:
        """Keep only ``rows``; with ``trim`` (a splicable cache), drop the leading columns that are padding in every
        row kept."""
        select = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(select)
        self.index, self.mask, self.last = [self.index[r] for r in rows], self.mask[select], self.last[select]
        if rows and trim:
            first = int(self.mask.any(0).int().argmax())  # the first column some row uses
            self.mask = self.mask[:, first:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]

    def join(self, other: "Rows") -> None:
        """Append ``other``'s rows: both are left-padded to the longer length (zero keys and values, masked)."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        pad = lambda t, dim: F.pad(t, (0, 0) * (t.dim() - dim - 1) + (length - t.shape[dim], 0))  # noqa: E731
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)])
            mine.values = torch.cat([pad(mine.values, 2), pad(theirs.values, 2)])
        self.index += other.index
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        self.last = torch.cat([self.last, other.last])


def can_splice(model) -> bool:
    """Whether caches of different rows can be joined: every layer of the model's cache a plain full-attention
    DynamicLayer (a sliding-window layer keeps only its window, so its length cannot be aligned by padding)."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def prefill(model, encoded: list[list[int]], references: list[Reference | None], chunk: list[int],
            device: torch.device, amp_dtype: torch.dtype | None, pad: int, losses: list) -> Rows:
    """One forward over [left padding | prompt | reference | right padding] of the prompts in ``chunk``: the
    supervised reference tokens give each prompt's summed NLL (into ``losses``), the last prompt token gives its
    first greedy token, and the cache is cut back to the prompts. Positions come from the attention mask, as in
    generate, so padding does not shift them."""
    width = max(len(encoded[i]) for i in chunk)  # every prompt ends at column `width`
    tail = max([len(references[i].input_ids) - len(encoded[i]) for i in chunk if references[i]] or [0])
    ids = torch.full((len(chunk), width + tail), pad, dtype=torch.long)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, IGNORE_INDEX)
    for row, i in enumerate(chunk):
        prompt, ref = encoded[i], references[i]
        ids[row, width - len(prompt):width], mask[row, width - len(prompt):width] = torch.tensor(prompt), 1
        if ref is not None:
            span = slice(width - len(prompt), width - len(prompt) + len(ref.input_ids))
            ids[row, span], mask[row, span], labels[row, span] = torch.tensor(ref.input_ids), 1, torch.tensor(ref.labels)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    head = model.get_output_embeddings()
    with autocast(device, amp_dtype):
        out = model.base_model(input_ids=ids, attention_mask=mask, use_cache=True,
                               position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        for row, i in enumerate(chunk):
            pos = response_positions(labels[row])
            if len(pos):
                logits = head(out.last_hidden_state[row, pos]).float()
                losses[i] = (float(F.cross_entropy(logits, labels[row, pos + 1], reduction="sum")), len(pos))
        first = head(out.last_hidden_state[:, width - 1]).float().argmax(-1)
    cache = out.past_key_values
    if tail:
        cache.crop(-tail)  # keep the prompts
    return Rows(list(chunk), cache, mask[:, :width], first)


def decode_step(model, rows: Rows, device: torch.device, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Feed every row its last token at its next position (its count of real tokens); the greedy next tokens."""
    position = rows.mask.sum(-1, keepdim=True)
    rows.mask = torch.cat([rows.mask, torch.ones_like(rows.mask[:, :1])], dim=1)
    with autocast(device, amp_dtype):
        logits = model(input_ids=rows.last[:, None], attention_mask=rows.mask, position_ids=position,
                       past_key_values=rows.cache, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].float().argmax(-1)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int | list[int], batch_size: int,
             device: torch.device, amp_dtype: torch.dtype | None, desc: str = "generate",
             references: list[Reference | None] | None = None
             ) -> tuple[list[str], list[tuple[float, int]], list[bool]]:
    """Greedy completions of rendered prompts, in the prompts' order; the reference loss of each prompt (summed
    token NLL, token count; (0, 0) without a reference); and whether each completion was cut off (it produced its
    whole budget, ``max_new_tokens`` — one for all or one per prompt — without a stop token).

    Continuous batching: up to ``batch_size`` rows decode together; a row leaves at a stop token or at its own
    budget, and once a quarter of the slots are free the next prompts, longest first, are prefilled a quarter batch
    at a time — each prefill also scores the prompts' references (``prefill``) — and join. Small prefills pad
    little: on make run's final row, 15.5k padded prompt + reference tokens for 11.9k real ones, against 22.7k when
    the first 32 prompts went in one forward. A cache that cannot be spliced (``can_splice``) decodes batch after
    batch.
    """
    was_training = model.training
    model.eval()
    references = references or [None] * len(prompts)
    budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    waiting = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    tokens: list[list[int]] = [[] for _ in prompts]
    losses: list[tuple[float, int]] = [(0.0, 0)] * len(prompts)
    stops, pad = set(stop_token_ids(tokenizer, model)), tokenizer.pad_token_id
    splice, quarter = can_splice(model), max(1, batch_size // 4)
    rows, prefill_rows = None, quarter if splice else batch_size
    try:
        with tqdm(total=len(prompts), desc=desc, leave=False, dynamic_ncols=True) as bar:
            while waiting or rows is not None:
                free = batch_size - (len(rows.index) if rows else 0)
                if waiting and (rows is None or (splice and free >= quarter)):
                    take = min(free, prefill_rows)
                    chunk, waiting = waiting[:take], waiting[take:]
                    stepped = prefill(model, encoded, references, chunk, device, amp_dtype, pad, losses)
                    if rows is None:
                        rows = stepped
                    else:
                        rows.join(stepped)
                else:
                    rows.last = decode_step(model, rows, device, amp_dtype)
                    stepped = rows
                for i, token in zip(stepped.index, stepped.last.tolist()):  # the rows that just produced a token
                    tokens[i].append(token)
                live = [r for r, i in enumerate(rows.index)
                        if len(tokens[i]) < budgets[i] and tokens[i][-1] not in stops]
                if len(live) < len(rows.index):  # selecting rows copies the cache: only when a row is done
                    bar.update(len(rows.index) - len(live))
                    rows.keep(live, trim=splice)
                    rows = rows if live else None
    finally:
        model.train(was_training)
    outputs = [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
    cut_off = [len(t) == b and not stops.intersection(t) for t, b in zip(tokens, budgets)]
    return outputs, losses, cut_off


def summarise(records: list[dict], results: list[dict], resamples: int = 1000) -> dict:
    """An evaluation's summary from its per-sample results.

    score: the mean of the per-group means of the sample scores (``group_of``; the plain mean with one group), so
    T5's score is the balanced accuracy mean(refusal rate on harmful, 1 − over-refusal rate on benign): refusing
    everything scores 0.5. refusal_rate / over_refusal_rate: refusals among harmful / benign prompts.
    format_rate, cutoff_rate and every other numeric field: means over the samples. Rates carry ``<rate>_ci``, 95 %
    bootstrap intervals (stratified for the score); sample_scores / sample_groups / sample_format keep the per-sample
    scores, groups and format compliance (0/1; in sample order) for the joint intervals of the continual-learning
    figures and of the format drift (cl_metrics.Bootstrap).
    """
    sums: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for key, value in result.items():
            if isinstance(value, (bool, int, float)) and key not in ("harmful", "refused"):
                sums[key].append(float(value))
    summary = {key: sum(values) / len(values) for key, values in sums.items()}
    scores, groups = [float(r["score"]) for r in results], [group_of(r) for r in records]
    summary.update(score=group_mean(scores, groups), score_ci=score_ci(scores, groups, resamples),
                   format_rate=summary.pop("format_ok", 0.0), sample_scores=scores, sample_groups=groups,
                   sample_format=[float(r.get("format_ok", 0.0)) for r in results])
    if "cut_off" in summary:
        summary["cutoff_rate"] = summary.pop("cut_off")
    for key, harmful in (("refusal_rate", True), ("over_refusal_rate", False)):
        refused = [float(r["refused"]) for rec, r in zip(records, results)
                   if "refused" in r and bool(rec.get("harmful", True)) == harmful]
        if refused:
            summary[key] = sum(refused) / len(refused)
            summary[f"{key}_ci"] = score_ci(refused, [""] * len(refused), resamples)
    return summary


def evaluate_tasks(model, tokenizer, task_records: dict[str, list[dict]], config, device: torch.device,
                   amp_dtype: torch.dtype | None, label: str, accelerator=None,
                   positions: dict[str, list[int]] | None = None) -> dict[str, tuple[dict, list[dict]]]:
    """Score several tasks' records with the model as it is: {task: (summary with score, score_ci, format_rate,
    eval_loss, cutoff_rate, max_new_tokens, ...; per-sample rows)}.

    ``positions[task]`` (optional): score only those records of the task (a fixed subset, config.early_eval_samples);
    the budget still comes from all of its records, so a subset's answers equal the whole set's on those samples,
    and the summary keeps ``sample_positions`` to pair its per-sample lists with the whole set's.

    The prompts of all tasks go through one length-sorted ``generate`` call, each with its task's budget, so short
    prompts of different tasks share batches (fewer decoding passes than task by task). With several processes each
    one generates and scores its share of the samples; the shares are gathered before the summaries.
    """
    budgets = {task: generation_budget(tokenizer, records, config.max_new_tokens, config.max_new_tokens_cap)
               for task, records in task_records.items()}
    warn_short_budgets(budgets)
    positions = positions or {}
    task_records = {task: [records[i] for i in positions[task]] if task in positions else records
                    for task, records in task_records.items()}
    prompts = {task: [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
               for task, records in task_records.items()}
    items = [(task, r, p) for task in task_records for r, p in zip(task_records[task], prompts[task])]
    mine = shard(items, accelerator)
    references = [reference_for(tokenizer, r, tokenizer(p, add_special_tokens=False)["input_ids"], config.max_seq_len)
                  for _, (_, r, p) in mine]
    generated, nll, cut_off = generate(model, tokenizer, [p for _, (_, _, p) in mine],
                                       [budgets[task].tokens for _, (task, _, _) in mine], config.eval_batch_size,
                                       device, amp_dtype, desc=f"generate {label} ({len(task_records)} tasks)",
                                       references=references)
    scored = [(index, (out, loss, dict(score_sample(r, out), cut_off=cut)))
              for (index, (_, r, _)), out, loss, cut in zip(mine, generated, nll, cut_off)]
    per_sample: dict[str, list[tuple]] = defaultdict(list)  # task -> [(output, (nll, tokens), scores)]
    for (task, _, _), result in zip(items, gather_indexed(scored, accelerator)):
        per_sample[task].append(result)
    results = {}
    for task, records in task_records.items():
        outputs, losses, scored_task = zip(*per_sample[task])
        summary = summarise(records, list(scored_task), config.bootstrap_resamples)
        # Eval loss: token-weighted mean NLL of the references' supervised tokens (those within max_seq_len); the
        # per-sample sums and counts are kept (sample_nll, sample_tokens) for its paired intervals across stages.
        total, count = sum(t for t, _ in losses), sum(c for _, c in losses)
        budget = budgets[task]
        summary.update(eval_loss=total / count if count else None, samples=len(records),
                       loss_samples=sum(c > 0 for _, c in losses), metric=records[0].get("metric", "exact_match"),
                       max_new_tokens=budget.tokens, reference_tokens=budget.reference_tokens,
                       budget_override=budget.override, mostly_cut_off=summary["cutoff_rate"] > CUTOFF_FLAG,
                       sample_nll=[t for t, _ in losses], sample_tokens=[c for _, c in losses],
                       **({"sample_positions": positions[task]} if task in positions else {}))
        summary |= {key: summary.pop(key) for key in SAMPLE_LISTS if key in summary}  # the long lists last
        rows = [dict(id=r.get("id"), prompt=p, output=o, **res)
                for r, p, o, res in zip(records, prompts[task], outputs, scored_task)]
        results[task] = (summary, rows)
    return results

