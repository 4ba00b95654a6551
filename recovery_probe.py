"""Recovery probe: how much of a finished run's forgetting is illusory (the knowledge is still there) and how much real.

    python recovery_probe.py --run logs/<run> [--tasks T1_general,T2_math] [--<config field> value ...]

A task whose score fell by the end of a sequence may have lost what it knew (real forgetting) or only the alignment
that turns that knowledge into the expected answers: format, style, the task's conventions (spurious or illusory
forgetting). The recovery measurement of the spurious-forgetting literature (Zheng et al., 2025, "Spurious
Forgetting in Continual Learning of Language Models") tells them apart: knowledge lost does not come back in a
handful of updates, alignment does. For each old task i < T-1 (the last task cannot have been forgotten):

    from the final checkpoint, recovery_steps optimizer steps on the first recovery_samples samples of task i's
    training split; then task i is evaluated again on the very samples the run evaluated (with
    early_eval_samples: on their fixed subset, the samples every evaluation of the task scored)  ->  Rec[i]

and its drop d_i = max_{i≤l<T-1} R[l][i] − R[T-1][i] (what the run's `forgetting` averages) splits into

    illusory_i = clip(Rec[i] − R[T-1][i], 0, max(d_i, 0))        real_i = d_i − illusory_i

so forgetting = mean illusory + mean real exactly, each with a joint 95 % bootstrap interval over the evaluated
samples (cl_metrics.forgetting_split). The evaluation gives a second reading without any training
(cl_metrics.Bootstrap.drift): per old task the change of its eval loss on the references and of its format
compliance from its own stage to the last, paired sample by sample; ``format_drift_only`` flags a format that fell
(its interval below 0) while the loss held (its interval below LOSS_TOLERANCE, 0.02 nats per token: any rise smaller).

The probe: the run's method is rebuilt from logs/<run>/config.json (methods.make_method, as evaluate.py does; fields
given on the command line override it) and the final stage's checkpoint is loaded afresh for every task, so no probe
starts from another one's weights. Training is training.train_stage with the method's own optimizer, started
empty (GORP's moments, carried from stage to stage, are dropped: the control's optimizer starts empty too), its loss
on plain batches of the task (the task loss: no replay, distillation, penalty or per-step term) and its after_step
(I-LoRA's evaluated slow learner follows the fast one), at constant rates (no warm-up, no decay): every learning
rate at its Config default (the method's own) x recovery_lr_scale, whatever the run trained at (probe_rates), so
the same instrument reads every run; a task evaluated with its own fast branch (fast_mode per_task) trains that branch.
Seeded with config.seed + the task's index: the same run always gives the same probe. Evaluation is method.evaluate,
the run's own inference rule.

Which tasks: by default every old task whose score fell (d_i > 0); ``--tasks`` names them instead. The report reads
every probe stored for the run's setting, so tasks an earlier ``--tasks`` probed stay in it. A task not probed keeps
its final score as Rec (gain 0: whatever drop a resample draws counts as real).

The control: the probe trains on the task, so it can also teach what was never known, and illusory_i is an upper
bound. Each probed task is therefore probed a second time, the same way (steps, samples, seed, optimizer), from the
base model (the run's method built afresh: its adapters contribute 0) -> Ctrl[i], and the part brought back beyond
what the probe teaches from scratch,
    illusory_controlled_i = clip(gain_i − max(Ctrl[i] − base[i], 0), 0, max(d_i, 0))
(cl_metrics.forgetting_split), is reported beside it: the illusory part lies between the two. With
``shared_base_dir`` the control is stored there and reused by every run that would compute the same one
(base_cache.control_key: runs that differ only in SLSD's or the schedule's fields, or in their learning rates,
share it). The control is also what chose recovery_lr_scale: on validation, at the study's 40x rates five steps
lifted the base model's T3 from 0.06 to 0.36, at 1x (the default) they taught nothing (bench/RESULTS.md).

Writes logs/<run>/recovery.jsonl (one row per probed task and start, ``final`` or ``base``; resumable: a probe that
has a row of the same setting, every field the probe runs with, is not run again),
recovery/<task>_<start>_train_loss.jsonl, recovery/<task>_<start>_<setting>_samples.jsonl (the probe's answers:
rescore.py scores them again after a metric fix), recovery.json (the split, its controlled reading and the drift
with their intervals) and recovery.png (per task: best, final, after-probe and control scores; the drop split into its
illusory and real parts, and the illusory part beyond the control).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
from transformers import set_seed

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from base_cache import control_key, control_path, write_whole  # noqa: E402
from cl_metrics import (best_earlier, format_score, group_mean, laid_out, recovery_report,  # noqa: E402
                        recovery_samples, run_samples, shared_samples)
from configs.base_config import (PROBE_FIELDS, PROBE_LR_FIELDS, Config, ConfigError,  # noqa: E402
                                 add_config_arguments, config_digest, field_help, parse_config)
from evaluation import select_samples, subset_positions  # noqa: E402
from methods import make_method, method_class  # noqa: E402
from methods.base import Method  # noqa: E402
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device  # noqa: E402
from plot_loss import error_bars  # noqa: E402
from sequential import Sequence, scored_ids  # noqa: E402
from training import train_stage  # noqa: E402
from utils_data import SFTDataset, json_ready, make_loader, read_rows, read_task, task_name, write_jsonl  # noqa: E402

STARTS = ("final", "base")  # where a task's probes start: the run's final checkpoint, and the base model (control)


def say(line: str) -> None:
    print(f"[recovery] {line}", flush=True)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, object]:
    """(arguments, the run's config under the command line's fields)."""
    parser = argparse.ArgumentParser(description=__doc__, epilog=field_help(), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the run's log folder (logs/<run>)")
    parser.add_argument("--tasks", default=None, help="comma-separated old tasks to probe (default: every old task "
                                                      "whose score fell)")
    add_config_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    saved = Path(parser.parse_known_args(argv)[0].run) / "config.json"
    if not saved.is_file():
        raise FileNotFoundError(f"no run at {saved.parent}: {saved} is missing")
    return parse_config(parser, [*argv, "--config", str(saved)])


def eval_rows(run: Path, tasks: list[str]) -> dict:
    """The run's evaluation rows {(stage, task): row}; every task must have been evaluated, with its per-sample
    losses and format, after the last stage."""
    rows = {(r["stage"], r["task"]): r for r in read_rows(run / "eval.jsonl")}
    last = len(tasks) - 1
    missing = [t for t in tasks if (last, t) not in rows]
    if last < 1 or missing:
        raise FileNotFoundError(f"{run}/eval.jsonl has no evaluation of {', '.join(missing or tasks)} after a "
                                f"stage {last + 1} of {len(tasks)} tasks: the run is unfinished or has one stage "
                                "(nothing to forget)")
    if any("sample_nll" not in rows[(last, t)] for t in tasks):
        raise FileNotFoundError(f"{run}/eval.jsonl predates the per-sample losses (sample_nll): delete it and re-run "
                                "the run's command to re-evaluate (finished stages are loaded, not retrained)")
    return rows


def read_probes(run: Path, setting: str, start: str = "final") -> dict[str, dict]:
    """The run's recovery.jsonl rows of this probe setting (``config_digest`` of every field the probe ran with: the
    run's config under the command line's fields) that start from ``start`` (``final``: the final checkpoint, the
    probe; ``base``: the base model, its control), {task: row}; rows of another setting stay unused."""
    return {r["task"]: r for r in read_rows(run / "recovery.jsonl")
            if r.get("setting") == setting and r.get("start", "final") == start}


def probe_task(method: Method, task: str, index: int, checkpoint: Path | None, records: list[dict],
               positions: list[int] | None, steps: int, log_path: Path) -> tuple[dict, list[dict]]:
    """Task ``task``'s evaluation (summary, per-sample answers) on ``records`` (``positions``: those of them only)
    after ``steps`` recovery steps from ``checkpoint`` (None: from ``method`` as it is, a freshly built one for the
    control)."""
    config = method.config
    if checkpoint is not None:
        method.load(checkpoint)  # afresh for every task: the final checkpoint, never an earlier probe's weights
    method.drop_carried_optimizer_state()  # an empty optimizer, as the control's: not the last task's moments (GORP)
    key = method.eval_key(task)
    if key in method.dslora.fast_names:  # a task scored with a fast branch of its own trains that branch
        method.dslora.set_active_fast(key)
    train_records, problems = read_task(task, "train", config.data_dir, config.skip_bad_lines, config.recovery_samples)
    train = SFTDataset(train_records, method.tokenizer, config.max_seq_len, task, problems)
    set_seed(config.seed + index)
    loader = make_loader(train, config.batch_size, method.tokenizer.pad_token_id, shuffle=True,
                         seed=config.seed + index, group_by_length=config.group_by_length)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    train_stage(method.model, method.dslora, loader, dataclasses.replace(config, lr_schedule="constant", warmup_ratio=0.0),
                steps, log_path, method.device, method.amp_dtype, desc=f"recovery {task_name(task)}",
                optimizer_factory=method.optimizer, loss_fn=method.loss,
                on_step=lambda step, _: method.after_step(step))
    return method.evaluate({task: records}, "recovery", positions=positions and {task: positions})[task]


def headline(report: dict) -> str:
    """``forgetting 0.250 [0.00, 0.50] = illusory ... + real ...; illusory beyond the control ...``."""
    line = " = ".join([f"forgetting {format_score(report['forgetting'], report['forgetting_ci'])}",
                       " + ".join(f"{key} {format_score(report[f'forgetting_{key}'], report[f'forgetting_{key}_ci'])}"
                                  for key in ("illusory", "real"))])
    controlled = report.get("forgetting_illusory_controlled")
    return line if controlled is None else \
        f"{line}; illusory beyond the control {format_score(controlled, report['forgetting_illusory_controlled_ci'])}"


def plot_recovery(report: dict, path: Path, title: str) -> Path:
    """Per old task: its best, final and after-probe scores with their intervals (left), and its drop split into
    the illusory and real parts, then their means over the old tasks (right); * marks format_drift_only."""
    tasks = report["tasks"]
    names = [t + ("*" if e["format_drift_only"] else "") for t, e in tasks.items()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(5 + 2.4 * len(tasks), 4), layout="constrained")
    bars = [("best", "best before the last stage"), ("final", "after the last stage"),
            ("recovered", "after the recovery probe"), ("control", "base model after the same probe (control)")]
    bars = [(key, label) for key, label in bars if all(key in e for e in tasks.values())]
    width = 0.8 / len(bars)
    for k, (key, label) in enumerate(bars):
        drawn = [key != "control" or e["probed"] for e in tasks.values()]  # a task not probed has no control
        values = [e[key] if d else np.nan for e, d in zip(tasks.values(), drawn)]
        intervals = [e[f"{key}_ci"] if d else None for e, d in zip(tasks.values(), drawn)]
        left.bar(np.arange(len(tasks)) + (k - (len(bars) - 1) / 2) * width, values, width, label=label, capsize=2,
                 yerr=error_bars(values, intervals))
    left.set_xticks(range(len(tasks)), names, rotation=30, fontsize=8)
    left.set_ylabel("score [95 % interval]")
    left.legend(fontsize=7)
    parts = [key for key in ("illusory", "illusory_controlled", "real") if report.get(f"forgetting_{key}") is not None]
    width = 0.8 / len(parts)
    for k, key in enumerate(parts):
        values = [e[key] for e in tasks.values()] + [report[f"forgetting_{key}"]]
        intervals = [e[f"{key}_ci"] for e in tasks.values()] + [report[f"forgetting_{key}_ci"]]
        label = "illusory beyond the control" if key == "illusory_controlled" else f"{key} forgetting"
        right.bar(np.arange(len(values)) + (k - (len(parts) - 1) / 2) * width, values, width, label=label,
                  capsize=2, yerr=error_bars(values, intervals))
    right.axhline(0, color="grey", linewidth=0.5)
    right.set_xticks(range(len(tasks) + 1), [*names, "mean"], rotation=30, fontsize=8)
    right.set_ylabel("drop in score [95 % interval]")
    right.set_xlabel("* format fell while the eval loss held (format_drift_only)", fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    args, config = parse(argv)
    run, tasks = Path(args.run), config.tasks
    rows = eval_rows(run, tasks)
    scores, groups = run_samples(rows, tasks, len(tasks))  # each task's evaluations on the samples all of them scored
    R = np.stack([group_mean(shared_samples(s), g) for s, g in zip(scores, groups)], -1)[1:]
    best = best_earlier(R)
    drop = dict(zip(tasks, best - R[-1, :-1]))
    chosen = args.tasks.split(",") if args.tasks else [t for t, d in drop.items() if d > 0]
    if set(chosen) - set(drop):
        raise ConfigError(f"--tasks: {', '.join(sorted(set(chosen) - set(drop)))} is not an old task of the run "
                          f"(old tasks: {', '.join(drop)})")
    probes_path = run / "recovery.jsonl"
    setting = config_digest(config)
    probes = {start: read_probes(run, setting, start) for start in STARTS}
    todo = [(task, start) for task in chosen for start in STARTS if task not in probes[start]]
    checkpoint = Path(config.checkpoint_dir) / run.name / f"stage_{len(tasks) - 1}_{Sequence.stage_name(tasks[-1:])}"
    say(f"{run.name}: {len(chosen)} task(s) to probe ({', '.join(chosen) or 'no old task fell'}), each from the final "
        f"checkpoint and from the base model (its control); {len(chosen) * len(STARTS) - len(todo)} probe(s) already "
        f"in {probes_path.name}")
    if any(start == "final" for _, start in todo) and not (checkpoint / "adapters.safetensors").is_file():
        raise FileNotFoundError(f"no final checkpoint {checkpoint} (adapters.safetensors): the probe starts from it")
    for task, start in todo:
        probes[start][task] = probe_row(config, run, rows, task, checkpoint if start == "final" else None, setting)
        with probes_path.open("a") as handle:
            handle.write(json.dumps(json_ready(probes[start][task]), allow_nan=False) + "\n")
        index = tasks.index(task)
        reference = dict(final=f"best {best[index]:.3f}, final {R[-1, index]:.3f}",
                         base=f"base {rows[(-1, task)]['score']:.3f}")[start]
        say(f"{task}: score {reference}, after the probe from the {start} {probes[start][task]['score']:.3f}")
    return write_report(run, config, rows, probes["final"], probes["base"])


def probe_row(config, run: Path, rows: dict, task: str, origin: Path | None, setting: str) -> dict:
    """The recovery.jsonl row of ``task``'s probe from ``origin`` (the final checkpoint; None: from the base model,
    the control, reused from shared_base_dir when stored there), on the samples the run's rows of it scored."""
    records = select_samples(read_task(task, config.eval_split, config.data_dir, config.skip_bad_lines)[0],
                             config.max_eval_samples, config.eval_subset_seed)  # the samples the run evaluated
    # with early_eval_samples, only the fixed subset: the split reads the probe where every evaluation scored
    positions = subset_positions(records, config.early_eval_samples, config.eval_subset_seed) \
        if config.early_eval_samples else None
    final_row = rows[(len(config.tasks) - 1, task)]
    if [r["id"] for r in records] != scored_ids(run, final_row):  # before any training: the run's very samples
        raise ConfigError(f"{task}: the probe would evaluate other samples than the run (an override of "
                          "max_eval_samples, eval_subset_seed, eval_split or data_dir?)")
    start = "final" if origin else "base"
    say(f"{task}: {config.recovery_steps} steps on {config.recovery_samples} training samples from "
        f"{origin.name if origin else 'the base model (control)'}")
    shared = control_path(config, task, control_of(config, task, records, positions)) \
        if origin is None and config.shared_base_dir else None
    if shared is not None and shared.is_file():
        stored = json.loads(shared.read_text())
        summary, samples = stored["summary"], stored["samples"]
        say(f"{task}: the control is reused from {shared}")
    else:
        summary, samples = probe_task(fresh_method(config), task, config.tasks.index(task), origin, records,
                                      positions, config.recovery_steps,
                                      run / "recovery" / f"{task_name(task)}_{start}_train_loss.jsonl")
        gc.collect()  # the probe's model (and the adapters' hooks that refer back to it) before the next loads
        if shared is not None:
            write_whole(shared, dict(summary=summary, samples=samples))
    write_jsonl(probe_answers(run, task, start, setting), samples)  # what rescore.py scores again after a metric fix
    # laid out as the run's rows: NaN (null in the file) where the probe did not score
    summary["sample_scores"] = laid_out(summary["sample_scores"], positions, len(records))
    return dict(task=task, start=start, checkpoint=str(origin or "base"), setting=setting,
                **{k: getattr(config, k) for k in PROBE_FIELDS}, **summary)


def probe_answers(run: Path, task: str, start: str, setting: str) -> Path:
    """The answers of ``task``'s probe from ``start`` (``final`` or ``base``) under the probe ``setting`` (the row's:
    one file per recovery.jsonl row): a line per scored sample, as the run's own samples_*.jsonl."""
    return run / "recovery" / f"{task_name(task)}_{start}_{setting}_samples.jsonl"


def control_of(config, task: str, records: list[dict], positions: list[int] | None) -> str:
    """The key of ``task``'s control under ``config`` (base_cache.control_key): with the samples it trains on and
    scores, and the device and autocast it runs with."""
    device = pick_device(config)
    train = read_task(task, "train", config.data_dir, config.skip_bad_lines, config.recovery_samples)[0]
    return control_key(probe_rates(config), method_class(config.method).__name__, task, [records, positions, train],
                       dict(device=device.type, autocast=str(autocast_dtype(config, device))))


def probe_rates(config) -> Config:
    """``config`` with every learning rate at its Config default x recovery_lr_scale: the rates the probe trains at.
    A probe at a run's own budget rates (e.g. 40x) teaches a task from scratch (its control shows it), and
    runs trained at different rates would be read by different instruments."""
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    return dataclasses.replace(config, **{name: defaults[name] * config.recovery_lr_scale for name in PROBE_LR_FIELDS})


def fresh_method(config) -> Method:
    """The method the probe trains: the run's, built afresh on the base model (its adapters contribute 0) at the
    probe's rates (probe_rates), seeded as the run was."""
    config = probe_rates(config)
    set_seed(config.seed)
    device = pick_device(config)
    return make_method(load_model(config, device), load_tokenizer(config), config, device,
                       autocast_dtype(config, device))


def write_report(run: Path, config, rows: dict, probes: dict[str, dict], controls: dict[str, dict]) -> dict:
    """recovery.json (cl_metrics.recovery_report of the run, its probes and their controls, with which tasks were
    probed) and recovery.png."""
    tasks = config.tasks
    report = recovery_report([recovery_samples(rows, probes, tasks, len(tasks), controls)], tasks,
                             config.bootstrap_resamples)
    for task, entry in report["tasks"].items():
        entry["probed"] = task in probes
        if task not in controls and "control" in entry:  # not measured: the base score and 0 by construction
            entry.update(control=None, control_ci=None, taught=None, taught_ci=None)
    missing = [task for task in probes if task not in controls]
    if missing:
        say(f"no control probe of {', '.join(missing)}: the controlled reading is left out (run the probe again)")
    report = dict(run=run.name, method=config.method, setting=config_digest(config),
                  **{k: getattr(config, k) for k in PROBE_FIELDS}, **report)
    (run / "recovery.json").write_text(json.dumps(json_ready(report), indent=2, allow_nan=False) + "\n")
    figure = plot_recovery(report, run / "recovery.png", f"{run.name}: {headline(report)}")
    say(f"{headline(report)}; format drift only: "
        f"{', '.join(t for t, e in report['tasks'].items() if e['format_drift_only']) or 'none'}")
    say(f"wrote {run / 'recovery.json'} and {figure}")
    return report


if __name__ == "__main__":
    from cli import run as run_cli  # a missing run or checkpoint, a bad field, a diverged probe: one line, exit 2
    from training import NonFiniteLossError, NonFiniteParametersError

    run_cli(main, NonFiniteLossError, NonFiniteParametersError)
