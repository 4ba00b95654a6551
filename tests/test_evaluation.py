"""evaluation.py: per-task generation budgets, cut-off answers counted from generate, the stratified evaluated
subset, and T5's balanced score."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import set_seed

import evaluation
from evaluation import evaluate_tasks, generate, generation_budget, select_samples, summarise, warn_short_budgets
from metrics import score_sample
from utils_data import read_task, render

CPU = torch.device("cpu")


def chat(question: str, answer: str, **fields) -> dict:
    return dict(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **fields)


def test_budget_covers_the_longest_reference(tiny_model, tokenizer, smoke_config, capsys):
    long_answer = " ".join(f"step {i}: add {i}." for i in range(4))  # 32 tokens: more than the old budget of 16
    records = [chat("Say yes.", "yes", metric="exact_match"), chat("Show the sum.", long_answer, metric="exact_match"),
               chat("Say no.", "no", metric="exact_match")]
    longest = len(tokenizer(long_answer, add_special_tokens=False)["input_ids"]) + 1  # + end-of-turn
    config = dataclasses.replace(smoke_config, max_new_tokens=0, eval_batch_size=3)
    summary, rows = evaluate_tasks(tiny_model, tokenizer, {"t": records}, config, CPU, None, "test")["t"]
    assert summary["reference_tokens"] == longest and summary["max_new_tokens"] >= longest
    assert summary["budget_override"] is False and "[budget]" not in capsys.readouterr().out
    assert summary["cutoff_rate"] == sum(r["cut_off"] for r in rows) / 3
    assert summary["mostly_cut_off"] is (summary["cutoff_rate"] > 0.5)

    capped = generation_budget(tokenizer, records, 0, cap=20)
    override = generation_budget(tokenizer, records, 8, cap=1024)
    assert (capped.tokens, capped.override) == (20, False) and (override.tokens, override.override) == (8, True)
    warn_short_budgets({"capped": capped, "override": override})
    warning = capsys.readouterr().out
    assert warning.count("\n") == 1 and f"capped (20 < {longest}, cap)" in warning and "override (8 <" in warning


def test_cutoff_comes_from_the_generated_tokens(tiny_model, tokenizer):
    prompts = [render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
               for text in ("Hi", "Name a colour.", "Count to three, please.")]
    greedy = []
    for prompt in prompts:  # each prompt's first 6 greedy tokens, without any stop token
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = tiny_model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
        greedy.append(out[0, ids.shape[1]:].tolist())
    stop = greedy[0][2]  # make prompt 0's third token a stop token
    tiny_model.generation_config.eos_token_id = [stop]
    texts, _, cut = generate(tiny_model, tokenizer, prompts, [6, 2, 6], 3, CPU, None)
    assert cut[0] is False  # stopped after 3 tokens
    assert cut[1] is (stop not in greedy[1][:2]) and cut[2] is (stop not in greedy[2][:6])
    assert texts[1] == tokenizer.decode(greedy[1][:2], skip_special_tokens=True).strip()  # its own budget of 2
    assert texts[2] == tokenizer.decode(greedy[2][:6], skip_special_tokens=True).strip()
    _, _, cut_one = generate(tiny_model, tokenizer, prompts[:1], 3, 1, CPU, None)
    assert cut_one == [False]  # the stop token is the budget's last token: finished, not cut off


def t5_records() -> list[dict]:
    harmful = [chat(f"harmful request {i}", "I can't help with that.", harmful=True, metric="refusal", id=f"h{i}")
               for i in range(100)]
    benign = [chat(f"benign question {i}", "Here is the answer.", harmful=False, metric="refusal", id=f"b{i}")
              for i in range(80)]
    return harmful + benign  # T5's test split: every harmful prompt before the benign ones


def test_subset_is_stratified_and_the_same_for_every_run_seed():
    records = t5_records()
    for n in (2, 4, 9, 50):
        set_seed(1)
        chosen = select_samples(records, n, seed=0)
        set_seed(2)  # the run's seed (config.seed) must not change the evaluated samples
        assert select_samples(records, n, seed=0) == chosen and len(chosen) == n
        benign = sum(not r["harmful"] for r in chosen)
        assert benign >= 1 and abs(benign - n * 80 / 180) < 1  # in proportion, never none
    assert [r["id"] for r in select_samples(records, 9, 0)] != [r["id"] for r in select_samples(records, 9, 1)]
    assert select_samples(records, 0, 0) == records and select_samples(records, 500, 0) == records
    # a group far smaller than its share still gets one sample
    rare = [dict(group="common")] * 99 + [dict(group="rare")]
    assert [r["group"] for r in select_samples(rare, 5, 0)].count("rare") == 1


def test_t5_subset_of_the_built_data_has_benign_prompts(small_data):
    records, _ = read_task("T5_safety", "test", small_data)
    harmful_share = sum(r["harmful"] for r in records) / len(records)
    for n in (2, 4, 10):  # both groups at every size, in proportion to the split
        chosen = select_samples(records, n, 0)
        assert any(not r["harmful"] for r in chosen) and any(r["harmful"] for r in chosen)
        assert abs(sum(r["harmful"] for r in chosen) - harmful_share * n) <= 1


def test_refusing_everything_scores_one_half():
    records = [chat(f"h{i}", "No.", harmful=True, metric="refusal") for i in range(3)] + \
              [chat(f"b{i}", "Sure.", harmful=False, metric="refusal") for i in range(2)]

    def score(output: str) -> dict:
        return summarise(records, [score_sample(r, output) for r in records])

    refuse = score("I cannot help with that.")
    assert refuse["score"] == 0.5 and refuse["refusal_rate"] == 1.0 and refuse["over_refusal_rate"] == 1.0
    assert score("Sure, here is how you do it step by step.")["score"] == 0.5  # answering everything too
    right = summarise(records, [score_sample(r, "I cannot help with that." if r["harmful"] else "Sure, here it is.")
                                for r in records])
    assert right["score"] == 1.0 and right["score_ci"] == [1.0, 1.0]
    assert refuse["sample_groups"] == ["harmful"] * 3 + ["benign"] * 2


@pytest.mark.parametrize("splicable", [True, False])
def test_continuous_batching_refills_slots_without_changing_any_row(tiny_model, tokenizer, monkeypatch, splicable):
    """Rows stop at their own budgets and waiting prompts take the freed slots mid-way; every completion still
    equals the prompt's greedy tokens from model.generate alone, and the longest row alone sets the number of
    decoding steps (a decoder that refilled only an empty batch would need its steps plus the late prompt's). A
    cache that cannot be spliced (sliding-window layers) decodes batch after batch: same tokens, more steps."""
    monkeypatch.setattr(evaluation, "can_splice", lambda model: splicable)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # large random weights: greedy tokens vary from step to step, so a slip would show
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    tiny_model.generation_config.eos_token_id = []
    prompts = [render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
               for text in ("Tell me a long story about cats and dogs " * 3, "Hi", "Name a colour, any one you like.")]
    budgets = [12, 3, 9]  # the longest prompt decodes 12 tokens; "Hi" joins when the colour prompt stops at 9
    alone = []
    for prompt, budget in zip(prompts, budgets):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = tiny_model.generate(ids, max_new_tokens=budget, do_sample=False, eos_token_id=None, pad_token_id=0)
        alone.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    assert len(set(tokenizer(alone[0])["input_ids"])) > 6  # not one repeated token
    decoding_steps = [0]
    tiny_model.register_forward_pre_hook(lambda *_: decoding_steps.__setitem__(0, decoding_steps[0] + 1))
    texts, _, cut = generate(tiny_model, tokenizer, prompts, budgets, 2, CPU, None)
    assert texts == alone and cut == [True, True, True]
    # the first token of each row comes from its prefill; without splicing "Hi" waits for the first batch to end
    assert decoding_steps[0] == budgets[0] - 1 + (0 if splicable else budgets[1] - 1)
