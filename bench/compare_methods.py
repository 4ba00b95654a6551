"""Side-by-side comparison of methods × seeds on the same task sequence, model and step budget.

    python bench/compare_methods.py [--quick] [--methods ds_lora_slsd,seq_lora,...] [--seeds 42,43,44] [--jobs N]
                                    [--name NAME] [--preset default] [--<config field> value ...]

Every (method, seed) is one run of train_slsd_seq.py in its own process (so that peak memory is its own), logged in
logs/cmp_<name>_<method>_s<seed>/; a finished run of the same config is reused, an interrupted one resumes, one of
another config (older code defaults) is redone. Writes bench/results/<name>.md and .json: per method AP, BWT, FWT,
forgetting and the final per-task scores (mean ± std over seeds), trainable parameters, training wall time and peak
memory, and bench/results/<name>_comparison.png (plot_loss.py's comparison of the first seed's runs).

Budgets on 2 CPU cores with the embedded model (each overridable on the command line); both train at 10x the
config's learning rates, because at 1e-5 / 5e-5 ten steps do not change a 135M model's greedy answers and every
method would tie with the base model:
  default  every method, 3 seeds, T1 -> T5, 10 steps per task, 4 samples per task and evaluation, 32 new tokens
           (~4 h 45 min with --jobs 2: ~6.8 min per run)
  --quick  every method, 1 seed, T1_general -> T2_math, 8 steps per task, 3 samples, 24 new tokens (< 30 minutes)
Runs go seed by seed (every method's first seed before any second seed), so an interrupted comparison already covers
every method. --jobs N runs N at a time with cores / N threads each: on 2 cores one thread per run is 1.3x slower
than two, so two runs side by side should finish ~1.5x the runs per hour; each run's output then goes to
logs/cmp_<name>_outputs/<run>.log. The last line is JSON (the table's figures).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cl_metrics import continual_metrics  # noqa: E402
from configs.base_config import METHOD_NAMES, parse_overrides  # noqa: E402
from plot_loss import plot_comparison  # noqa: E402

LEARNING_RATES_10X = dict(lr_slow="1e-4", lr_fast="5e-4", lr_lora="5e-4", gorp_lr="1e-4")
BUDGETS = {
    "full": dict(max_steps="10", max_eval_samples="4", max_new_tokens="32", **LEARNING_RATES_10X),
    "quick": dict(tasks="T1_general,T2_math", max_steps="8", max_eval_samples="3", max_new_tokens="24",
                  **LEARNING_RATES_10X),
}
METRICS = ("AP", "BWT", "FWT", "forgetting")
LOSS_METRICS = ("loss_final", "loss_BWT")


def say(line: str) -> None:
    """One progress line, written whole (runs side by side print from several threads)."""
    sys.stdout.write(f"[compare] {line}\n")
    sys.stdout.flush()


def mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(pair: tuple[float | None, float | None]) -> str:
    mean, std = pair
    return "–" if mean is None else f"{mean:+.3f} ± {std:.3f}" if mean < 0 else f"{mean:.3f} ± {std:.3f}"


def loss_figures(summary: dict) -> dict[str, float | None]:
    """AP and BWT of the eval-loss matrix (token loss on the reference answers; lower is better, loss_BWT > 0 is
    forgetting): finer-grained than a few samples' scores."""
    losses = summary["loss_matrix"]
    if len(losses) != len(summary["tasks"]):  # multi-task: one stage, no backward transfer
        return dict(loss_final=statistics.fmean(losses[-1]), loss_BWT=None)
    figures = continual_metrics(losses, summary["base_losses"])
    return dict(loss_final=figures["AP"], loss_BWT=figures["BWT"])


def aggregate(summaries: list[dict]) -> dict:
    tasks = summaries[0]["tasks"]
    losses = [loss_figures(s) for s in summaries]
    return dict(seeds=len(summaries), **{k: mean_std([s[k] for s in summaries]) for k in METRICS},
                **{k: mean_std([figures[k] for figures in losses]) for k in LOSS_METRICS},
                final_scores={t: mean_std([s["final_scores"][t] for s in summaries]) for t in tasks},
                trainable_params=summaries[0]["trainable_params"],
                train_wall_s=mean_std([s["train_wall_s"] for s in summaries]),
                peak_memory_mb=max(s["peak_memory_mb"] for s in summaries))


def markdown(name: str, command: str, table: dict[str, dict], tasks: list[str], seeds: list[str]) -> str:
    head = ["method", *METRICS, *tasks, "final eval loss", "loss BWT", "trainable params", "train wall s", "peak MB"]
    lines = [f"# Method comparison `{name}`", "", f"Regenerate: `{command}`", "",
             f"Mean ± std over {len(seeds)} seed(s) ({', '.join(seeds)}); scores are the task metrics (0–1) after the"
             " last stage; final eval loss is the mean token loss on the reference answers after the last stage and"
             " loss BWT its backward transfer (> 0: the loss on earlier tasks rose, i.e. forgetting).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in table.items():
        cells = [method, *(cell(row[k]) for k in METRICS), *(cell(row["final_scores"][t]) for t in tasks),
                 *(cell(row[k]) for k in LOSS_METRICS),
                 f"{row['trainable_params']:,}", f"{row['train_wall_s'][0]:.0f}", f"{row['peak_memory_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the < 30 minute budget (see above)")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES), help="comma-separated --method names")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 42,43,44; --quick: 42)")
    parser.add_argument("--name", default=None, help="results name (default: quick or default)")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each with cores / jobs threads")
    parser.add_argument("--results_dir", default=str(Path(__file__).parent / "results"), help="where the table goes")
    args, rest = parser.parse_known_args(argv)
    budget = dict(BUDGETS["quick" if args.quick else "full"], **parse_overrides(rest))
    seeds = (args.seeds or ("42" if args.quick else "42,43,44")).split(",")
    name = args.name or ("quick" if args.quick else "default")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        parser.error(f"unknown method {unknown[0]} (choose from {', '.join(METHOD_NAMES)})")
    started = time.perf_counter()
    log_root = ROOT / budget.get("log_dir", "logs")
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // args.jobs)))

    def run_one(method: str, seed: str) -> None:
        run = f"cmp_{name}_{method}_s{seed}"
        fields = dict(budget, method=method, seed=seed, run_name=run)
        argv_run = ["--preset", args.preset, "--no_plots", "--overwrite",  # a run of another config is redone
                    *[a for k, v in fields.items() for a in (f"--{k}", v)]]
        say(f"{method} seed {seed}: train_slsd_seq.py {' '.join(argv_run)}")
        command_run = [sys.executable, str(ROOT / "train_slsd_seq.py"), *argv_run]
        output = None if args.jobs == 1 else log_root / f"cmp_{name}_outputs" / f"{run}.log"  # side by side: a file each
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w") if output is not None else contextlib.nullcontext() as out:
            done = subprocess.run(command_run, cwd=ROOT, env=env, stdout=out,
                                  stderr=None if out is None else subprocess.STDOUT)
        if done.returncode:
            raise RuntimeError(f"{run} failed (exit {done.returncode})" + (f"; its output: {output}" if output else ""))
        say(f"{method} seed {seed}: done")

    with ThreadPoolExecutor(args.jobs) as pool:  # seed-major: every method's first seed comes first
        futures = [pool.submit(run_one, m, s) for s in seeds for m in methods]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run stops the comparison (the running ones finish)
            raise
    runs = {m: [log_root / f"cmp_{name}_{m}_s{s}" for s in seeds] for m in methods}
    summaries = {m: [json.loads((d / "summary.json").read_text()) for d in dirs] for m, dirs in runs.items()}
    table = {m: aggregate(s) for m, s in summaries.items()}
    tasks = next(iter(summaries.values()))[0]["tasks"]
    out = Path(args.results_dir)
    out.mkdir(exist_ok=True)
    command = " ".join(["python bench/compare_methods.py", *(sys.argv[1:] if argv is None else argv)])
    (out / f"{name}.md").write_text(markdown(name, command, table, tasks, seeds))
    summary = dict(name=name, command=command, budget=budget, seeds=seeds, table=table)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_comparison([r[0] for r in runs.values()], out / f"{name}_comparison.png", labels=list(runs))
    print(markdown(name, command, table, tasks, seeds))
    result = dict(bench="compare_methods", name=name, wall_s=round(time.perf_counter() - started, 1),
                  AP={m: row["AP"][0] for m, row in table.items()}, BWT={m: row["BWT"][0] for m, row in table.items()})
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
