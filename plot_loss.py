"""Figures of training and sequential runs (PNG, matplotlib Agg), written into each run's log folder.

    python plot_loss.py logs/<run> [logs/<run2> ...]   # figures per run; with several runs also a comparison
    python plot_loss.py single T1_general              # the latest train_single_task.py run of that task
    python plot_loss.py seq                            # the latest sequential run

Per run: train_loss.png (raw loss, and its moving average restarted at every stage boundary, so that one task's
loss never leaks into the next one's curve), and for sequential runs eval_by_task.png (task score with its 95 %
interval, format compliance and eval loss of every task across stages) and score_matrix.png (heatmap of R with each
cell's interval); a cell that was not evaluated (eval_scope needed) is left out: no point, a blank heatmap cell.
Several sequential runs: comparison.png (AP, LA, BWT, FWT, forgetting and final per-task scores side by side, with
their intervals as error bars) in every run folder.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cl_metrics import FIGURES, format_score  # noqa: E402
from utils_data import read_rows  # noqa: E402


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average, bias-corrected (as TensorBoard's smoothing)."""
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def smooth_by_stage(rows: list[dict]) -> list[float]:
    """``smooth`` of the loss, restarted where a stage starts (its ``stage_step`` count begins again)."""
    out: list[float] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].get("stage_step", 0) <= rows[i - 1].get("stage_step", -1):
            out += smooth([r["loss"] for r in rows[start:i]])
            start = i
    return out


def plot_train_loss(run: Path) -> Path | None:
    rows = {r["step"]: r for r in read_rows(run / "train_loss.jsonl")}  # a resumed stage rewrites steps: keep last
    if not rows:
        return None
    steps = sorted(rows)
    losses = [rows[s]["loss"] for s in steps]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth_by_stage([rows[s] for s in steps]), label="smoothed (per stage)")
    if any("aux_loss" in rows[s] for s in steps):
        kd = [s for s in steps if "aux_loss" in rows[s]]
        ax.plot(kd, [rows[s]["aux_loss"] for s in kd], ".", markersize=3, label="SLSD KD loss")
    boundary = 0
    for stage in read_rows(run / "stages.jsonl"):
        ax.axvline(boundary + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.text(boundary + 1, ax.get_ylim()[1], stage["task"], fontsize=7, va="top", rotation=90)
        boundary += stage["optimizer_steps"]
    ax.set(xlabel="optimizer step", ylabel="training loss", title=f"{run.name}: training loss")
    ax.legend()
    return _save(fig, run / "train_loss.png")


def plot_eval(run: Path) -> list[Path]:
    """eval_by_task.png (a task's points: the stages after which it was evaluated) and score_matrix.png."""
    summary_path = run / "summary.json"
    rows = read_rows(run / "eval.jsonl")
    if not rows or not summary_path.is_file():
        return []
    summary = json.loads(summary_path.read_text())
    tasks = summary["tasks"]
    stages = ["base"] + [f"after {name}" for name in summary.get("stage_names", tasks)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k, task in enumerate(tasks):
        by_stage = {r["stage"]: r for r in rows if r["task"] == task}
        xs = [s for s in range(-1, len(stages) - 1) if s in by_stage]
        # each task its own marker and a small sideways shift, so that tasks with equal values stay visible
        shifted, marker = [x + 1 + 0.06 * (k - (len(tasks) - 1) / 2) for x in xs], "osD^vP*X"[k % 8]
        scores = [by_stage[x]["score"] for x in xs]
        full = [i for i, x in enumerate(xs) if "sample_positions" not in by_stage[x]]  # scored on every sample
        line = axes[0].errorbar(shifted, scores, yerr=error_bars(scores, [by_stage[x]["score_ci"] for x in xs]),
                                marker=marker, mfc="none", capsize=3, label=task)[0]
        axes[0].plot([shifted[i] for i in full], [scores[i] for i in full], marker, color=line.get_color())
        for ax, key in zip(axes[1:], ("format_rate", "eval_loss")):
            values = [by_stage[x].get(key) for x in xs]
            ax.plot(shifted, values, marker=marker, mfc="none", color=line.get_color(), label=task)
            ax.plot([shifted[i] for i in full], [values[i] for i in full], marker, color=line.get_color())
    for ax, title in zip(axes, ("task score (95 % interval)", "format compliance", "eval loss (references)")):
        ax.set_xticks(range(len(stages)), stages, rotation=30, fontsize=7)
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    subset = max((len(r["sample_positions"]) for r in rows if "sample_positions" in r), default=0)
    fig.suptitle(f"{run.name}: every task across stages (falling score and format at steady loss = illusory forgetting)"
                 + (f"\nhollow markers: before the last stage a point scores a fixed {subset} of the samples "
                    f"(early_eval_samples); filled: every sample" if subset else ""), fontsize=9, y=1.06)
    return [_save(fig, run / "eval_by_task.png"), plot_score_matrix(run, summary, stages)]


def plot_score_matrix(run: Path, summary: dict, stages: list[str]) -> Path:
    """Heatmap of the base row and R with each cell's interval; a cell that was not evaluated (None) stays blank."""
    tasks = summary["tasks"]
    fig, ax = plt.subplots(figsize=(1.3 * len(tasks) + 3, 0.6 * len(stages) + 2))
    matrix = np.array([summary["base_scores"]] + summary["R"], dtype=float)  # None -> NaN: drawn transparent
    intervals = [summary["base_ci"]] + summary["R_ci"]
    image = ax.imshow(matrix, cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(matrix)))
    for (i, j), value in np.ndenumerate(matrix):
        if not np.isnan(value):
            lo, hi = intervals[i][j]
            ax.text(j, i, f"{value:.2f}\n[{lo:.2f}, {hi:.2f}]", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 * image.get_clim()[1] else "black")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30)
    ax.set_yticks(range(len(stages)), stages)
    ax.set_title(f"R[stage][task] [95 % interval]  AP {format_score(summary['AP'], summary['AP_ci'])}  "
                 f"BWT {format_score(summary['BWT'], summary['BWT_ci'], sign=True)}", fontsize=9)
    fig.colorbar(image)
    return _save(fig, run / "score_matrix.png")


def plot_comparison(rows: dict[str, dict], paths: list[Path], title: str | None = None) -> list[Path]:
    """AP, LA, BWT, FWT, forgetting and the final per-task scores of several entries side by side, each with its 95 %
    interval as an error bar. ``rows``: name -> {figure: value, figure_ci: [lo, hi] or None, final_scores: {task:
    value}, final_ci: {task: [lo, hi]}}: a run's summary.json, or a comparison's means over its seeds. Written to
    every path in ``paths``; nothing for fewer than two entries."""
    if len(rows) < 2:
        return []
    names = list(rows)
    colors = plt.get_cmap("tab20" if len(names) > 10 else "tab10").colors
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(14, 1.1 * len(names)), 4.5))
    for offset, key in enumerate(FIGURES):
        values = [row[key] or 0 for row in rows.values()]
        left.bar([i + offset * 0.16 for i in range(len(names))], values, 0.16, label=key,
                 yerr=error_bars(values, [row[f"{key}_ci"] for row in rows.values()]), capsize=2)
    left.set_xticks([i + 0.32 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    left.axhline(0, color="black", linewidth=0.5)
    left.legend(ncols=len(FIGURES), fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0))  # above the bars
    tasks = list(next(iter(rows.values()))["final_scores"])
    width = 0.8 / len(rows)
    for k, (name, row) in enumerate(rows.items()):
        values = [row["final_scores"].get(t, 0) for t in tasks]
        right.bar([i + k * width for i in range(len(tasks))], values, width, label=name, color=colors[k % len(colors)],
                  yerr=error_bars(values, [row["final_ci"].get(t) for t in tasks]), capsize=2)
    right.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=20)
    right.set_title("final score per task")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        fig.suptitle(title)
    for path in paths:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def plot_run_comparison(runs: list[Path]) -> list[Path]:
    """plot_comparison of the finished sequential runs among ``runs``, as comparison.png in each run folder."""
    finished = [run for run in runs if (run / "summary.json").is_file()]
    rows = {run.name: json.loads((run / "summary.json").read_text()) for run in finished}
    return plot_comparison(rows, [run / "comparison.png" for run in finished])


def error_bars(values: list[float], intervals: list[list[float] | None]) -> list[list[float]]:
    """matplotlib's yerr ([below], [above]) from [lo, hi] intervals (none: no bar)."""
    pairs = [(max(0.0, v - ci[0]), max(0.0, ci[1] - v)) if ci else (0.0, 0.0) for v, ci in zip(values, intervals)]
    return [[below for below, _ in pairs], [above for _, above in pairs]]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_runs(runs: list[Path]) -> list[Path]:
    written: list[Path] = []
    for run in runs:
        if not run.is_dir():
            raise FileNotFoundError(f"no run folder {run}")
        written += [p for p in [plot_train_loss(run)] if p] + plot_eval(run)
    return written + plot_run_comparison(runs)


def latest_run(log_dir: Path, prefix: str = "", marker: str = "train_loss.jsonl") -> Path:
    """The most recently written run folder whose name starts with ``prefix`` and that holds ``marker``."""
    runs = sorted((p for p in log_dir.glob(f"{prefix}*") if (p / marker).is_file()), key=lambda p: (p / marker).stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no run matching {log_dir / prefix}* with a {marker}")
    return runs[-1]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return
    logs = Path("logs")
    if args[0] == "single":
        runs = [latest_run(logs, f"single_{args[1]}_" if len(args) > 1 else "single_")]
    elif args[0] == "seq":
        runs = [latest_run(logs, marker="stages.jsonl")]
    else:
        runs = [Path(a) for a in args]
    for path in plot_runs(runs):
        print(f"[plot] {path}")


if __name__ == "__main__":
    from cli import run as run_cli  # data and config errors: one line on stderr, exit 2

    run_cli(main)
