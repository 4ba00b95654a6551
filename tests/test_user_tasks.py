"""User tasks in --tasks: task names, folders with train/val/test.jsonl and lone .jsonl files (held-out split)."""
from __future__ import annotations

import json
import random

import pytest

import train_slsd_seq
from utils_data import DataFormatError, read_rows, read_task, task_file, task_name


def write_lines(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def sentiment(count: int) -> list[dict]:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    return [{"id": f"cls-{i}", "instruction": f"Is review {i} positive? It says: {words[i % 6]}.",
             "output": "yes" if i % 2 == 0 else "no", "metric": "exact_match"} for i in range(count)]


def test_task_names_are_unique_and_file_system_safe():
    assert task_name("T2_math") == "T2_math"  # the registered tasks keep their names
    paths = ["a/x/train.jsonl", "b/x/train.jsonl", "my_data/cls.jsonl", "./mine", "../data/T2 math", "a/x/test.jsonl"]
    names = [task_name(p) for p in paths]
    assert len(set(names)) == len(paths)
    assert all("/" not in n and "." not in n and " " not in n for n in names)
    assert names[0].startswith("x-") and names[2].startswith("cls-") and names[3].startswith("mine-")
    assert task_name("./my_data/cls.jsonl") == names[2]  # the same path, written differently


def test_folder_task_reads_its_own_splits(tmp_path):
    folder = tmp_path / "mine"
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        write_lines(folder / f"{split}.jsonl", sentiment(count))
    assert task_file(str(folder), "test", "data") == folder / "test.jsonl"
    assert [len(read_task(str(folder), split, "unused")[0]) for split in ("train", "test")] == [5, 3]


def test_lone_file_split_is_held_out_deterministic_and_order_free(tmp_path):
    records = sentiment(30) + sentiment(3)  # three lines repeated: each copy must land in one split
    path = tmp_path / "cls.jsonl"
    write_lines(path, records)
    splits = {s: read_task(str(path), s, "unused")[0] for s in ("train", "val", "test")}
    ids = {s: [r["id"] for r in rs] for s, rs in splits.items()}
    assert len(set(ids["test"])) == 3 and len(set(ids["val"])) == 3  # ceil(10 %) of 30 distinct records each
    assert not set(ids["test"]) & set(ids["train"]) and not set(ids["val"]) & set(ids["train"])
    assert not set(ids["test"]) & set(ids["val"])
    assert sum(map(len, ids.values())) == len(records)  # every line in exactly one split
    shuffled = list(records)
    random.Random(0).shuffle(shuffled)
    write_lines(path, shuffled)
    assert sorted(r["id"] for r in read_task(str(path), "test", "unused")[0]) == sorted(ids["test"])
    assert read_task(str(path), "test", "unused", limit=2)[0] == read_task(str(path), "test", "unused")[0][:2]


def test_lone_file_too_small_to_hold_out_is_a_one_line_error(tmp_path):
    path = tmp_path / "tiny.jsonl"
    write_lines(path, sentiment(2))
    with pytest.raises(DataFormatError, match=r"tiny\.jsonl: a lone task file needs at least 3 distinct records"):
        read_task(str(path), "test", "unused")


def test_sequence_with_a_task_name_and_a_lone_file(small_data, tmp_path):
    path = tmp_path / "my_data" / "cls.jsonl"
    write_lines(path, sentiment(30))
    tasks = ["T2_math", str(path)]
    logs = tmp_path / "logs"
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", ",".join(tasks),
                         "--method", "ds_lora", "--fast_mode", "per_task", "--max_steps", "2", "--save_every", "0",
                         "--max_train_samples", "0", "--max_eval_samples", "0", "--no_plots", "--log_dir", str(logs),
                         "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", "user"])
    name = task_name(str(path))
    train_ids = {r["id"] for r in read_task(str(path), "train", "unused")[0]}
    stages = read_rows(logs / "user" / "stages.jsonl")
    assert stages[1]["train_samples"] == len(train_ids) == 24  # the held-out lines were not trained on
    for label in ("base", "T2_math", name):  # every evaluation wrote the lone file's samples, under its safe name
        stage = {"base": 0, "T2_math": 1}.get(label, 2)
        evaluated = {r["id"] for r in read_rows(logs / "user" / f"samples_{stage:02d}_{label}_{name}.jsonl")}
        assert len(evaluated) == 3 and not evaluated & train_ids
        assert (logs / "user" / f"samples_{stage:02d}_{label}_T2_math.jsonl").is_file()
    rows = read_rows(logs / "user" / "eval.jsonl")
    assert {r["task"] for r in rows} == set(tasks) and len(rows) == 3 * len(tasks)
    assert (tmp_path / "ckpt" / "user" / f"stage_1_{name}" / "peft" / name / "adapter_config.json").is_file()
