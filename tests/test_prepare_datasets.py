"""prepare_datasets.py: the five offline tasks, hub conversions on fixture files, verified targets, no leakage."""
from __future__ import annotations

import json

import pytest

import metrics
import prepare_datasets
from tasks import hub, t1_general, t2_math, t4_tool
from tests.conftest import FIXTURES

TASKS = list(prepare_datasets.OFFLINE)
SMALL = ["--train", "60", "--val", "12", "--test", "12", "--seed", "5"]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_datasets.main(["--out", str(out)] + SMALL)
    return out


def test_every_task_and_split_is_written_with_its_metric(built):
    for task in TASKS:
        splits = {s: read(built / task / f"{s}.jsonl") for s in ("train", "val", "test")}
        assert len(splits["train"]) == 60 and len(splits["val"]) == 12
        benign = 3 * min(12, prepare_datasets.BENIGN_PER_TASK) + min(164, prepare_datasets.BENIGN_PER_TASK)
        expected_test = {"T3_code": 164, "T5_safety": 12 + benign}.get(task, 12)
        assert len(splits["test"]) == expected_test, task
        for record in splits["train"] + splits["test"]:
            assert record["metric"] == prepare_datasets.METRIC[task] and record["id"].startswith(task)


def test_references_score_perfectly_on_their_own_metric(built):
    """Every kept target satisfies its task's checker (code: a sample, the sandbox is slow)."""
    for task in TASKS:
        records = read(built / task / "train.jsonl") + read(built / task / "test.jsonl")
        if task == "T3_code":
            records = records[:5] + records[-3:]
        for record in records:
            if task == "T5_safety" and not record["harmful"]:
                continue  # benign references are other tasks' answers
            assert metrics.score_sample(record, record["output"])["score"] == 1.0, (task, record["id"])


def test_test_prompts_never_appear_in_train(built):
    for task in TASKS:
        keys = {s: {prepare_datasets.prompt_key(r) for r in read(built / task / f"{s}.jsonl")} for s in ("train", "val", "test")}
        assert not keys["test"] & keys["train"] and not keys["val"] & keys["train"] and not keys["test"] & keys["val"]
        assert len(keys["train"]) == 60  # no duplicates inside train either


def test_t5_test_mixes_harmful_and_benign_prompts(built):
    test = read(built / "T5_safety" / "test.jsonl")
    benign = [r for r in test if not r["harmful"]]
    assert len(benign) == 3 * 12 + prepare_datasets.BENIGN_PER_TASK  # 12-sample test splits, and HumanEval
    assert {r["benign_source"] for r in benign} == {"T1_general", "T2_math", "T3_code", "T4_tool"}
    targets = {r["output"] for r in test if r["harmful"]}
    assert len(targets) > 5  # varied refusals, not one fixed string


def test_build_is_deterministic(built, tmp_path):
    prepare_datasets.main(["--out", str(tmp_path), "--tasks", "T1_general,T2_math,T4_tool"] + SMALL)
    for task in ("T1_general", "T2_math", "T4_tool"):
        for split in ("train", "val", "test"):
            assert (tmp_path / task / f"{split}.jsonl").read_text() == (built / task / f"{split}.jsonl").read_text()


def test_t1_eval_topics_are_held_out_of_training():
    train = t1_general.generate(200, 1, "train")
    held = t1_general.generate(50, 1, "eval")
    assert not {r["topic"] for r in train} & set(t1_general.EVAL_TOPICS)
    assert {r["topic"] for r in held} <= set(t1_general.EVAL_TOPICS)


def test_t2_verify_rejects_a_wrong_step_and_a_wrong_answer():
    with pytest.raises(ValueError, match="computes 12"):
        t2_math.verify(["3 * 4 = 13"], 13)
    with pytest.raises(ValueError, match="the answer is 5"):
        t2_math.verify(["3 * 4 = 12"], 5)
    with pytest.raises(ValueError, match="not plain arithmetic"):
        t2_math.evaluate_arithmetic("__import__('os')")


# ---- --source hub, on local fixture files with the hub datasets' columns ----------------------------------------
HUB_FIXTURES = {"tatsu-lab/alpaca": "alpaca", "databricks/databricks-dolly-15k": "dolly", "openai/gsm8k": "gsm8k",
                "sahil2801/CodeAlpaca-20k": "code_alpaca", "glaiveai/glaive-function-calling-v2": "glaive",
                "Anthropic/hh-rlhf": "hh_rlhf"}


@pytest.fixture
def local_hub(monkeypatch):
    """datasets.load_dataset answers hub ids from fixture files (through the real JSON loader)."""
    import datasets

    real = datasets.load_dataset

    def fake(name, config=None, split="train"):
        return real("json", data_files=str(FIXTURES / "hub" / f"{HUB_FIXTURES[name]}.jsonl"), split="train")

    monkeypatch.setattr(datasets, "load_dataset", fake)


def test_hub_conversions(local_hub):
    import datasets

    gsm = hub.convert_gsm8k(datasets.load_dataset("openai/gsm8k", "main"))
    assert gsm[0]["answer"] == "72" and "<<" not in gsm[0]["output"] and gsm[1]["answer"] == "1200"
    assert all(metrics.math_exact_match(r, r["output"])["score"] == 1.0 for r in gsm)
    alpaca = hub.convert_alpaca(datasets.load_dataset("tatsu-lab/alpaca"))
    assert len(alpaca) == 2 and alpaca[1]["input"] == "Good morning"  # the empty answer is dropped
    dolly = hub.convert_dolly(datasets.load_dataset("databricks/databricks-dolly-15k"))
    assert dolly[0]["input"].startswith("Virgin Australia") and dolly[1]["output"] == "Tope"
    glaive = hub.convert_glaive(datasets.load_dataset("glaiveai/glaive-function-calling-v2"))
    assert len(glaive) == 1 and json.loads(glaive[0]["output"]) == {
        "name": "get_exchange_rate", "arguments": {"base_currency": "USD", "target_currency": "EUR"}}
    assert metrics.function_call(glaive[0], glaive[0]["output"])["score"] == 1.0
    hh = hub.convert_hh_harmless(datasets.load_dataset("Anthropic/hh-rlhf"))
    assert [m["role"] for m in hh[0]["messages"]] == ["user", "assistant", "user", "assistant"]


def test_prepare_datasets_hub_source_end_to_end(local_hub, tmp_path):
    prepare_datasets.main(["--source", "hub", "--out", str(tmp_path), "--tasks", "T2_math,T4_tool",
                           "--train", "1", "--val", "1", "--test", "1"])
    math_train = read(tmp_path / "T2_math" / "train.jsonl")
    assert len(math_train) == 1 and math_train[0]["metric"] == "math_exact_match"
    tool = {s: read(tmp_path / "T4_tool" / f"{s}.jsonl") for s in ("val", "test")}
    assert tool["val"][0]["metric"] == "function_call" and "get_exchange_rate" in tool["val"][0]["output"]
    assert tool["test"][0]["category"] in t4_tool.CATEGORIES  # the BFCL test split needs no network
