"""DS-LoRA + SLSD over a sequence of tasks (default T1_general -> T2_math -> T3_code -> T4_tool -> T5_safety).

    python train_slsd_seq.py [--preset default|demo|study|smoke|paper] [--config file.yaml] [--tasks T2_math,T3_code]
                             [--method ds_lora_slsd|seq_lora|replay|...] [--fast_mode per_task] [--run_name NAME]
                             [--overwrite]
    accelerate launch --config_file configs/accelerate/ddp.yaml train_slsd_seq.py ...   (several GPUs)

Every task is evaluated before the first stage; after each stage every task (eval_scope all) or the tasks trained
so far and the next one (eval_scope needed: all the figures read). Outputs:
logs/<run>/{config.json, train_loss.jsonl, stages.jsonl, eval.jsonl, samples_*.jsonl, summary.json, *.png} and
checkpoints/<run>/stage_<k>_<task>/{adapters.safetensors, peft/}. Re-running the same command resumes.
"""
from __future__ import annotations

import argparse
import sys

from configs.base_config import add_config_arguments, field_help, parse_config
from plot_loss import plot_runs
from sequential import RunConflictError, Sequence, format_summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, epilog=field_help(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run of a different config")
    parser.add_argument("--no_plots", action="store_true", help="skip writing the PNG figures")
    add_config_arguments(parser)
    args, config = parse_config(parser, argv)
    try:
        sequence = Sequence(config, overwrite=args.overwrite)
    except RunConflictError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = sequence.run()
    if sequence.main:
        print(format_summary(summary))
        if not args.no_plots:
            for path in plot_runs([sequence.log_dir]):
                print(f"[plot] {path}")
        print(f"[done] logs in {sequence.log_dir}, checkpoints in {sequence.ckpt_dir}")
    return summary


if __name__ == "__main__":
    from cli import run  # data and config errors, and a stage that diverged: one line on stderr, exit 2
    from training import NonFiniteLossError, NonFiniteParametersError

    run(main, NonFiniteLossError, NonFiniteParametersError)
