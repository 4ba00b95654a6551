"""Train DS-LoRA on one task and report its eval loss.

    python train_single_task.py --task T2_math [--preset smoke] [--config my.yaml] [--lr_fast 1e-4 ...]
    python train_single_task.py --task path/to/train.jsonl      # val.jsonl beside it, or a 10% hold-out
    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 train_single_task.py --task T2_math --device cpu   (2 processes)

Writes logs/<run>/{config.json,train_loss.jsonl,eval.json} and checkpoints/<run>/{adapters.safetensors,peft/}.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list
from transformers import set_seed

from configs.base_config import add_config_arguments, field_help, parse_config, save_config
from distributed import make_accelerator, tracker_config
from models.ds_lora import DSLoRA
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device, resolve_model_path
from training import eval_loss, num_optimizer_steps, train_stage
from utils_data import SFTDataset, make_loader, read_jsonl, split_holdout, task_file


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
    set_seed(config.seed)
    task_path = Path(args.task)
    task_name = args.task if not args.task.endswith(".jsonl") else (
        task_path.parent.name if task_path.stem in ("train", "val", "test") else task_path.stem)
    accelerator = make_accelerator(config, pick_device(config), config.log_dir)
    device, main = accelerator.device, accelerator.is_main_process
    run = config.run_name or broadcast_object_list([f"single_{task_name}_{time.strftime('%Y%m%d-%H%M%S')}"])[0]
    log_dir, ckpt_dir = Path(config.log_dir) / run, Path(config.checkpoint_dir) / run
    if main:
        log_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, log_dir / "config.json")
        (log_dir / "train_loss.jsonl").unlink(missing_ok=True)
        if config.report_to != "none":
            accelerator.init_trackers(run, config=tracker_config(config))
    accelerator.wait_for_everyone()
    amp_dtype = autocast_dtype(config, device)
    tokenizer = load_tokenizer(config)
    model = load_model(config, device)
    dslora = DSLoRA.from_config(model, config)
    print(f"[model] {type(model).__name__}: {dslora.num_layers} layers, lower {dslora.num_frozen} frozen without LoRA, "
          f"{len(dslora.modules)} DS-LoRA layers, {dslora.num_trainable():,} trainable parameters")

    train, val = load_task(args.task, tokenizer, config)
    train_loader = make_loader(train, config.batch_size, tokenizer.pad_token_id, shuffle=True, seed=config.seed,
                               group_by_length=config.group_by_length)
    val_loader = make_loader(val, config.eval_batch_size, tokenizer.pad_token_id, shuffle=False)
    total_steps = num_optimizer_steps(config, len(train_loader))

    loss_before = eval_loss(model, val_loader, device, amp_dtype, desc="eval (before)")
    stats = train_stage(model, dslora, train_loader, config, total_steps, log_dir / "train_loss.jsonl", device,
                        amp_dtype, desc=f"train {task_name}", accelerator=accelerator)
    loss_after = eval_loss(model, val_loader, device, amp_dtype, desc="eval (after)")

    result = dict(task=task_name, run=run, eval_loss_before=loss_before, eval_loss=loss_after,
                  optimizer_steps=stats.optimizer_steps, skipped_nonfinite=stats.skipped_nonfinite,
                  tokens=stats.tokens, train_wall_s=round(stats.wall_s, 2), final_train_loss=stats.last_loss,
                  train_samples=len(train), val_samples=len(val), processes=accelerator.num_processes)
    accelerator.end_training()
    if not main:
        return result
    dslora.save(ckpt_dir / "adapters.safetensors")
    if config.export_peft:
        dslora.export_peft(ckpt_dir / "peft", resolve_model_path(config.model_name, config.model_cache_dir))
    (log_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"[done] {task_name}: eval loss {loss_before:.4f} -> {loss_after:.4f} after {stats.optimizer_steps} steps "
          f"({stats.wall_s:.1f} s, {stats.skipped_nonfinite} non-finite skipped); "
          f"logs in {log_dir}, adapters in {ckpt_dir}")
    return result


if __name__ == "__main__":
    main()
