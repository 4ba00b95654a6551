"""The study's evaluation savings: a fixed subset of the samples before the last stage (early_eval_samples) and base
rows shared by runs (shared_base_dir, base_cache.py)."""
from __future__ import annotations

import json
import os

import pytest

import evaluation
import train_slsd_seq
from configs.base_config import METHOD_NAMES, build_config
from evaluation import generation_budget, select_samples
from methods import make_method
from models.loading import load_model
from utils_data import read_task

TASKS = ["T1_general", "T4_tool"]
CAP = 96  # budget cap: T4's subset alone would get 54 tokens, its whole set the cap (test_subset_rows_... checks they differ)


def run(folder, data, name: str, *extra: str, cap: int = CAP) -> dict:
    return train_slsd_seq.main(["--preset", "smoke", "--tasks", ",".join(TASKS), "--max_steps", "1",
                                "--max_eval_samples", "4", "--max_new_tokens", "0",
                                "--max_new_tokens_cap", str(cap), "--no_plots", "--data_dir", str(data),
                                "--log_dir", str(folder / "logs"), "--checkpoint_dir", str(folder / "ckpt"),
                                "--run_name", name, *extra])


def rows(folder, name: str) -> dict:
    lines = (folder / "logs" / name / "eval.jsonl").read_text().splitlines()
    return {(r["stage"], r["task"]): r for r in map(json.loads, lines)}


def outputs(folder, name: str, stage: int, task: str) -> list[str]:
    label = "base" if stage < 0 else TASKS[stage]
    path = folder / "logs" / name / f"samples_{stage + 1:02d}_{label}_{task}.jsonl"
    return [json.loads(line)["output"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def subset_runs(tmp_path_factory, small_data):
    folder = tmp_path_factory.mktemp("subset")
    run(folder, small_data, "early", "--early_eval_samples", "2")
    run(folder, small_data, "full")
    return folder


def test_subset_rows_score_a_fixed_subset_with_the_whole_sets_budget(subset_runs, small_data, tokenizer):
    """After the first stage (not the last) each task scores 2 of its 4 samples, at the positions it names, with the
    budget of all 4: every answer (a random model writes to its budget) equals the full run's at that position.
    The subset's own references would give another budget, so a subset budgeted on itself would fail here."""
    early, full = rows(subset_runs, "early"), rows(subset_runs, "full")
    budgets_differ = False
    for task in TASKS:
        records = select_samples(read_task(task, "test", small_data)[0], 4, 0)
        positions = early[(0, task)]["sample_positions"]
        assert len(positions) == 2 == len(early[(0, task)]["sample_scores"])
        assert "sample_positions" not in early[(1, task)] and len(early[(1, task)]["sample_scores"]) == 4
        assert early[(0, task)]["max_new_tokens"] == full[(0, task)]["max_new_tokens"]
        budgets_differ |= generation_budget(tokenizer, [records[i] for i in positions], 0, CAP).tokens != \
            full[(0, task)]["max_new_tokens"]
        whole = outputs(subset_runs, "full", 0, task)
        assert outputs(subset_runs, "early", 0, task) == [whole[i] for i in positions]
        assert early[(0, task)]["sample_nll"] == [full[(0, task)]["sample_nll"][i] for i in positions]
        assert early[(1, task)]["sample_nll"] == full[(1, task)]["sample_nll"]  # the last stage: every sample
    assert budgets_differ  # the test can tell a subset budget from the whole set's


def test_shared_base_rows_are_reused_by_another_method_and_not_by_another_evaluation(tmp_path, small_data,
                                                                                     monkeypatch):
    """A second run (another method) with the same shared_base_dir scores no base row and logs the stored ones; a
    run whose evaluation differs (more samples) scores its own."""
    shared = str(tmp_path / "base_rows")
    run(tmp_path, small_data, "first", "--shared_base_dir", shared, "--method", "seq_lora", cap=16)
    assert len(list((tmp_path / "base_rows").glob("*.json"))) == len(TASKS)
    scored = []
    real = evaluation.evaluate_tasks
    monkeypatch.setattr(evaluation, "evaluate_tasks", lambda model, tokenizer, records, *args, **kwargs:
                        scored.append((args[3], sorted(records))) or real(model, tokenizer, records, *args, **kwargs))
    run(tmp_path, small_data, "second", "--shared_base_dir", shared, "--method", "ds_lora_slsd", cap=16)
    assert "base" not in [label for label, _ in scored] and scored  # the stages were still evaluated
    first, second = rows(tmp_path, "first"), rows(tmp_path, "second")
    assert all(second[(-1, t)] == first[(-1, t)] for t in TASKS)
    assert outputs(tmp_path, "second", -1, TASKS[0]) == outputs(tmp_path, "first", -1, TASKS[0])
    run(tmp_path, small_data, "third", "--shared_base_dir", shared, "--max_eval_samples", "3", cap=16)
    assert ("base", TASKS) in scored and len(list((tmp_path / "base_rows").glob("*.json"))) == 2 * len(TASKS)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_every_method_scores_the_base_model_as_the_base_model_does(method, small_data, tokenizer, smoke_config):
    """What makes a shared base row valid: before training, every method's evaluation (its inference rule and its
    untrained adapters) gives the base model's answers and losses exactly."""
    config = build_config("smoke", overrides=dict(method=method, tasks=TASKS, max_eval_samples=2, max_new_tokens=6))
    records = {t: select_samples(read_task(t, "test", small_data)[0], 2, 0) for t in TASKS}
    plain = evaluation.evaluate_tasks(load_model(config), tokenizer, records, config, evaluation.torch.device("cpu"),
                                      None, "base")
    model = load_model(config)
    scored = make_method(model, tokenizer, config, evaluation.torch.device("cpu"), None).evaluate(records, "base")
    for task in TASKS:
        assert scored[task][0]["sample_nll"] == plain[task][0]["sample_nll"]
        assert [r["output"] for r in scored[task][1]] == [r["output"] for r in plain[task][1]]


@pytest.mark.parametrize("change", [dict(max_new_tokens=7), dict(precision="bf16"), dict(eval_batch_size=3),
                                    dict(sandbox_isolation="weak"), dict(seed=1)])
def test_base_key_names_what_a_base_row_depends_on(change):
    """Another generation budget, numerics, batch size, scoring or random model (its seed): another key. Training and
    method fields leave it as it is (the adapters are still 0)."""
    from base_cache import base_key

    config = build_config("smoke")
    records, layout = [{"messages": [{"role": "user", "content": "hi"}]}], dict(device="cpu", together=["a"])
    key = base_key(config, records, layout)
    assert base_key(build_config("smoke", overrides=dict(method="ewc", lr_fast=1.0)), records, layout) == key
    assert base_key(build_config("smoke", overrides=change), records, layout) != key
    assert base_key(config, records, dict(layout, together=["a", "b"])) != key
    assert base_key(config, [{"messages": [{"role": "user", "content": "hello"}]}], layout) != key


def test_base_key_follows_the_model_files_content_not_their_times(tmp_path):
    """The embedded model is converted again on every new machine (new file times, the same bytes): stored rows
    (bench/runs/base_rows) stay valid; other weights give another key."""
    from base_cache import base_key

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    config = build_config("smoke", overrides=dict(model_name=str(tmp_path), tiny_random_model=False))
    records, layout = [{"messages": [{"role": "user", "content": "hi"}]}], dict(device="cpu", together=["a"])
    key = base_key(config, records, layout)
    os.utime(tmp_path / "model.safetensors", ns=(1, 1))
    assert base_key(config, records, layout) == key
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert base_key(config, records, layout) != key
