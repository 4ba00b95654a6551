"""Build the continual-instruction tasks as data/<task>/{train,val,test}.jsonl plus a data card.

    python prepare_datasets.py [--tasks T2_math] [--out data] [--seed 0] [--train 1000 --val 100 --test 100]

Deterministic for a seed. Texts are de-duplicated (exact and normalised) before splitting, so no test prompt
appears in train. Each record is in the alpaca shape read by utils_data.py and carries what its metric needs.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from tasks import t2_math

BUILDERS = {"T2_math": t2_math.generate}  # task -> generate(count, seed) -> records


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the key for near-duplicate removal."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def split_unique(records: list[dict], sizes: dict[str, int]) -> dict[str, list[dict]]:
    """Drop records whose normalised prompt was seen before, then cut train/val/test in order."""
    seen, unique = set(), []
    for record in records:
        key = normalise(record["instruction"] + " " + record.get("input", ""))
        if key not in seen:
            seen.add(key)
            unique.append(record)
    needed = sum(sizes.values())
    if len(unique) < needed:
        raise ValueError(f"only {len(unique)} unique samples for {needed} requested")
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = unique[start:start + size]
        start += size
    return splits


def write_jsonl(path: Path, records: list[dict]) -> None:
    """Atomic write: a half-written file is never taken as complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(BUILDERS), help=f"comma-separated, from {', '.join(BUILDERS)}")
    parser.add_argument("--out", default="data", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--test", type=int, default=100)
    args = parser.parse_args(argv)
    sizes = {"train": args.train, "val": args.val, "test": args.test}
    for task in args.tasks.split(","):
        if task not in BUILDERS:
            parser.error(f"unknown task '{task}' (available offline: {', '.join(BUILDERS)})")
        # 10% spare so that de-duplication cannot leave a split short.
        records = BUILDERS[task](int(sum(sizes.values()) * 1.1) + 10, args.seed)
        for index, record in enumerate(records):
            record["id"] = f"{task}-{index:05d}"
        for split, part in split_unique(records, sizes).items():
            write_jsonl(Path(args.out) / task / f"{split}.jsonl", part)
            print(f"[data] {task}/{split}: {len(part)} samples")


if __name__ == "__main__":
    main()
