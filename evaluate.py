"""Evaluate the base model or a saved DS-LoRA checkpoint on task splits with each task's metric.

    python evaluate.py --tasks T1_general,T3_code [--checkpoint checkpoints/<run>[/<stage>]] [--split test]
                       [--max_samples N] [--preset ...] [--<config field> value ...]

Writes logs/<run>/eval_<task>_<split>.jsonl (prompt, output and scores per sample) and logs/<run>/summary.json,
and prints a table: score (the task metric), format compliance, eval loss on the references.
"""
from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext
from pathlib import Path

from transformers import set_seed

from configs.base_config import add_config_arguments, field_help, parse_config, save_config
from evaluation import evaluate_tasks
from models.ds_lora import DSLoRA
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device
from utils_data import read_jsonl, task_file

COLUMNS = ["score", "format_rate", "eval_loss"]


def format_table(summaries: dict[str, dict]) -> str:
    extras = sorted({k for s in summaries.values() for k in s if k in (
        "loose", "rouge_l", "valid_json", "refusal_rate", "over_refusal_rate")})
    header = ["task", "n", *COLUMNS, *extras]
    rows = [[task, str(s["samples"])] + [_cell(s.get(c)) for c in COLUMNS + extras] for task, s in summaries.items()]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, epilog=field_help(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=None, help="comma-separated task names or .jsonl paths (default: config tasks)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (adapters.safetensors inside) or file")
    parser.add_argument("--split", default=None, help="split to score (default: the config's eval_split)")
    parser.add_argument("--max_samples", type=int, default=None, help="cap per task (default: max_eval_samples)")
    add_config_arguments(parser)
    args, config = parse_config(parser, argv)
    set_seed(config.seed)
    tasks = args.tasks.split(",") if args.tasks else config.tasks
    split, cap = args.split or config.eval_split, args.max_samples if args.max_samples is not None else config.max_eval_samples
    run = config.run_name or f"eval_{Path(args.checkpoint).name if args.checkpoint else 'base'}_{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir = Path(config.log_dir) / run
    log_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, log_dir / "config.json")

    device = pick_device(config)
    amp_dtype = autocast_dtype(config, device)
    tokenizer = load_tokenizer(config)
    model = load_model(config, device)
    dslora = None
    if args.checkpoint:
        path = Path(args.checkpoint)
        dslora = DSLoRA.from_file(model, path / "adapters.safetensors" if path.is_dir() else path)
    records, bad_lines = {}, {}
    for task in tasks:
        name = Path(task).stem if task.endswith(".jsonl") else task
        records[name], problems = read_jsonl(task_file(task, split, config.data_dir), config.skip_bad_lines, cap)
        bad_lines[name] = len(problems)
    with dslora.merged() if dslora is not None and config.merge_for_eval else nullcontext():
        results = evaluate_tasks(model, tokenizer, records, config, device, amp_dtype, "eval")
    summaries = {}
    for name, (summary, rows) in results.items():
        summaries[name] = dict(summary, bad_lines=bad_lines[name])
        with (log_dir / f"eval_{name}_{split}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    result = dict(checkpoint=args.checkpoint, split=split, model=config.model_name, tasks=summaries)
    (log_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(summaries))
    print(f"[done] per-sample outputs and summary.json in {log_dir}")
    return summaries


if __name__ == "__main__":
    main()
