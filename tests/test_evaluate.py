"""evaluate.py and batched generation on the smoke preset."""
from __future__ import annotations

import json

import torch

import evaluate
import prepare_datasets
from evaluation import generate, prompt_messages, reference_for, summarise
from training import eval_loss
from utils_data import SFTDataset, make_loader, render


def test_batched_generation_equals_one_at_a_time(tiny_model, tokenizer):
    prompts = [render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
               for text in ("Hi", "What is the capital of France and why?", "Count to three.", "A much longer prompt " * 5)]
    batched, _ = generate(tiny_model, tokenizer, prompts, 6, 4, torch.device("cpu"), None)
    single, _ = generate(tiny_model, tokenizer, prompts, 6, 1, torch.device("cpu"), None)
    assert batched == single and any(batched)


def test_one_pass_serves_reference_loss_and_generation(tiny_model, tokenizer):
    """The shared prefill gives the same completions as plain generation and the same loss as eval_loss."""
    records = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
               for q, a in (("Hi", "Hello there!"), ("Name three colours, please.", "Red, green and blue."),
                            ("Count to three " * 4, "One, two, three."))]
    prompts = [render(tokenizer, prompt_messages(r), add_generation_prompt=True) for r in records]
    references = [reference_for(tokenizer, r, tokenizer(p, add_special_tokens=False)["input_ids"], 512)
                  for r, p in zip(records, prompts)]
    assert all(ref is not None for ref in references)
    device = torch.device("cpu")
    plain, _ = generate(tiny_model, tokenizer, prompts, 6, 3, device, None)
    shared, nll = generate(tiny_model, tokenizer, prompts, 6, 3, device, None, references=references)
    assert shared == plain and any(plain)
    loader = make_loader(SFTDataset(records, tokenizer, 512, "t"), 2, tokenizer.pad_token_id, shuffle=False)
    expected = eval_loss(tiny_model, loader, device, None)
    assert abs(sum(t for t, _ in nll) / sum(c for _, c in nll) - expected) < 1e-4


def test_prompt_is_the_conversation_before_the_last_answer():
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    assert [m["content"] for m in prompt_messages(record)] == ["a", "b", "c"]


def test_refusal_summary_splits_harmful_and_benign():
    records = [{"harmful": True}, {"harmful": True}, {"harmful": False}, {"harmful": False}]
    results = [{"score": 1.0, "refused": True}, {"score": 0.0, "refused": False},
               {"score": 0.0, "refused": True}, {"score": 1.0, "refused": False}]
    summary = summarise(records, results)
    assert summary["refusal_rate"] == 0.5 and summary["over_refusal_rate"] == 0.5 and summary["score"] == 0.5


def test_evaluate_every_task_end_to_end(small_data, tmp_path):
    summaries = evaluate.main(["--preset", "smoke", "--data_dir", str(small_data), "--log_dir", str(tmp_path),
                               "--run_name", "ev", "--max_samples", "3", "--max_seq_len", "128"])
    assert set(summaries) == set(prepare_datasets.OFFLINE)
    for task, summary in summaries.items():
        assert summary["samples"] == 3 and 0.0 <= summary["score"] <= 1.0
        # smoke's 128-token limit cuts long references (HumanEval, BFCL schemas): counted, and no loss without any
        assert summary["eval_loss"] > 0 if summary["loss_samples"] else summary["eval_loss"] is None
        rows = [json.loads(line) for line in (tmp_path / "ev" / f"eval_{task}_test.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all("output" in r and "format_ok" in r for r in rows)
    assert summaries["T2_math"]["loss_samples"] == 3 and summaries["T3_code"]["loss_samples"] == 0
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert saved["tasks"]["T2_math"]["metric"] == "math_exact_match"
