"""Evaluate the base model or a saved checkpoint on task splits with each task's metric, as the engine does.

    python evaluate.py --tasks T1_general,T3_code [--checkpoint checkpoints/<run>/stage_<k>_<task>] [--split test]
                       [--max_samples N] [--preset ...] [--<config field> value ...]

A checkpoint is scored with the rule its method evaluates by, so that evaluate.py on the checkpoint of stage k
reproduces the run's eval.jsonl rows of stage k (on all the evaluated samples; a row that scored a subset,
early_eval_samples, equals them at its sample_positions): the method is rebuilt from the run's config
(``<log_dir>/<run>/config.json``, where <run> is the checkpoint's parent folder, or the folder itself for a
train_single_task.py checkpoint; ``--config`` names another), the stage's adapters.safetensors and method_state.pt
are loaded as resume loads them, and every task is scored under ``method.inference(method.eval_key(task))``
(I-LoRA: its slow learner; GORP: with its trained full-rank weights; fast_mode=per_task: slow + fast_t for task t).
Fields given on the command line override the run's config; the run's tasks are the default ``--tasks``.
``--drop_branch slow`` (or ``fast``) scores the checkpoint with that DS-LoRA branch removed, ΔW_slow = 0 (or every
fast branch's ΔW = 0), under the same inference rule: an intervention that says what each branch carries (e.g. whether
the slow branch SLSD distils into helps or hurts the old tasks).

Writes <log_dir>/<run_name>/eval_<task name>_<split>.jsonl (prompt, output and scores per sample) and summary.json
(run_name defaults to eval_<checkpoint>_<time>), and prints a table: score with its 95 % interval (the task metric),
format compliance, eval loss on the references, the share of answers cut off by the generation budget.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import set_seed

from configs.base_config import ConfigError, add_config_arguments, field_help, parse_config, save_config
from cl_metrics import format_score
from evaluation import evaluate_tasks, select_samples
from methods import make_method
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device
from utils_data import DataFormatError, read_task, task_name

COLUMNS = ["format_rate", "eval_loss", "cutoff_rate"]


def format_table(summaries: dict[str, dict]) -> str:
    extras = sorted({k for s in summaries.values() for k in s if k in (
        "loose", "rouge_l", "valid_json", "refusal_rate", "over_refusal_rate")})
    header = ["task", "n", "score [95% CI]", *COLUMNS, *extras]
    rows = [[task, str(s["samples"]), format_score(s["score"], s.get("score_ci")),
             *(_cell(s.get(c)) for c in COLUMNS + extras)] for task, s in summaries.items()]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _cell(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def checkpoint_folder(checkpoint: str) -> Path:
    """The folder of a checkpoint given as its folder or as its adapters.safetensors."""
    path = Path(checkpoint)
    return path if path.is_dir() else path.parent


def run_config_path(folder: Path, log_dir: str) -> Path:
    """The config.json of the run that wrote checkpoint ``folder``: logs/<run>/ of a sequence stage
    (checkpoints/<run>/stage_<k>_<task>) or of a train_single_task.py run (checkpoints/<run>)."""
    candidates = [Path(log_dir) / name / "config.json" for name in (folder.parent.name, folder.name)]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise FileNotFoundError(f"no config of the run of checkpoint {folder}: looked for "
                                f"{' and '.join(map(str, candidates))}; pass --log_dir <the run's log_dir> or --config")
    return found


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, object, str]:
    """(arguments, config, output run name); with a checkpoint, the config is the run's own under the command
    line's fields."""
    parser = argparse.ArgumentParser(description=__doc__, epilog=field_help(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=None, help="comma-separated task names, folders or .jsonl files "
                                                      "(default: the config's, a checkpoint's run's)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (adapters.safetensors inside) or "
                                                           "its adapters.safetensors")
    parser.add_argument("--split", default=None, help="split to score (default: the config's eval_split)")
    parser.add_argument("--max_samples", type=int, default=None, help="cap per task (default: max_eval_samples)")
    parser.add_argument("--drop_branch", choices=["slow", "fast"], default=None,
                        help="score a checkpoint with this DS-LoRA branch removed (its ΔW = 0)")
    add_config_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args, config = parse_config(parser, argv)
    source = Path(args.checkpoint).name if args.checkpoint else "base"
    run = config.run_name or f"eval_{source}_{time.strftime('%Y%m%d-%H%M%S')}"  # not the checkpoint's run's name
    if args.drop_branch and not args.checkpoint:
        parser.error("--drop_branch needs --checkpoint (the base model has no branches)")
    if args.checkpoint and not args.config:
        saved = run_config_path(checkpoint_folder(args.checkpoint), config.log_dir)
        args, config = parse_config(parser, [*argv, "--config", str(saved)])
    return args, config, run


def main(argv: list[str] | None = None) -> dict[str, dict]:
    try:
        return evaluate(*parse(argv))
    except (FileNotFoundError, DataFormatError) as err:  # bad input: one line, no traceback
        print(f"evaluate.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def drop_branch(dslora, branch: str) -> None:
    """ΔW = s·B·A = 0 for the slow branch, or for every fast branch (per_task keeps one per task), in every adapted
    layer: A and B are zeroed in place, so the method's own inference rule then runs without the branch."""
    params = dslora.slow_parameters() if branch == "slow" else [
        p for name in dslora.fast_names for p in dslora.fast_parameters(name)]
    if not params:
        raise ConfigError(f"--drop_branch {branch}: this checkpoint's adapters have no {branch} branch")
    with torch.no_grad():
        for p in params:
            p.zero_()


def evaluate(args: argparse.Namespace, config, run: str) -> dict[str, dict]:
    set_seed(config.seed)
    tasks = args.tasks.split(",") if args.tasks else config.tasks
    split = args.split or config.eval_split
    cap = args.max_samples if args.max_samples is not None else config.max_eval_samples
    log_dir = Path(config.log_dir) / run
    log_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, log_dir / "config.json")

    device = pick_device(config)
    amp_dtype = autocast_dtype(config, device)
    tokenizer = load_tokenizer(config)
    model = load_model(config, device)
    records, bad_lines = {}, {}
    for task in tasks:
        lines, problems = read_task(task, split, config.data_dir, config.skip_bad_lines)
        records[task] = select_samples(lines, cap, config.eval_subset_seed)  # the engine's subset (evaluate_all)
        bad_lines[task] = len(problems)
    if args.checkpoint:
        method = make_method(model, tokenizer, config, device, amp_dtype)
        method.load(checkpoint_folder(args.checkpoint))
        if args.drop_branch:
            drop_branch(method.dslora, args.drop_branch)
        results = method.evaluate(records, "eval")
    else:
        results = evaluate_tasks(model, tokenizer, records, config, device, amp_dtype, "eval")
    summaries = {}
    for task, (summary, rows) in results.items():
        summaries[task] = dict(summary, bad_lines=bad_lines[task])
        with (log_dir / f"eval_{task_name(task)}_{split}.jsonl").open("w") as handle:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    result = dict(checkpoint=args.checkpoint, method=config.method if args.checkpoint else None,
                  drop_branch=args.drop_branch, split=split,
                  model=config.model_name, tasks=summaries)
    (log_dir / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(summaries))
    print(f"[done] per-sample outputs and summary.json in {log_dir}")
    return summaries


if __name__ == "__main__":
    from cli import run  # data and config errors: one line on stderr, exit 2

    run(main)
