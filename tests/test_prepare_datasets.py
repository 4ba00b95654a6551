"""prepare_datasets.py and the generated T2 math task: verified answers, determinism, no leakage."""
from __future__ import annotations

import json

import pytest

import prepare_datasets
from tasks import t2_math


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_generated_problem_recomputes_to_its_answer():
    records = t2_math.generate(300, seed=3)
    assert {r["family"] for r in records} == set(t2_math.FAMILIES)
    for record in records:
        assert record["output"].endswith(f"#### {record['answer']}")
        steps = [line.replace("×", "*").replace("÷", "/") for line in record["output"].splitlines()[:-1]]
        t2_math.verify(steps, int(record["answer"]))


def test_verify_rejects_a_wrong_step_and_a_wrong_answer():
    with pytest.raises(ValueError, match="computes 12"):
        t2_math.verify(["3 * 4 = 13"], 13)
    with pytest.raises(ValueError, match="the answer is 5"):
        t2_math.verify(["3 * 4 = 12"], 5)
    with pytest.raises(ValueError, match="not plain arithmetic"):
        t2_math.evaluate_arithmetic("__import__('os')")


def test_splits_are_deterministic_and_test_prompts_never_in_train(tmp_path):
    args = ["--tasks", "T2_math", "--train", "200", "--val", "30", "--test", "30", "--seed", "5"]
    prepare_datasets.main(args + ["--out", str(tmp_path / "a")])
    prepare_datasets.main(args + ["--out", str(tmp_path / "b")])
    for split in ("train", "val", "test"):
        assert (tmp_path / "a" / "T2_math" / f"{split}.jsonl").read_text() == \
               (tmp_path / "b" / "T2_math" / f"{split}.jsonl").read_text()
    splits = {s: read(tmp_path / "a" / "T2_math" / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [200, 30, 30]
    keys = {s: {prepare_datasets.normalise(r["instruction"]) for r in rs} for s, rs in splits.items()}
    assert not keys["test"] & keys["train"] and not keys["val"] & keys["train"] and not keys["test"] & keys["val"]
    assert len(keys["train"]) == 200  # no duplicates inside a split either
