"""SLSD's cost: one stage with SLSD (teacher pass, entropy filter, KD loss on the slow branch) against the same
stage without it, plus the probe buffer's size per supervised token.

    python bench/bench_slsd.py [--task T2_math] [--repeats 3] [--preset default] [--field value ...]

Both runs start from the same adapters (as if a previous stage had just ended), train the same number of steps on
the same seeded data, in one process; ``--repeats`` pairs in alternating order, medians reported. Last line: JSON
with "ratio" = with / without (bar: <= 1.15), "teacher_pass_s" and "probe_bytes_per_token" (bar: <= 1024).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from configs.base_config import add_config_arguments, parse_config  # noqa: E402
from models.ds_lora import DSLoRA  # noqa: E402
from models.loading import device_tokenizer_model  # noqa: E402
from slsd import SLSD  # noqa: E402
from training import num_optimizer_steps, train_stage  # noqa: E402
from utils_data import SFTDataset, make_loader, task_file  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="T2_math")
    parser.add_argument("--repeats", type=int, default=3, help="(without, with) pairs, order alternating; medians")
    add_config_arguments(parser)
    args, config = parse_config(parser)
    device, tokenizer, amp_dtype, model = device_tokenizer_model(config)
    dslora = DSLoRA.from_config(model, config)
    start_state = {k: v.clone() for k, v in dslora.adapter_state().items()}
    train = SFTDataset.from_file(task_file(args.task, "train", config.data_dir), tokenizer, config.max_seq_len,
                                 config.max_train_samples)
    hooks = SLSD(model, dslora, config, device, amp_dtype)
    timings: dict[str, list[float]] = {"without": [], "with": []}
    teacher, info = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):  # alternate the order so that drift in machine load hits both
            for name in (("without", "with") if repeat % 2 == 0 else ("with", "without")):
                dslora.load_state(start_state)
                set_seed(config.seed)
                loader = make_loader(train, config.batch_size, tokenizer.pad_token_id, shuffle=True, seed=config.seed)
                steps = config.task_steps(args.task) or num_optimizer_steps(config, len(loader))
                started = time.perf_counter()
                if name == "with":
                    info = hooks.before_stage(1, [args.task], train)
                    teacher.append(time.perf_counter() - started)
                train_stage(model, dslora, loader, config, steps, Path(tmp) / f"{name}.jsonl", device, amp_dtype,
                            desc=f"stage {name} SLSD", aux_loss=hooks.aux_loss if name == "with" else None)
                timings[name].append(time.perf_counter() - started)
    without, with_ = statistics.median(timings["without"]), statistics.median(timings["with"])
    print(json.dumps(dict(bench="slsd_overhead", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                          task=args.task, steps=steps, batch_size=config.batch_size, kd_every=config.kd_every,
                          kd_batch_size=config.kd_batch_size, teacher_topk=config.teacher_topk,
                          repeats=args.repeats, without_s=round(without, 2), with_s=round(with_, 2),
                          teacher_pass_s=round(statistics.median(teacher), 2), ratio=round(with_ / without, 4),
                          without_all=[round(t, 2) for t in timings["without"]],
                          with_all=[round(t, 2) for t in timings["with"]], **info)))


if __name__ == "__main__":
    main()
