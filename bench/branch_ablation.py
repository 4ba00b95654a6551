"""What one DS-LoRA branch carries at the end of a sequence: each run's last checkpoint scored with the branch
removed (evaluate.py --drop_branch), paired sample by sample with the run's own last evaluation.

    python bench/branch_ablation.py --group kd_every_1:cmp_study_t2_kd_every_1_s42,cmp_study_t2_kd_every_1_s43 \\
                                    --group kd_lambda_0.1:cmp_study_t2_kd_lambda_0.1_s42,... [--branch slow] \\
                                    [--name slow_ablation] [--jobs 2]

Per run (checkpoints/<run>/stage_<last>, its config from logs/<run>/config.json, the same test samples as its last
evaluation): logs/<run>_drop_<branch>/ (evaluate.py's output; kept, so an interrupted ablation resumes). Per group
(its runs are seeds) and task, on one set of bootstrap draws (cl_metrics.Bootstrap: the same samples and seeds):

    Δscore_i = score_i(without the branch) − score_i(as the run ended)      (> 0: the branch cost task i)
    Δold     = mean over the old tasks (all but the last) of Δscore_i
    Δloss_i  = eval loss on task i's references without the branch − with it   (per seed; mean and t interval)

Writes bench/results/<name>.md, .json and .png (Δscore per task and group with its 95 % interval). Last line: JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cl_metrics import Bootstrap, format_score, interval, laid_out, seed_t_interval  # noqa: E402
from sequential import Sequence  # noqa: E402
from utils_data import read_rows  # noqa: E402

RESAMPLES = 2000


def last_checkpoint(run: str) -> Path:
    """The run's final stage checkpoint, named as the engine names it (the run's config: its tasks and folder)."""
    config = json.loads((ROOT / "logs" / run / "config.json").read_text())
    tasks = config["tasks"]
    folder = ROOT / config["checkpoint_dir"] / run / f"stage_{len(tasks) - 1}_{Sequence.stage_name(tasks[-1:])}"
    if not (folder / "adapters.safetensors").is_file():
        raise FileNotFoundError(f"no final checkpoint {folder} (adapters.safetensors)")
    return folder


def ablate(run: str, branch: str, threads: int) -> Path:
    """evaluate.py on the run's last checkpoint without ``branch``, unless its summary is already there."""
    out = ROOT / "logs" / f"{run}_drop_{branch}"
    if not (out / "summary.json").is_file():
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        log = ROOT / "logs" / f"{run}_drop_{branch}.log"
        with log.open("w") as handle:
            subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(last_checkpoint(run)),
                            "--drop_branch", branch, "--run_name", out.name], cwd=ROOT, env=env, check=True,
                           stdout=handle, stderr=subprocess.STDOUT)
        print(f"[ablation] {run}: scored without its {branch} branch", flush=True)
    return out


def paired_rows(run: Path, ablated: Path) -> tuple[list[str], list[np.ndarray], list[list], list[float]]:
    """(tasks, per task [scores as the run ended, scores without the branch], groups, per task Δ eval loss) from the
    run's log folder and the ablation's."""
    rows = read_rows(run / "eval.jsonl")
    last = max(r["stage"] for r in rows)
    ended = {r["task"]: r for r in rows if r["stage"] == last}
    without = json.loads((ablated / "summary.json").read_text())["tasks"]
    tasks, scores, groups, losses = list(without), [], [], []
    for task in tasks:
        row, mine = ended[task], without[task]
        full = laid_out(row["sample_scores"], row.get("sample_positions"), len(mine["sample_scores"]))
        if np.isnan(full).any() or row["sample_groups"] != mine["sample_groups"]:
            raise ValueError(f"{run.name}: the last evaluation of {task} scored other samples than the ablation")
        scores.append(np.array([full, mine["sample_scores"]], dtype=float))
        groups.append(mine["sample_groups"])
        losses.append(mine["eval_loss"] - row["eval_loss"])
    return tasks, scores, groups, losses


def group_report(runs: list[str], branch: str, logs: Path = ROOT / "logs") -> dict:
    """One group's (its runs are seeds) Δscore per task and over the old tasks, Δloss per task (module docstring)."""
    per_run = [paired_rows(logs / run, logs / f"{run}_drop_{branch}") for run in runs]
    tasks, _, groups, _ = per_run[0]
    bootstrap = Bootstrap(groups, RESAMPLES, seeds=len(runs))
    points, draws = zip(*(bootstrap.matrix(scores) for _, scores, _, _ in per_run))
    (ended, ended_draws), (without, without_draws) = (
        bootstrap.pool([p[row] for p in points], [d[:, row] for d in draws]) for row in (0, 1))
    delta, delta_draws = without - ended, without_draws - ended_draws
    losses = np.array([loss for _, _, _, loss in per_run])
    report = {task: dict(ended=float(ended[j]), without=float(without[j]), delta=float(delta[j]),
                         delta_ci=interval(delta_draws[:, j]),
                         delta_per_seed=[float(p[1, j] - p[0, j]) for p in points],
                         delta_loss=float(losses[:, j].mean()), delta_loss_per_seed=losses[:, j].tolist(),
                         delta_loss_t_ci=seed_t_interval(losses[:, j].tolist()))
              for j, task in enumerate(tasks)}
    old_per_seed = [float((p[1, :-1] - p[0, :-1]).mean()) for p in points]
    report["old_tasks"] = dict(delta=float(delta[:-1].mean()), delta_ci=interval(delta_draws[:, :-1].mean(-1)),
                               delta_per_seed=old_per_seed, delta_t_ci=seed_t_interval(old_per_seed))
    return dict(runs=runs, tasks=tasks, samples=[len(g) for g in groups], per_task=report)


def markdown(reports: dict[str, dict], branch: str) -> str:
    tasks = next(iter(reports.values()))["tasks"]
    lines = [f"Each run's last checkpoint scored without its {branch} branch, minus as it ended (> 0: the branch cost "
             "the task); mean over seeds, 95 % paired bootstrap interval over samples and seeds.", "",
             "| group | " + " | ".join(f"{t}: ended → without, Δ" for t in tasks) + " | Δ old tasks | Δ loss per task |",
             "|---" * (len(tasks) + 3) + "|"]
    for name, report in reports.items():
        cells = [f"{r['ended']:.3f} → {r['without']:.3f}, {format_score(r['delta'], r['delta_ci'], sign=True)}"
                 for r in (report["per_task"][t] for t in tasks)]
        old = report["per_task"]["old_tasks"]
        loss = ", ".join(f"{report['per_task'][t]['delta_loss']:+.3f}" for t in tasks)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {format_score(old['delta'], old['delta_ci'], sign=True)}"
                     f" (seeds {', '.join(f'{v:+.3f}' for v in old['delta_per_seed'])}) | {loss} |")
    return "\n".join(lines) + "\n"


def plot(reports: dict[str, dict], path: Path, branch: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = next(iter(reports.values()))["tasks"] + ["old_tasks"]
    width = 0.8 / len(reports)
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2, 3.6))
    for k, (name, report) in enumerate(reports.items()):
        rows = [report["per_task"][t] for t in tasks]
        x = np.arange(len(tasks)) + (k - (len(reports) - 1) / 2) * width
        mean = np.array([r["delta"] for r in rows])
        err = np.abs(np.array([r["delta_ci"] for r in rows]).T - mean)
        ax.bar(x, mean, width, yerr=err, capsize=3, label=name)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(tasks)), [t.replace("_", "\n", 1) for t in tasks])
    ax.set_ylabel(f"score without {branch} − as ended")
    ax.set_title(f"Removing the {branch} branch from the last checkpoint (95 % intervals)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", action="append", required=True, help="LABEL:run,run,... (the runs are seeds)")
    parser.add_argument("--branch", choices=["slow", "fast"], default="slow")
    parser.add_argument("--name", default="branch_ablation", help="results name in bench/results/")
    parser.add_argument("--jobs", type=int, default=1, help="evaluations at a time, each with cores / jobs threads")
    args = parser.parse_args()
    if any(":" not in g for g in args.group):
        parser.error("--group takes LABEL:run,run,...")
    groups = {label: runs.split(",") for label, runs in (g.split(":", 1) for g in args.group)}
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda run: ablate(run, args.branch, threads), [r for runs in groups.values() for r in runs]))
    reports = {label: group_report(runs, args.branch) for label, runs in groups.items()}
    out = ROOT / "bench" / "results" / args.name
    out.with_suffix(".json").write_text(json.dumps(dict(branch=args.branch, groups=reports), indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(reports, args.branch))
    plot(reports, out.with_suffix(".png"), args.branch)
    print(out.with_suffix(".md").read_text())
    print(json.dumps({label: r["per_task"]["old_tasks"] for label, r in reports.items()}))


if __name__ == "__main__":
    from cli import run  # a missing checkpoint or unpaired samples: one line on stderr, exit 2

    run(main, ValueError)
