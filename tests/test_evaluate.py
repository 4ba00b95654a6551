"""evaluate.py and batched generation on the smoke preset."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import evaluate
import prepare_datasets
import train_single_task
import train_slsd_seq
from configs.base_config import ConfigError, build_config
from evaluation import generate, prompt_messages, reference_for, summarise
from methods import make_method
from models.loading import load_model, load_tokenizer
from training import eval_loss
from utils_data import SFTDataset, make_loader, read_rows, render


def test_batched_generation_equals_one_at_a_time(tiny_model, tokenizer):
    prompts = [render(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)
               for text in ("Hi", "What is the capital of France and why?", "Count to three.", "A much longer prompt " * 5)]
    batched, _, _ = generate(tiny_model, tokenizer, prompts, 6, 4, torch.device("cpu"), None)
    single, _, _ = generate(tiny_model, tokenizer, prompts, 6, 1, torch.device("cpu"), None)
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
    plain, _, _ = generate(tiny_model, tokenizer, prompts, 6, 3, device, None)
    shared, nll, _ = generate(tiny_model, tokenizer, prompts, 6, 3, device, None, references=references)
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
        # the 128-token limit cuts long references (T4's BFCL schemas): counted, and no loss without any
        assert summary["eval_loss"] > 0 if summary["loss_samples"] else summary["eval_loss"] is None
        rows = [json.loads(line) for line in (tmp_path / "ev" / f"eval_{task}_test.jsonl").read_text().splitlines()]
        assert len(rows) == 3 and all("output" in r and "format_ok" in r for r in rows)
    assert summaries["T2_math"]["loss_samples"] == 3 and summaries["T4_tool"]["loss_samples"] == 0
    saved = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert saved["tasks"]["T2_math"]["metric"] == "math_exact_match"


# ---- a checkpoint is scored, and exported, with its method's own inference rule ----------------------------------
RULES = {  # method -> extra arguments; each has its own inference rule
    "ds_lora": [],  # DS-LoRA: slow + the shared fast branch (SLSD changes training, not this rule)
    "ilora": [],  # the slow learner alone
    "gorp": [],  # the LoRAs summed, over the trained full-rank weights
    "per_task": ["--method", "ds_lora", "--fast_mode", "per_task"],  # slow + fast_t for task t
}


@pytest.fixture(scope="module", params=list(RULES))
def finished_run(request, small_data, tmp_path_factory):
    """A 2-task smoke sequence of one method: (its log folder, its final checkpoint)."""
    root = tmp_path_factory.mktemp(request.param)
    method = RULES[request.param] or ["--method", request.param]
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", "T2_math,T1_general",
                         *method, "--max_steps", "2", "--save_every", "0", "--max_eval_samples", "2", "--no_plots",
                         "--log_dir", str(root / "logs"), "--checkpoint_dir", str(root / "ckpt"), "--run_name", "run"])
    return root / "logs", root / "ckpt" / "run" / "stage_1_T1_general"


def test_evaluate_reproduces_the_engine_row_of_a_checkpoint(finished_run):
    logs, checkpoint = finished_run
    summaries = evaluate.main(["--checkpoint", str(checkpoint), "--log_dir", str(logs), "--run_name", "again"])
    rows = {r["task"]: r for r in read_rows(logs / "run" / "eval.jsonl") if r["stage"] == 1}
    assert list(summaries) == list(rows) == ["T2_math", "T1_general"]
    for task, row in rows.items():
        assert summaries[task]["score"] == row["score"] and summaries[task]["samples"] == row["samples"] == 2
        assert summaries[task]["eval_loss"] == pytest.approx(row["eval_loss"], rel=1e-6, abs=0)
        engine = [r["output"] for r in read_rows(logs / "run" / f"samples_02_T1_general_{task}.jsonl")]
        assert [r["output"] for r in read_rows(logs / "again" / f"eval_{task}_test.jsonl")] == engine


def loud_copy(checkpoint, folder, branch: str, zero: bool):
    """A copy of the checkpoint whose ``branch`` tensors are large random ones (so that the branch changes the
    answers of a 2-step smoke run), or zero (ΔW = 0, written in the file)."""
    shutil.copytree(checkpoint, folder)
    with safe_open(str(checkpoint / "adapters.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    tensors, generator = load_file(str(checkpoint / "adapters.safetensors")), torch.Generator().manual_seed(0)
    for key, value in tensors.items():
        if f".{branch}." in key:
            tensors[key] = torch.zeros_like(value) if zero else torch.randn(value.shape, generator=generator) * 0.5
    save_file(tensors, str(folder / "adapters.safetensors"), metadata=metadata)
    return folder


def test_drop_branch_scores_the_checkpoint_without_that_branch(finished_run, tmp_path):
    """--drop_branch equals the same checkpoint with that branch zeroed in its file, under every inference rule, and
    differs from it with the branch kept."""
    logs, checkpoint = finished_run
    branch = "slow" if any(".slow." in key for key in load_file(str(checkpoint / "adapters.safetensors"))) else "fast"
    loud, zeroed = (loud_copy(checkpoint, tmp_path / name, branch, zero) for name, zero in (("l", False), ("z", True)))
    config = ["--config", str(logs / "run" / "config.json"), "--log_dir", str(tmp_path / "logs")]

    def scored(folder, *extra):
        name = f"{folder.name}{len(extra)}"
        summaries = evaluate.main(["--checkpoint", str(folder), *config, "--run_name", name, *extra])
        return {t: (s["eval_loss"], [r["output"] for r in read_rows(tmp_path / "logs" / name / f"eval_{t}_test.jsonl")])
                for t, s in summaries.items()}

    dropped = scored(loud, "--drop_branch", branch)
    assert dropped == scored(zeroed)
    assert dropped != scored(loud)
    saved = json.loads((tmp_path / "logs" / "l2" / "summary.json").read_text())
    assert saved["drop_branch"] == branch
    if branch == "fast":  # a branch the adapters lack is an input error, not a silent no-op
        with pytest.raises(ConfigError, match="no slow branch"):
            scored(loud, "--drop_branch", "slow")


def inference_logits(method, key: str, batch: dict) -> torch.Tensor:
    with torch.no_grad(), method.inference(key):
        return method.model(**batch).logits


def test_export_is_the_model_the_method_evaluates(finished_run, token_batch):
    """The stage's export, loaded outside the toolkit on a fresh base, gives the logits of method.inference."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    logs, checkpoint = finished_run
    config = build_config("smoke", str(logs / "run" / "config.json"))
    method = make_method(load_model(config), load_tokenizer(config), config, torch.device("cpu"), None)
    method.load(checkpoint)
    keys = {method.eval_key(task) for task in config.tasks}
    assert len(keys) == (2 if config.fast_mode == "per_task" else 1)
    evaluated = {key: inference_logits(method, key, token_batch) for key in keys}
    for key, expected in evaluated.items():
        if config.method == "gorp":  # full-rank weights: a merged model, not a LoRA
            assert not (checkpoint / "peft").exists()
            exported = AutoModelForCausalLM.from_pretrained(checkpoint / "merged")
        else:
            folder = checkpoint / "peft" / key if len(keys) > 1 else checkpoint / "peft"
            exported = PeftModel.from_pretrained(load_model(config), str(folder))
        exported.eval()
        with torch.no_grad():
            got = exported(**token_batch).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    if len(keys) > 1:  # per_task: each task's adapter is its own model
        assert not torch.allclose(*evaluated.values(), atol=1e-4)
    if config.method == "ilora":  # slow + fast would be another model than the slow learner
        with torch.no_grad(), method.dslora.branches():
            assert not torch.allclose(method.model(**token_batch).logits, evaluated.pop(keys.pop()), atol=1e-4)


def test_single_task_export_is_the_model_the_method_evaluates(small_data, token_batch, tmp_path):
    """A single-task GORP run writes its evaluated model (full-rank weights included) as merged/, not a LoRA."""
    from transformers import AutoModelForCausalLM

    train_single_task.main(["--task", "T2_math", "--preset", "smoke", "--data_dir", str(small_data), "--method",
                            "gorp", "--max_steps", "2", "--run_name", "gorp", "--log_dir", str(tmp_path / "logs"),
                            "--checkpoint_dir", str(tmp_path / "ckpt")])
    checkpoint = tmp_path / "ckpt" / "gorp"
    config = build_config("smoke", str(tmp_path / "logs" / "gorp" / "config.json"))
    method = make_method(load_model(config), load_tokenizer(config), config, torch.device("cpu"), None)
    method.load(checkpoint)
    assert not (checkpoint / "peft").exists()
    exported = AutoModelForCausalLM.from_pretrained(checkpoint / "merged").eval()
    with torch.no_grad():
        got = exported(**token_batch).logits
    torch.testing.assert_close(got, inference_logits(method, method.eval_key("T2_math"), token_batch),
                               atol=1e-5, rtol=1e-5)


def test_checkpoint_without_its_run_config_is_a_one_line_error(tmp_path, capsys):
    checkpoint = tmp_path / "ckpt" / "lost_run" / "stage_0_T2_math"
    checkpoint.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(checkpoint), "--log_dir", str(tmp_path / "logs")])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "no config of the run of checkpoint" in err and str(tmp_path / "logs" / "lost_run" / "config.json") in err
