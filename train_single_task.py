"""Train one method (default: DS-LoRA) on one task and report its eval loss.

    python train_single_task.py --task T2_math [--preset smoke] [--config my.yaml] [--lr_fast 1e-4 ...]
    python train_single_task.py --task T2_math --method seq_lora --lr_lora 5e-4    # a baseline's single-task form
    python train_single_task.py --task path/to/train.jsonl      # val.jsonl beside it, or a 10% hold-out
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_single_task.py --task T2_math --device cpu   (2 processes)

``--method`` picks the method (methods/) and this script runs its first stage on the one task, through the same
hooks and training loop as the sequence: its adapters, optimizer, loss, per-step terms and evaluated weights. Fields
that act only from a sequence's second task on (replay, distillation, penalties against earlier tasks), or only in
the sequential evaluation, are refused on the command line instead of being ignored (``SEQUENCE_ONLY``).

Writes logs/<run>/{config.json,train_loss.jsonl,eval.json} and checkpoints/<run>/{adapters.safetensors,peft/} (plus
method_state.pt for a method that carries more than adapters, e.g. GORP's full-rank weights, and merged/ instead of
peft/ for GORP, whose evaluated model no LoRA adapter holds).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from transformers import set_seed

from configs.base_config import (PROBE_FIELDS, add_config_arguments, field_help, parse_config, parse_overrides,
                                 save_config)
from distributed import make_accelerator, tracker_config
from methods import make_method
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device, resolve_model_path
from training import eval_loss, num_optimizer_steps, train_stage
from utils_data import SFTDataset, make_loader, read_jsonl, split_holdout, task_file

# Config fields a single-task run has no use for: they act from a sequence's second task on (there is no earlier task,
# teacher, buffer or LoRA here), or in the sequential evaluation (generation, mid-stage checkpoints), or name the
# sequence itself. Given on the command line, they are refused rather than silently ignored.
SEQUENCE_ONLY = ("tasks", "eval_split", "eval_scope", "early_eval_samples", "shared_base_dir", *PROBE_FIELDS,
                 "eval_subset_seed", "max_new_tokens", "max_new_tokens_cap", "bootstrap_resamples", "sandbox_isolation", "save_every",
                 "use_slsd", "probe_size",
                 "probe_candidates", "entropy_quantile", "teacher_topk", "kd_lambda", "kd_temperature", "kd_every",
                 "kd_batch_size", "kd_branches", "probe_selection", "fast_mode", "replay_per_task", "replay_ratio",
                 "ewc_lambda", "ewc_batches", "lwf_lambda", "lwf_temperature", "olora_lambda_orth", "ilora_lambda")


def load_task(task: str, tokenizer, config) -> tuple[SFTDataset, SFTDataset]:
    """(train, validation) datasets of a task name or a JSONL path; a lone file gets a deterministic 10% hold-out."""
    train_path = task_file(task, "train", config.data_dir)
    records, problems = read_jsonl(train_path, config.skip_bad_lines, config.max_train_samples)
    val_path = train_path.with_name("val.jsonl")
    if val_path.is_file() and val_path != train_path:
        val_records, val_problems = read_jsonl(val_path, config.skip_bad_lines, config.max_eval_samples)
        val_name = str(val_path)
    else:
        records, val_records = split_holdout(records, 0.1, config.seed)
        val_records, val_problems, val_name = val_records[: config.max_eval_samples or None], [], f"{train_path} (10% hold-out)"
    train = SFTDataset(records, tokenizer, config.max_seq_len, str(train_path), problems)
    val = SFTDataset(val_records, tokenizer, config.max_seq_len, val_name, val_problems)
    for dataset in (train, val):
        print(f"[data] {dataset.report.summary()}")
    return train, val


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, epilog=field_help(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="task name under data_dir, or a path to a .jsonl file")
    add_config_arguments(parser)
    args, config = parse_config(parser, argv)
    refuse_sequence_fields(parser, argv)
    set_seed(config.seed)
    task_path = Path(args.task)
    task_name = args.task if not args.task.endswith(".jsonl") else (
        task_path.parent.name if task_path.stem in ("train", "val", "test") else task_path.stem)
    accelerator = make_accelerator(config, pick_device(config), config.log_dir)
    device = accelerator.device
    run, log_dir, ckpt_dir = open_run(config, task_name, accelerator)
    amp_dtype = autocast_dtype(config, device)
    tokenizer = load_tokenizer(config)
    model = load_model(config, device)
    method = make_method(model, tokenizer, config, device, amp_dtype)
    dslora = method.dslora
    print(f"[model] {type(model).__name__}, method {config.method}: {dslora.num_layers} layers, lower "
          f"{dslora.num_frozen} frozen without LoRA, {len(dslora.modules)} adapted layers, "
          f"{method.num_trainable():,} trainable parameters")

    train, val = load_task(args.task, tokenizer, config)
    method.before_stage(0, [args.task], train)  # the task as the sequence would name it
    train_loader = method.train_loader(0, train)
    val_loader = make_loader(val, config.eval_batch_size, tokenizer.pad_token_id, shuffle=False)
    total_steps = config.task_steps(args.task) or num_optimizer_steps(config, len(train_loader))

    def evaluate(desc: str) -> float:
        with method.inference(method.eval_key(args.task)):  # the weights the method evaluates (I-LoRA: its slow LoRA)
            return eval_loss(model, val_loader, device, amp_dtype, desc=desc)

    loss_before = evaluate("eval (before)")
    stats = train_stage(model, dslora, train_loader, config, total_steps, log_dir / "train_loss.jsonl", device,
                        amp_dtype, desc=f"train {task_name}", aux_loss=method.aux_loss,
                        on_step=lambda step, _snapshot: method.after_step(step), optimizer_factory=method.optimizer,
                        loss_fn=method.loss, accelerator=accelerator)
    loss_after = evaluate("eval (after)")

    result = dict(task=task_name, run=run, method=config.method, eval_loss_before=loss_before, eval_loss=loss_after,
                  optimizer_steps=stats.optimizer_steps, skipped_nonfinite=stats.skipped_nonfinite,
                  tokens=stats.tokens, train_wall_s=round(stats.wall_s, 2), final_train_loss=stats.last_loss,
                  train_samples=len(train), val_samples=len(val), processes=accelerator.num_processes)
    accelerator.end_training()
    if not accelerator.is_main_process:
        return result
    save_run(method, config, args.task, ckpt_dir)
    (log_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[done] {task_name}: eval loss {loss_before:.4f} -> {loss_after:.4f} after {stats.optimizer_steps} steps "
          f"({stats.wall_s:.1f} s, {stats.skipped_nonfinite} non-finite skipped); "
          f"logs in {log_dir}, adapters in {ckpt_dir}")
    return result


def open_run(config, task_name: str, accelerator) -> tuple[str, Path, Path]:
    """The run's name (one for every process) and its log and checkpoint folders; the main process writes
    config.json, clears an old train_loss.jsonl and starts the trackers."""
    run = config.run_name or broadcast_object_list([f"single_{task_name}_{time.strftime('%Y%m%d-%H%M%S')}"])[0]
    log_dir, ckpt_dir = Path(config.log_dir) / run, Path(config.checkpoint_dir) / run
    if accelerator.is_main_process:
        log_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, log_dir / "config.json")
        (log_dir / "train_loss.jsonl").unlink(missing_ok=True)
        if config.report_to != "none":
            accelerator.init_trackers(run, config=tracker_config(config))
    accelerator.wait_for_everyone()
    return run, log_dir, ckpt_dir


def save_run(method, config, task: str, ckpt_dir: Path) -> None:
    """adapters.safetensors, method_state.pt (a method that carries more than adapters) and the export of the model
    the method evaluates on ``task`` (methods/base.py, Method.export: peft/, or GORP's merged/)."""
    method.dslora.save(ckpt_dir / "adapters.safetensors")
    if state := method.state_dict():
        torch.save(state, ckpt_dir / "method_state.pt")
    if config.export_peft:
        method.export(ckpt_dir, resolve_model_path(config.model_name, config.model_cache_dir), [task])


def refuse_sequence_fields(parser, argv: list[str] | None) -> None:
    """Exit 2 with one line when the command line sets a field of ``SEQUENCE_ONLY``."""
    _, rest = parser.parse_known_args(argv)
    given = [name for name in parse_overrides(rest) if name in SEQUENCE_ONLY]
    if given:
        print(f"{parser.prog}: error: config field '{given[0]}' has no effect in a single-task run (it acts in a "
              f"sequence: use train_slsd_seq.py), so --{given[0]} is refused", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    from cli import run  # data and config errors, and a stage that diverged: one line on stderr, exit 2
    from training import NonFiniteLossError, NonFiniteParametersError

    run(main, NonFiniteLossError, NonFiniteParametersError)
