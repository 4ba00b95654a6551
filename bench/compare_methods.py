"""Side-by-side comparison of methods (and variants) × seeds on the same task sequence, model and step budget.

    python bench/compare_methods.py [--quick] [--methods ds_lora_slsd,seq_lora,...] [--variant LABEL:field=value,...]
                                    [--reference LABEL] [--seeds 42,43,44] [--jobs N] [--name NAME] [--runs_of NAME]
                                    [--preset study] [--no_recovery] [--redo_changed] [--stages K]
                                    [--<config field> value ...]

Every (entry, seed) is one run of train_slsd_seq.py in its own process (so that peak memory is its own), logged in
logs/cmp_<name>_<label>_s<seed>/ (label: the method's name or the variant's, which may not be a method's; with
``--runs_of OTHER`` in OTHER's folders, so that entries another comparison ran are reused); a finished run of the
same config is reused, an interrupted one resumes, an unfinished one of another config is redone; a finished one of
another config (a changed preset or code default) stops the comparison before any run, naming the fields that differ,
unless ``--redo_changed`` says to redo it. Each finished run's folder is kept as bench/runs/<run>.tar.gz (again once
probed; ``--archive_dir``; commit it) and unpacked where logs/ lacks it, and the study preset's base rows and probe
controls live in bench/runs/base_rows/, keyed by content: logs/ is not kept from one machine to the next, so a study
too long for one session grows across sessions. Writes
bench/results/<name>.md and .json: per entry AP, LA, BWT, FWT, forgetting, the final per-task scores and each task's
plasticity (R[i][i] − base[i]), each the mean over seeds with its 95 % bootstrap interval; trainable parameters,
training wall time and peak memory; each entry's paired difference from --reference in AP, BWT, LA, forgetting, its
illusory and real parts and loss BWT with its interval, marked where it and (over several seeds) the t interval over
the seeds both exclude 0; bench/results/<name>_comparison.png (the table's means over seeds and their intervals,
plot_loss.py's comparison) and <name>_paired.png (the paired differences). Probe fields
(configs.base_config.PROBE_FIELDS: recovery_steps, recovery_samples, recovery_lr_scale) go to the probe, not to the
runs, so changing them re-probes without retraining.

Illusory vs real forgetting: after each sequential run, recovery_probe.py probes the old tasks whose score fell
(in its own process, resumable; ``--no_recovery`` skips it: a run never probed leaves these columns empty). The
table splits each method's forgetting into its illusory part (brought back by the probe) and its real part, which add
up to it, gives the illusory part beyond what the same probe teaches the base model (the probe's control: a lower
reading), and names the old tasks flagged format_drift_only (format fell while the eval loss held), all pooled over
seeds with the same resampled samples and seeds as the other figures (cl_metrics.recovery_report).

Intervals (cl_metrics.Bootstrap): every run evaluates the same test samples (evaluation.select_samples), so one
resample draws, per task, sample indices shared by every method, seed and stage, and draws the seeds with
replacement (the same seeds for both sides of a difference): an interval covers the sample noise and the seed
noise, and a difference is paired on both.

Budgets (presets of configs/base_config.py; any field can be overridden on the command line):
  --preset study (default)  the study budget: 12 steps x 4 per task (T2_math 120) at 40x the method's rates, 100 test
                            samples per task after the last stage and a fixed 50 of them before it, only the
                            cells the figures read (eval_scope needed), one base row shared by every run
                            (bench/runs/base_rows); 3 seeds
  --quick                   the demo preset (make run's) on T1_general -> T2_math, 16 samples per task, 1 seed
Variants: ``--variant LABEL:field=value,field=value`` (repeatable) adds a run of the config with those fields
(method ds_lora_slsd unless it names one; a value may hold commas: t2:task_max_steps=T2_math:120,T3_code:24) under
its own label, so one command also runs a dose-response study:
  --methods ds_lora --reference ds_lora --variant lambda_0.1:kd_lambda=0.1 --variant lambda_1:kd_lambda=1.0
Every entry is paired with --reference (default ds_lora_slsd) on the same samples and seeds.
A comparison cut short (runs stopped after stage K, their checkpoints lost): ``--stages K`` runs nothing and
builds the table of the runs' first K stages, the sequence of their first K tasks, from their logs
(sequential.summary_from_logs).
Runs go seed by seed (every method's first seed before any second seed), so an interrupted comparison already covers
every method. --jobs N runs N at a time with cores / N threads each: on 2 cores one thread per run is 1.3x slower
than two, so two runs side by side should finish ~1.5x the runs per hour; each run's output then goes to
logs/cmp_<name>_outputs/<run>.log. The last line is JSON (the table's figures).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cl_metrics import (FIGURES, Bootstrap, continual_metrics, format_score, interval, paired_difference,  # noqa: E402
                        paired_loss_bwt, recovery_report, recovery_samples, run_samples, seed_t_interval,
                        shared_losses)
from configs.base_config import METHOD_NAMES, PROBE_FIELDS, build_config, config_digest, parse_overrides  # noqa: E402
from plot_loss import plot_comparison  # noqa: E402
from recovery_probe import STARTS, eval_rows, read_probes  # noqa: E402
from sequential import config_changes, scored_ids, summary_from_logs  # noqa: E402
from utils_data import json_ready, read_rows  # noqa: E402

# --quick: the demo preset on two tasks, scored on 16 samples per task as before demo's went to 64 (4x the answers
# per run; --quick's 14 methods took 25 min 50 s this way against a 30 min bar, bench/RESULTS.md issue 15 session 34).
# A --max_eval_samples given on the command line overrides it.
QUICK = dict(tasks="T1_general,T2_math", max_eval_samples="16")  # command-line strings, as overrides are
REFERENCE = "ds_lora_slsd"  # the default --reference: the entry every other one is compared with (paired differences)
SPLIT_NAMES = {"val": "validation"}  # how the tables name an --eval_split the intervals are over (else as given)
TEST_SAMPLES = "test samples"  # what the intervals are over where a caller does not say (the runs' eval_split: main)
VARIANT_METHOD = "ds_lora_slsd"  # the method of a --variant that names none
SCORE_PAIRED = ("AP", "BWT", "LA", "forgetting")  # cl_metrics.paired_difference
SPLIT_PAIRED = ("illusory", "real")  # forgetting's two parts (paired_recovery): Δillusory + Δreal = Δforgetting
PAIRED = (*SCORE_PAIRED, *SPLIT_PAIRED, "loss_BWT")  # loss_BWT: cl_metrics.paired_loss_bwt
LOSS_METRICS = ("loss_final", "loss_BWT")
# forgetting = illusory + real (recovery_probe.py); illusory_controlled: the illusory part beyond what the probe
# teaches the base model (its control), a lower reading of the illusory part
RECOVERY = ("forgetting_illusory", "forgetting_real", "forgetting_illusory_controlled")


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


def loss_figures(summary: dict, per_sample: dict | None) -> dict[str, float | None]:
    """The mean eval loss after the last stage and the BWT of the eval-loss matrix (token loss on the reference
    answers; lower is better, loss_BWT > 0 is forgetting): finer-grained than a few samples' scores. BWT compares
    each task's evaluations on the samples all of them scored (cl_metrics.shared_losses), as the score figures do;
    None without an old task (``per_sample``, the run's run_losses, is None: method_losses)."""
    final = statistics.fmean(summary["loss_matrix"][-1])
    if per_sample is None:
        return dict(loss_final=final, loss_BWT=None)
    losses = shared_losses(per_sample["nll"], per_sample["tokens"])
    return dict(loss_final=final, loss_BWT=continual_metrics(losses[1:], losses[0])["BWT"])


def run_losses(run: Path, summary: dict) -> dict[str, list]:
    """A run's per-sample summed NLL, supervised-token counts and format compliance of every evaluation, laid out as
    its scores (cl_metrics.run_samples)."""
    rows = {(r["stage"], r["task"]): r for r in read_rows(run / "eval.jsonl")}
    return {name: run_samples(rows, summary["tasks"], len(summary["stage_names"]), key)[0]
            for name, key in (("nll", "sample_nll"), ("tokens", "sample_tokens"), ("formats", "sample_format"))}


def method_losses(runs: dict[str, list[Path]], summaries: dict[str, list[dict]]) -> dict[str, list | None]:
    """{method: per-seed run_losses}; None without an old task to forget: a method trained in one stage
    (multi-task) or a sequence of one task."""
    def sequential(summary: dict) -> bool:
        return len(summary["stage_names"]) == len(summary["tasks"]) > 1

    return {method: [run_losses(run, summary) for run, summary in zip(dirs, summaries[method])]
            if sequential(summaries[method][0]) else None for method, dirs in runs.items()}


def read_summary(run: Path, stages: int | None) -> dict:
    """A finished run's summary (of its first ``stages`` stages: the sequence of its first tasks), rebuilt from its
    logs by today's code: a reused run's summary.json may predate a change of the figures' code."""
    return json.loads(json.dumps(json_ready(summary_from_logs(run, stages))))  # as summary.json reads: NaN as None


def run_scores(run: Path, summary: dict) -> tuple[list[list], list[list], list[list[str]]]:
    """A run's per-sample scores of every evaluation, its samples' groups (cl_metrics.run_samples) and each task's
    sample ids (those its last kept evaluation scored)."""
    rows = {(r["stage"], r["task"]): r for r in read_rows(run / "eval.jsonl")}
    last = len(summary["stage_names"]) - 1
    return (*run_samples(rows, summary["tasks"], last + 1),
            [scored_ids(run, rows[(last, task)]) for task in summary["tasks"]])


def method_scores(runs: dict[str, list[Path]], summaries: dict[str, list[dict]]) -> tuple[dict[str, list], list]:
    """{method: per-seed per-sample scores} and the samples' groups, which every run must share: the same samples
    (by id), so that the bootstrap pairs each sample with itself."""
    scores, groups, ids = {}, None, None
    for method, dirs in runs.items():
        scores[method] = []
        for run, summary in zip(dirs, summaries[method]):
            samples, samples_groups, samples_ids = run_scores(run, summary)
            if ids is not None and samples_ids != ids:
                raise ValueError(f"{run} evaluated other test samples than the first run (its eval_subset_seed, "
                                 f"max_eval_samples or data differ): its scores cannot be paired")
            groups, ids = samples_groups, samples_ids
            scores[method].append(samples)
    return scores, groups


def recovery_inputs(runs: list[Path], summaries: list[dict]) -> list[dict] | None:
    """Each seed's per-sample inputs of illusory vs real forgetting (cl_metrics.recovery_samples from the run's
    evaluation rows and recovery probes); None for a single stage (multi-task) or where a run has not been probed."""
    if len(summaries[0]["stage_names"]) < 2 or not all((run / "recovery.json").is_file() for run in runs):
        return None
    tasks, samples = summaries[0]["tasks"], []
    for run in runs:
        setting = json.loads((run / "recovery.json").read_text())  # the setting the probe ran with
        probes, controls = (read_probes(run, setting["setting"], start) for start in STARTS)
        samples.append(recovery_samples(eval_rows(run, tasks), probes, tasks, len(tasks), controls))
    return samples


def paired_recovery(mine: list[dict], theirs: list[dict], groups: list, resamples: int
                    ) -> dict[str, tuple[float, list[float], list[float]]]:
    """The illusory and the real part of forgetting of ``mine`` minus those of ``theirs`` (each a list of seeds'
    recovery_inputs, seed k paired with seed k): the difference, its 95 % interval and the per-seed differences.
    Both sides are split on one set of draws (the same samples and seeds, as paired_difference draws them), so

        Δillusory = mean_i illusory_i − mean_i illusory_i of the reference      (cl_metrics.forgetting_split)
        Δreal     = mean_i real_i − mean_i real_i of the reference,   Δillusory + Δreal = Δforgetting

    Here, not in cl_metrics beside paired_loss_bwt: cl_metrics is part of the evaluation code that keys the stored
    base rows (base_cache.SOURCE), which a comparison's figures do not change."""
    def split(bootstrap: Bootstrap, runs: list[dict]) -> dict:
        return bootstrap.recovery([run["scores"] for run in runs], [run["recovered"] for run in runs])

    bootstrap = Bootstrap(groups, resamples, seeds=len(mine))
    a, b = split(bootstrap, mine), split(bootstrap, theirs)
    one_draw = Bootstrap(groups, 1)  # a single seed's value: its point does not depend on the draws
    seeds = [(split(one_draw, [x]), split(one_draw, [y])) for x, y in zip(mine, theirs)]
    return {name: (float(a[key][0] - b[key][0]), interval(a[key][1] - b[key][1]),
                   [float(x[key][0] - y[key][0]) for x, y in seeds])
            for name, key in zip(SPLIT_PAIRED, ("forgetting_illusory", "forgetting_real"))}


def aggregate(summaries: list[dict], scores: list[list], losses: list | None, groups: list, resamples: int) -> dict:
    """One method over its seeds (their summaries, per-sample scores and method_losses): every figure and final score
    as [mean, std] and its 95 % interval (``_ci``)."""
    tasks = summaries[0]["tasks"]
    losses = [loss_figures(s, losses and losses[i]) for i, s in enumerate(summaries)]
    bootstrap = Bootstrap(groups, resamples, seeds=len(summaries))
    figures = bootstrap.figures(scores)
    _, final = bootstrap.final_scores(scores)
    gains = bootstrap.plasticity(scores)
    return dict(seeds=len(summaries), **{k: mean_std([s[k] for s in summaries]) for k in FIGURES},
                **{f"{k}_ci": None if figures[k] is None else interval(figures[k][1]) for k in FIGURES},
                **{k: mean_std([loss[k] for loss in losses]) for k in LOSS_METRICS},
                final_scores={t: mean_std([s["final_scores"][t] for s in summaries]) for t in tasks},
                final_ci={t: interval(final[:, j]) for j, t in enumerate(tasks)},
                plasticity=gains and {t: [float(gains[0][j]), interval(gains[1][:, j])] for j, t in enumerate(tasks)},
                trainable_params=summaries[0]["trainable_params"],
                train_wall_s=mean_std([s["train_wall_s"] for s in summaries]),
                peak_memory_mb=max(s["peak_memory_mb"] for s in summaries))


def paired_differences(scores: dict[str, list], groups: list, resamples: int, reference: str = REFERENCE,
                       losses: dict[str, list | None] | None = None,
                       recoveries: dict[str, list | None] | None = None) -> dict[str, dict]:
    """{entry: {figure: seeded_entry}}: each entry minus ``reference`` in PAIRED over the same samples and seeds
    (cl_metrics.paired_difference; illusory and real: paired_recovery of the two entries' ``recoveries``, the
    recovery_inputs; loss_BWT: cl_metrics.paired_loss_bwt of their ``losses``, the method_losses; None where either
    side has none); empty without ``reference`` among the entries."""
    if reference not in scores:
        return {}
    losses, recoveries = losses or {}, recoveries or {}
    table = {}
    for method, runs in scores.items():
        if method == reference:
            continue
        differences = paired_difference(runs, scores[reference], groups, resamples)
        table[method] = {k: differences[k] and seeded_entry(*differences[k]) for k in SCORE_PAIRED}
        pair = recoveries.get(method), recoveries.get(reference)
        split = paired_recovery(*pair, groups, resamples) if all(pair) else {}
        table[method] |= {k: seeded_entry(*split[k]) if split else None for k in SPLIT_PAIRED}
        pair = losses.get(method), losses.get(reference)
        table[method]["loss_BWT"] = seeded_entry(*paired_loss_bwt(*pair, groups, resamples)) if all(pair) else None
    return table


def seeded_entry(difference: float, ci: list[float], per_seed: list[float]) -> dict:
    """{difference, ci, per_seed, seed_ci, excludes_zero}: a paired difference, its bootstrap interval, its per-seed
    values and their Student-t interval (cl_metrics.seed_t_interval; None for one seed). It excludes 0 only where
    both intervals do: a bootstrap that resamples 3 seeds understates the spread between them."""
    seed_ci = seed_t_interval(per_seed)
    return dict(difference=difference, ci=ci, per_seed=per_seed, seed_ci=seed_ci,
                excludes_zero=all(math.isfinite(lo) and math.isfinite(hi) and not lo <= 0 <= hi  # NaN: unknown
                                  for lo, hi in (ci, seed_ci or ci)))


def difference_cell(entry: dict | None, ci_digits: int = 2) -> str:
    """``+0.100 [+0.02, +0.18]``, in bold where it excludes 0 (seeded_entry)."""
    if entry is None:
        return "–"
    text = format_score(entry["difference"], entry["ci"], sign=True, ci_digits=ci_digits)
    return f"**{text}**" if entry["excludes_zero"] else text


def recovery_cells(recovery: dict | None) -> list[str]:
    """The table's illusory and real forgetting [interval] and the old tasks flagged format_drift_only."""
    if recovery is None:
        return ["–"] * (len(RECOVERY) + 1)
    flagged = [task for task, entry in recovery["tasks"].items() if entry["format_drift_only"]]
    return [*(format_score(recovery[k], recovery[f"{k}_ci"]) for k in RECOVERY), ", ".join(flagged) or "none"]


def steps_per_task(config: dict, tasks: list[str]) -> dict[str, int] | None:
    """{task: optimizer steps of its stage} from a run's saved config (Config.task_steps), or None for a budget in
    epochs: what a table was trained with, whatever the preset meant when it was written (a preset can change)."""
    if config["max_steps"] <= 0:
        return None
    return {task: config.get("task_max_steps", {}).get(task, config["max_steps"]) for task in tasks}


def markdown(name: str, command: str, table: dict[str, dict], differences: dict[str, dict], tasks: list[str],
             seeds: list[str], reference: str = REFERENCE, stages: int | None = None,
             samples: str = TEST_SAMPLES, steps: dict[str, int] | None = None) -> str:
    head = ["method", *FIGURES, "illusory forgetting", "real forgetting", "illusory beyond control",
            "format drift only", *tasks, "final eval loss", "loss BWT", "trainable params", "train wall s", "peak MB"]
    signed = ("BWT", "FWT")
    lines = [f"# Method comparison `{name}`", "", f"Regenerate: `{command}`", "",
             *([f"Optimizer steps per stage (the runs' config): {', '.join(f'{t} {n}' for t, n in steps.items())}.",
                ""] if steps else []),
             f"Mean over {len(seeds)} seed(s) ({', '.join(seeds)}) [95 % bootstrap interval over the {samples} and"
             " seeds]; scores are the task metrics (0–1) after the last stage (LA: each task right after its own"
             " stage); final eval loss (mean ± std over seeds) is the mean token loss on the reference answers after"
             " the last stage and loss BWT its backward transfer (> 0: the loss on earlier tasks rose, i.e."
             " forgetting). Forgetting = illusory + real forgetting: the part of each old task's drop that a"
             " recovery probe (a few steps on a few of its training samples from the final checkpoint) brings back,"
             " and the rest; illusory beyond control: the part brought back beyond what the same probe teaches the"
             " base model (its control), so the illusory part lies between it and the illusory column; format drift"
             " only: old tasks whose format compliance fell while their eval loss held (– : not probed).", "",
             *([f"Cut short: every figure is that of the runs' first {stages} stages ({' → '.join(tasks)}), rebuilt"
                " from their logs; recovery not shown.", ""] if stages is not None else []),
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in table.items():
        cells = [method, *(format_score(row[k][0], row[f"{k}_ci"], k in signed) for k in FIGURES),
                 *recovery_cells(row["recovery"]),
                 *(format_score(row["final_scores"][t][0], row["final_ci"][t]) for t in tasks),
                 *(cell(row[k]) for k in LOSS_METRICS),
                 f"{row['trainable_params']:,}", f"{row['train_wall_s'][0]:.0f}", f"{row['peak_memory_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += plasticity_lines(table, tasks, samples)
    if differences:
        lines += difference_lines(differences, reference, samples)
    return "\n".join(lines) + "\n"


def difference_lines(differences: dict[str, dict], reference: str, samples: str = TEST_SAMPLES) -> list[str]:
    """The table of paired differences from the reference and, over several seeds, their per-seed values and t
    intervals."""
    several = any(len(entry["per_seed"]) > 1 for row in differences.values() for entry in row.values() if entry)
    split_note = (" Δillusory, Δreal: the two parts of Δforgetting, the drop a recovery probe brings back and the"
                  " rest (they sum to it)." if any(row["illusory"] for row in differences.values()) else "")
    loss_note = (" Δloss_BWT: the difference in how much the token loss on the old tasks' references rose from their"
                 " own stage to the last (> 0: more forgetting of the reference answers; on the samples both stages"
                 " scored)." if any(row["loss_BWT"] for row in differences.values()) else "")
    head = ["method", *(f"Δ{k}" for k in PAIRED)]

    def rows(cell) -> list[str]:
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                *("| " + " | ".join([method, *(cell(row[k], 3 if k == "loss_BWT" else 2) for k in PAIRED)]) + " |"
                  for method, row in differences.items())]
    lines = ["", f"## Paired differences from `{reference}`", "",
             f"Method minus {reference} on the same {samples} and seeds, mean over seeds [95 % paired bootstrap"
             " interval]; **bold**: the interval excludes 0"
             + (", and so does the Student-t interval over the seeds below (which the bootstrap over few seeds"
                " understates)" if several else "") + f".{split_note}{loss_note}", "", *rows(difference_cell)]
    if not several:  # one seed: its values are the table's
        return lines
    return lines + ["", "Per seed, in the order of the seeds [95 % Student-t interval over the seeds]:", "",
                    *rows(seed_cell)]


def seed_cell(entry: dict | None, digits: int) -> str:
    """``+0.04, +0.07, +0.07 [+0.02, +0.10]``: per-seed values and their t interval (none for one seed)."""
    if entry is None:
        return "–"
    values = ", ".join(f"{v:+.{digits}f}" for v in entry["per_seed"])
    return values if entry["seed_ci"] is None else \
        f"{values} [{entry['seed_ci'][0]:+.{digits}f}, {entry['seed_ci'][1]:+.{digits}f}]"


def plasticity_lines(table: dict[str, dict], tasks: list[str], samples: str = TEST_SAMPLES) -> list[str]:
    """The table of each task's gain in its own stage, R[i][i] − base[i], per method (none for multi-task)."""
    rows = [(method, row["plasticity"]) for method, row in table.items() if row["plasticity"]]
    if not rows:
        return []
    return ["", "## Plasticity", "", "Each task's gain in its own stage, R[i][i] − base[i], mean over seeds [95 % "
            f"bootstrap interval over the {samples} and seeds].", "", "| method | " + " | ".join(tasks) + " |",
            "|" + "---|" * (len(tasks) + 1),
            *("| " + " | ".join([method, *(format_score(*gains[t], sign=True) for t in tasks)]) + " |"
              for method, gains in rows)]


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """``LABEL:field=value,field=value`` -> (LABEL, fields); the method is ds_lora_slsd unless a field names one. A
    piece with no ``=`` continues the value before it: ``task_max_steps=T2_math:120,T3_code:24`` is one field."""
    label, colon, spec = text.partition(":")
    items: list[str] = []
    for item in filter(None, spec.split(",")):
        if "=" in item or not items:
            items.append(item)
        else:
            items[-1] += "," + item
    pairs = [item.partition("=") for item in items]
    if not label or not colon or any(not eq or not key for key, eq, _ in pairs):
        raise ValueError(f"--variant {text!r}: expected LABEL:field=value,field=value")
    return label, dict(dict(method=VARIANT_METHOD), **{key.strip(): value.strip() for key, _, value in pairs})


def entries_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, dict[str, str]]:
    """{label: its config fields}: one per --methods name, then one per --variant."""
    methods = args.methods.split(",") if args.methods else ([] if args.variant else METHOD_NAMES)
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        parser.error(f"unknown method {unknown[0]} (choose from {', '.join(METHOD_NAMES)})")
    entries = {m: dict(method=m) for m in methods}
    for text in args.variant:
        try:
            label, fields = parse_variant(text)
        except ValueError as err:
            parser.error(str(err))
        if label in entries or label in METHOD_NAMES:  # a method's name labels that method's runs (--runs_of)
            parser.error(f"--variant {label}: the label is already taken")
        entries[label] = fields
    if args.reference not in entries:
        parser.error(f"--reference {args.reference} is not among the entries ({', '.join(entries)})")
    return entries


def comparison_rows(table: dict[str, dict]) -> dict[str, dict]:
    """The table's entries as plot_comparison draws them: each figure's and final score's mean over the seeds, with
    the interval the table gives it (over the test samples and the seeds)."""
    return {label: dict(**{k: row[k][0] for k in FIGURES}, **{f"{k}_ci": row[f"{k}_ci"] for k in FIGURES},
                        final_scores={t: v[0] for t, v in row["final_scores"].items()}, final_ci=row["final_ci"])
            for label, row in table.items()}


def plot_paired(differences: dict[str, dict], reference: str, out: Path) -> Path | None:
    """Each entry's paired difference from the reference in every PAIRED figure: its 95 % bootstrap interval and,
    over several seeds, its t interval over the seeds below it (grey); a filled marker where both exclude 0."""
    if not differences:
        return None
    import matplotlib.pyplot as plt
    from plot_loss import error_bars

    labels = list(differences)
    fig, axes = plt.subplots(1, len(PAIRED), figsize=(3.2 * len(PAIRED), 0.45 * len(labels) + 1.6), sharey=True)
    for ax, key in zip(axes, PAIRED):
        rows = [(i, differences[label][key]) for i, label in enumerate(labels) if differences[label][key]]
        for i, entry in rows:
            ax.errorbar([entry["difference"]], [i], xerr=error_bars([entry["difference"]], [entry["ci"]]), fmt="o",
                        capsize=3, color="C0", mfc="C0" if entry["excludes_zero"] else "white")
            if entry["seed_ci"] is not None:
                ax.errorbar([entry["difference"]], [i + 0.25], fmt="none", capsize=2, color="grey", lw=0.9,
                            xerr=error_bars([entry["difference"]], [entry["seed_ci"]]))
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_title(f"Δ{key} vs {reference}")
    axes[0].set_yticks(range(len(labels)), labels)
    axes[0].invert_yaxis()
    several = any(entry and entry["seed_ci"] for row in differences.values() for entry in row.values())
    fig.text(0.5, -0.02, "blue: 95 % paired bootstrap interval; " + ("grey: 95 % t interval over the seeds; filled: "
             "both exclude 0" if several else "filled: it excludes 0"), ha="center", va="top", fontsize=9)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def stages_of(run: Path) -> int:
    """How many stages a finished run trained (multi-task: 1)."""
    return len(json.loads((run / "summary.json").read_text())["stage_names"])


def finished(run: Path, config) -> bool:
    """Whether ``run`` (logs/<run>) is a finished run of exactly ``config``: the config it saved is this one and its
    summary was written after its last evaluation and stage record. Such a run is reused without starting its
    process (which would load the model and every stage's state only to write the same summary again)."""
    saved, summary = run / "config.json", run / "summary.json"
    logs = [run / "eval.jsonl", run / "stages.jsonl"]
    return (saved.is_file() and summary.is_file() and all(f.is_file() for f in logs)
            and not config_changes(saved, config)
            and summary.stat().st_mtime >= max(f.stat().st_mtime for f in logs))


def probed(run: Path, probe: dict) -> bool:
    """Whether ``run``'s recovery report is of this probe setting (recovery_probe.py's: the run's config under the
    probe's fields), newer than its evaluations and probe rows, and every task whose score fell has its probe and
    control rows of that setting in recovery.jsonl (what the table reads): then the probe is not started again."""
    report = run / "recovery.json"
    if not report.is_file() or report.stat().st_mtime < max(
            (run / name).stat().st_mtime for name in ("eval.jsonl", "recovery.jsonl") if (run / name).is_file()):
        return False  # a report older than the evaluations or than a probe row (a probe stopped before its report)
    setting = config_digest(build_config(config_file=str(run / "config.json"), overrides=probe))
    stored, rows = json.loads(report.read_text()), [read_probes(run, setting, start) for start in STARTS]
    return stored.get("setting") == setting and all(t in r for r in rows for t, e in stored["tasks"].items()
                                                    if e["drop"] > 0)


def restore_run(archive: Path | None, run: Path) -> None:
    """Unpack ``archive``/<run>.tar.gz where the run's folder is absent: logs/ is not kept from one machine to the
    next, the archive (committed) is, so a study grows across sessions instead of starting again."""
    packed = archive / f"{run.name}.tar.gz" if archive else None
    if packed and packed.is_file() and not run.exists():
        with tarfile.open(packed) as tar:
            tar.extractall(run.parent, filter="data")  # the file times too, which finished() and probed() read


def archive_run(archive: Path | None, run: Path, replace: bool) -> None:
    """A finished run's folder, its logs, evaluations and probes, as ``archive``/<run>.tar.gz, written whole;
    ``replace``: also where one is there (the run was redone, or probed since)."""
    packed = archive / f"{run.name}.tar.gz" if archive else None
    if packed is None or (packed.is_file() and not replace):
        return
    archive.mkdir(parents=True, exist_ok=True)
    tmp = packed.with_name(f"{packed.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(run, arcname=run.name)
    tmp.replace(packed)


def run_fields(entries: dict[str, dict[str, str]], label: str, seed: str, runs_of: str,
               budget: dict) -> tuple[str, dict[str, str]]:
    """The folder name of an (entry, seed) run and the config fields it is run with."""
    run = f"cmp_{runs_of}_{label}_s{seed}"
    return run, dict(budget, **entries[label], seed=seed, run_name=run)


def changed_finished_runs(entries: dict[str, dict[str, str]], seeds: list[str], runs_of: str, preset: str,
                          budget: dict, log_root: Path) -> list[str]:
    """One line per finished run (it wrote summary.json) that this comparison would redo because its saved config
    differs (a changed preset or code default, a field not pinned): the fields that differ, saved -> now."""
    lines = []
    for seed in seeds:
        for label in entries:
            run, fields = run_fields(entries, label, seed, runs_of, budget)
            saved = log_root / run / "config.json"
            changes = config_changes(saved, build_config(preset, overrides=fields))
            if changes and (log_root / run / "summary.json").is_file():
                lines.append(f"{log_root / run}: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return lines


def run_entries(entries: dict[str, dict[str, str]], seeds: list[str], runs_of: str, preset: str, budget: dict,
                probe: dict, jobs: int, no_recovery: bool, log_root: Path, archive: Path | None) -> None:
    """Every (entry, seed) run in its own process, ``jobs`` at a time, then its recovery probe; finished ones are
    reused, interrupted ones resume; each finished one is archived."""
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // jobs)))

    def run_one(label: str, seed: str) -> None:
        run, fields = run_fields(entries, label, seed, runs_of, budget)
        if finished(log_root / run, build_config(preset, overrides=fields)) and \
                (no_recovery or probed(log_root / run, probe) or stages_of(log_root / run) == 1):
            say(f"{label} seed {seed}: finished, reused ({log_root / run})")
            archive_run(archive, log_root / run, replace=False)
            return
        argv_run = ["--preset", preset, "--no_plots", "--overwrite",  # a run of another config is redone
                    *[a for k, v in fields.items() for a in (f"--{k}", v)]]
        say(f"{label} seed {seed}: train_slsd_seq.py {' '.join(argv_run)}")
        command_run = [sys.executable, str(ROOT / "train_slsd_seq.py"), *argv_run]
        output = None if jobs == 1 else log_root / f"cmp_{runs_of}_outputs" / f"{run}.log"  # side by side: a file each
        if output is not None:
            output.parent.mkdir(parents=True, exist_ok=True)
        with output.open("w") if output is not None else contextlib.nullcontext() as out:
            def call(command: list[str], what: str) -> None:
                done = subprocess.run(command, cwd=ROOT, env=env, stdout=out,
                                      stderr=None if out is None else subprocess.STDOUT)
                if done.returncode:
                    raise RuntimeError(f"{run} {what} failed (exit {done.returncode})"
                                       + (f"; its output: {output}" if output else ""))

            call(command_run, "run")
            archive_run(archive, log_root / run, replace=True)  # kept before its probe: a probe cut short resumes
            if not no_recovery and stages_of(log_root / run) > 1:  # one stage (multi-task): nothing to forget
                say(f"{label} seed {seed}: recovery_probe.py --run {log_root / run}")
                call([sys.executable, str(ROOT / "recovery_probe.py"), "--run", str(log_root / run),
                      *[a for k, v in probe.items() for a in (f"--{k}", v)]], "recovery probe")
                archive_run(archive, log_root / run, replace=True)  # with its probe
        say(f"{label} seed {seed}: done")

    with ThreadPoolExecutor(jobs) as pool:  # seed-major: every entry's first seed comes first
        futures = [pool.submit(run_one, label, s) for s in seeds for label in entries]
        try:
            for future in futures:
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run stops the comparison (the running ones finish)
            raise


def build_parser() -> argparse.ArgumentParser:
    """The command line; budget overrides (--field value) are left over and parsed by ``parse_overrides``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the demo preset on T1_general -> T2_math, 16 samples per task, 1 seed")
    parser.add_argument("--methods", default=None, help="comma-separated --method names (default: all of them, "
                                                        "or none when --variant is given)")
    parser.add_argument("--variant", action="append", default=[], help="LABEL:field=value,field=value (repeatable)")
    parser.add_argument("--reference", default=REFERENCE, help="the entry every other one is paired with")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (default: 42,43,44; --quick: 42)")
    parser.add_argument("--name", default=None, help="results name (default: quick or the preset's name)")
    parser.add_argument("--runs_of", default=None, help="the comparison whose run folders to use (default: --name): "
                                                       "entries it already ran are reused, not run again")
    parser.add_argument("--preset", default=None, help="the budget (default: study; --quick: demo)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each with cores / jobs threads")
    parser.add_argument("--results_dir", default=str(Path(__file__).parent / "results"), help="where the table goes")
    parser.add_argument("--stages", type=int, default=None,
                        help="run nothing: the table of the runs' first K stages (the sequence of their first K "
                             "tasks) from their logs as they are, for a comparison cut short (no recovery columns)")
    parser.add_argument("--redo_changed", action="store_true", help="redo finished runs whose saved config differs "
                                                                    "from this one (without it the comparison stops "
                                                                    "and names them)")
    parser.add_argument("--archive_dir", default=str(ROOT / "bench" / "runs"),
                        help="where each finished run's folder is kept as <run>.tar.gz, and unpacked from where logs/ "
                             "lacks it (commit it: logs/ is not kept); empty: none")
    parser.add_argument("--no_recovery", action="store_true", help="no recovery probe after each run (the table's "
                                                                   "illusory / real forgetting stay empty)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    preset = args.preset or ("demo" if args.quick else "study")
    budget = dict(QUICK if args.quick else {}, **parse_overrides(rest))
    probe = {k: budget.pop(k) for k in PROBE_FIELDS if k in budget}
    entries = entries_from(args, parser)
    for fields in entries.values():  # a bad field or value stops here in one line, before any run
        build_config(preset, overrides=dict(budget, **fields))
    seeds = (args.seeds or ("42" if args.quick else "42,43,44")).split(",")
    name = args.name or ("quick" if args.quick else preset)
    runs_of = args.runs_of or name  # run folders logs/cmp_<runs_of>_<label>_s<seed>
    started = time.perf_counter()
    log_root = ROOT / budget.get("log_dir", "logs")
    archive = Path(args.archive_dir) if args.archive_dir else None
    runs = {label: [log_root / run_fields(entries, label, s, runs_of, budget)[0] for s in seeds] for label in entries}
    for run in (run for dirs in runs.values() for run in dirs):
        restore_run(archive, run)
    changed = changed_finished_runs(entries, seeds, runs_of, preset, budget, log_root) if args.stages is None else []
    if changed and not args.redo_changed:
        parser.error(f"{len(changed)} finished run(s) hold another config and would be redone (--redo_changed to "
                     f"redo them; or pin the fields on the command line, or choose another --name): {changed[0]}")
    if args.stages is None:
        run_entries(entries, seeds, runs_of, preset, budget, probe, args.jobs, args.no_recovery, log_root,
                    archive)
    summaries = {label: [read_summary(d, args.stages) for d in dirs] for label, dirs in runs.items()}
    scores, groups = method_scores(runs, summaries)
    first = next(iter(runs.values()))[0]
    first_config = json.loads((first / "config.json").read_text())
    resamples = first_config["bootstrap_resamples"]
    samples = f"{SPLIT_NAMES.get(first_config['eval_split'], first_config['eval_split'])} samples"
    losses = method_losses(runs, summaries)
    tasks = summaries[next(iter(entries))][0]["tasks"]
    recoveries = {label: None if args.stages is not None else recovery_inputs(runs[label], summaries[label])
                  for label in entries}
    table = {label: dict(aggregate(summaries[label], scores[label], losses[label], groups, resamples),
                         recovery=recoveries[label] and recovery_report(recoveries[label], tasks, resamples))
             for label in entries}
    differences = paired_differences(scores, groups, resamples, args.reference, losses, recoveries)
    out = Path(args.results_dir)
    out.mkdir(exist_ok=True)
    command = shlex.join(["python", "bench/compare_methods.py", *(sys.argv[1:] if argv is None else argv)])  # '' kept
    steps = steps_per_task(first_config, tasks)
    text = markdown(name, command, table, differences, tasks, seeds, args.reference, args.stages, samples, steps)
    (out / f"{name}.md").write_text(text)
    summary = dict(name=name, command=command, preset=preset, budget=budget, steps_per_task=steps, entries=entries,
                   seeds=seeds, stages=args.stages,
                   table=table, reference=args.reference, paired_differences=differences)
    (out / f"{name}.json").write_text(json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n")
    plot_comparison(comparison_rows(table), [out / f"{name}_comparison.png"],
                    title=f"{name}: seed {seeds[0]}, 95 % intervals over the {samples}" if len(seeds) == 1 else
                    f"{name}: mean over seeds {', '.join(seeds)}; 95 % intervals over the {samples} and the seeds")
    plot_paired(differences, args.reference, out / f"{name}_paired.png")
    print(text)
    result = dict(bench="compare_methods", name=name, wall_s=round(time.perf_counter() - started, 1),
                  **{k: {m: row[k][0] for m, row in table.items()} for k in (*SCORE_PAIRED, "loss_BWT")},
                  **{k: {m: row["recovery"] and row["recovery"][k] for m, row in table.items()} for k in RECOVERY})
    print(json.dumps(json_ready(result), allow_nan=False))
    return result


if __name__ == "__main__":
    from cli import run as run_cli  # data and config errors: one line on stderr, exit 2

    run_cli(main, RuntimeError)  # a failed run (its own one-line error is above)
