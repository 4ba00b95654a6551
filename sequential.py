"""The sequential continual-instruction-tuning engine: one loop over the task list, evaluation of every task before
the first stage and after each one, continual-learning metrics, checkpoints and exact resume.

    evaluate every task with the base model -> base[·]
    for stage k, task t_k:   method.before_stage   (DS-LoRA + SLSD: the probe buffer, from the model as it stands)
                             train on t_k with the method's loader, loss, per-step terms and optimizer
                             method.after_stage    (e.g. EWC's Fisher, the replay buffer)
                             save checkpoints/<run>/stage_<k>_<t_k>/ ; evaluate every task -> R[k][·]
                             (eval_scope needed: only t_0 .. t_{k+1}, all that the figures read)

The method (``--method``, methods/) is a small set of hooks; this file is the only training loop of the sequence.

Re-running the same command resumes: finished stages are loaded, not retrained; an interrupted stage continues from
its last mid-stage checkpoint (adapters, optimizer, schedule, RNG, data position), so the result equals an
uninterrupted run. Every checkpoint is written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list
from transformers import set_seed

from base_cache import base_key, base_path, load_base, store_base
from cl_metrics import figures_with_ci, format_score, run_samples
from configs.base_config import (PROBE_FIELDS, Config, ConfigError, build_config, config_digest, recorded_fields,
                                 save_config)
from distributed import make_accelerator, tracker_config
from evaluation import CUTOFF_FLAG, select_samples, subset_positions
from methods import make_method, method_class
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device, resolve_model_path
from training import check_finite_parameters, num_optimizer_steps, train_stage
from utils_data import SFTDataset, json_ready, read_rows, read_task, task_name


class RunConflictError(RuntimeError):
    """logs/<run> holds a run of a different config; pass --overwrite to replace it."""


def run_name(config: Config) -> str:
    """The config's run_name, else one derived from the config itself: the same command finds the same run."""
    if config.run_name:
        return config.run_name
    return f"seq_{config.method}_{config_digest(config, 8)}"


def config_changes(saved: Path, config: Config) -> dict[str, tuple]:
    """{field: (saved value, value in ``config``)} for each field where a run's saved config.json differs from
    ``config``; empty when they are the same or nothing is saved. The probe's fields (PROBE_FIELDS) are not the
    run's: a run saved before one of them existed, or with other values, is the same run; so is one saved before a
    LATER_FIELDS field existed, when ``config`` has that field at its default."""
    if not saved.is_file():
        return {}
    old = recorded_fields(json.loads(saved.read_text()))
    new = recorded_fields(json.loads(json.dumps(dataclasses.asdict(config))))
    return {k: (old.get(k, "(absent)"), new.get(k, "(absent)")) for k in sorted(old.keys() | new.keys())
            if k not in PROBE_FIELDS and (k not in old or k not in new or old[k] != new[k])}


def prepare_run(config: Config, overwrite: bool, main: bool = True) -> tuple[Path, Path]:
    """The run's folders; refuses (every process) a run of another config unless ``overwrite``; the main process
    replaces it and saves the config."""
    run = run_name(config)
    log_dir, ckpt_dir = Path(config.log_dir) / run, Path(config.checkpoint_dir) / run
    saved = log_dir / "config.json"
    changes = config_changes(saved, config)
    if changes:
        if not overwrite:
            raise RunConflictError(f"{log_dir} holds a run with a different config ({', '.join(changes)}); use "
                                   f"--overwrite to replace it or choose another --run_name")
        if main:
            shutil.rmtree(log_dir)
            shutil.rmtree(ckpt_dir, ignore_errors=True)
    if main:
        log_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, saved)
    return log_dir, ckpt_dir


def atomic_dir(target: Path, write) -> None:
    """Write a folder through ``write(tmp_folder)`` and rename it into place: never half-written."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


class Sequence:
    """State of one sequential run; ``run()`` executes it (resuming whatever is already done)."""

    def __init__(self, config: Config, overwrite: bool = False):
        self.config = config
        self.device = pick_device(config)
        self.accelerator = make_accelerator(config, self.device, config.log_dir)
        self.device = self.accelerator.device  # with several processes: this process's GPU
        self.main = self.accelerator.is_main_process
        self.log_dir, self.ckpt_dir = prepare_run(config, overwrite, self.main)
        self.accelerator.wait_for_everyone()
        set_seed(config.seed)
        self.amp_dtype = autocast_dtype(config, self.device)
        self.tokenizer = load_tokenizer(config)
        self.model = load_model(config, self.device)
        self.method = make_method(self.model, self.tokenizer, config, self.device, self.amp_dtype)
        self.dslora = self.method.dslora
        self.stages = self.method.stages(config.tasks)
        unmatched = [t for t in config.task_max_steps if t not in config.tasks]  # a typo, or a preset's task left out
        if unmatched and self.main:
            print(f"[budget] task_max_steps names {', '.join(unmatched)}, not among tasks: ignored")
        self.eval_path = self.log_dir / "eval.jsonl"
        self.rows = {(r["stage"], r["task"]): r for r in read_rows(self.eval_path)}
        if self.main and config.report_to != "none":
            self.accelerator.init_trackers(self.log_dir.name, config=tracker_config(config))
        self.stage_info = {r["stage"]: r for r in read_rows(self.log_dir / "stages.jsonl")}

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def eval_tasks(self, stage: int) -> list[str]:
        """The tasks scored after ``stage`` (-1: the base model). eval_scope all: every task. needed: the tasks of
        stages 0 .. stage + 1, i.e. those trained so far and the next one (R[l][i] for i <= l + 1: all that AP / LA
        / BWT / FWT / forgetting read); the base row stays whole (FWT reads base[i] of every task), and a single
        stage (multi-task) holds every task."""
        if self.config.eval_scope == "all" or stage < 0:
            return list(self.config.tasks)
        needed = {task for tasks in self.stages[:stage + 2] for task in tasks}
        return [task for task in self.config.tasks if task in needed]

    def evaluate_all(self, stage: int, label: str) -> None:
        """Score the tasks of ``eval_tasks(stage)`` that have no row yet and append one eval.jsonl row per task;
        tasks that the method evaluates with the same weights share generation batches. After a stage before the
        last, ``early_eval_samples`` (when set) of each task's samples are scored: a fixed subset of the same ones.
        With ``shared_base_dir``, a base row stored by an earlier run of the same evaluation is reused
        (base_cache.py) and a new one is stored."""
        config = self.config
        records = {task: select_samples(read_task(task, config.eval_split, config.data_dir, config.skip_bad_lines)[0],
                                        config.max_eval_samples, config.eval_subset_seed)
                   for task in self.eval_tasks(stage) if (stage, task) not in self.rows}
        early = config.early_eval_samples and 0 <= stage < len(self.stages) - 1
        positions = {task: subset_positions(rows, config.early_eval_samples, config.eval_subset_seed)
                     for task, rows in records.items()} if early else None
        keys = self.base_keys(records) if stage < 0 and config.shared_base_dir else {}
        results = {task: load_base(config, task, keys[task]) for task in self.reusable(keys)}
        todo = {task: rows for task, rows in records.items() if task not in results}
        results |= self.method.evaluate(todo, label, self.accelerator, positions) if todo else {}
        if self.main:
            for task in keys.keys() & todo.keys():
                store_base(config, task, keys[task], *results[task])
        for task, (summary, samples) in results.items():
            row = dict(stage=stage, stage_name=label, task=task, **summary)
            self.rows[(stage, task)] = row
            if not self.main:
                continue
            with samples_file(self.log_dir, row).open("w") as handle:
                handle.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
            with self.eval_path.open("a") as handle:
                handle.write(json.dumps(json_ready(row), allow_nan=False) + "\n")  # strict JSON: NaN as null
            if self.accelerator.trackers:
                self.accelerator.log({f"eval/{task}/{k}": v for k, v in summary.items()
                                      if isinstance(v, (int, float)) and v is not None}, step=stage + 1)

    def base_keys(self, records: dict[str, list[dict]]) -> dict[str, str]:
        """Each task's shared base-row key (base_cache.py), with how this run evaluates it: device, dtypes,
        processes and the tasks that share its generation batches (those of its eval key)."""
        together = self.generated_together(list(records))
        layout = dict(device=self.device.type, autocast=str(self.amp_dtype), processes=self.accelerator.num_processes,
                      weights=str(next(self.model.parameters()).dtype))
        return {task: base_key(self.config, rows, dict(layout, together=together[task]))
                for task, rows in records.items()}

    def generated_together(self, tasks: list[str]) -> dict[str, list[str]]:
        """Each task's group: the tasks the method evaluates with the same weights, in one generation call."""
        return {task: [t for t in tasks if self.method.eval_key(t) == self.method.eval_key(task)] for task in tasks}

    def reusable(self, keys: dict[str, str]) -> list[str]:
        """The tasks whose stored base rows are reused: only whole groups of tasks generated together (their answers
        were generated in the same batches), decided by the main process for every process (a row another run
        stores meanwhile must not split them: each would evaluate other tasks and the gather would hang)."""
        stored = {task for task, key in keys.items() if base_path(self.config, task, key).is_file()}
        together = self.generated_together(list(keys))
        reused = [[task for task in keys if set(together[task]) <= stored]]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(reused)
        return reused[0]

    # ---- one stage -----------------------------------------------------------------------------------------------
    @staticmethod
    def stage_name(tasks: list[str]) -> str:
        return task_name(tasks[0]) if len(tasks) == 1 else "multitask"

    def stage_dir(self, stage: int, tasks: list[str]) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{self.stage_name(tasks)}"

    def partial_dir(self, stage: int, tasks: list[str]) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{self.stage_name(tasks)}.partial"

    def write_state(self, folder: Path) -> None:
        """Adapters (safetensors) and whatever the method carries across stages."""
        self.dslora.save(folder / "adapters.safetensors")
        torch.save(self.method.state_dict(), folder / "method_state.pt")

    def read_state(self, folder: Path) -> None:
        self.method.load(folder)

    def save_stage(self, stage: int, tasks: list[str]) -> None:
        def write(folder: Path) -> None:
            self.write_state(folder)
            if self.config.export_peft:  # the model the method evaluates (methods/base.py, Method.export)
                self.method.export(folder, resolve_model_path(self.config.model_name, self.config.model_cache_dir))

        if self.main:
            atomic_dir(self.stage_dir(stage, tasks), write)
            shutil.rmtree(self.partial_dir(stage, tasks), ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def stage_dataset(self, tasks: list[str]) -> SFTDataset:
        """The training split of the stage's tasks (several for multi-task: their union)."""
        config, records, problems, sources = self.config, [], [], []
        for task in tasks:
            rows, bad = read_task(task, "train", config.data_dir, config.skip_bad_lines, config.max_train_samples)
            records += rows
            problems += bad
            sources += [task] * len(rows)
        return SFTDataset(records, self.tokenizer, config.max_seq_len, ",".join(tasks), problems, sources=sources)

    def train_stage(self, stage: int, tasks: list[str]) -> None:
        config, name = self.config, self.stage_name(tasks)
        train = self.stage_dataset(tasks)
        print(f"[data] {train.report.summary()}")
        set_seed(config.seed + stage)  # each stage's randomness is its own: a resumed run draws what a straight one did
        started = time.perf_counter()
        info = self.method.before_stage(stage, tasks, train)  # teachers see the model as the previous stage left it
        setup_s = time.perf_counter() - started
        partial, resume = self.partial_dir(stage, tasks), None
        if (partial / "trainer_state.pt").is_file():
            self.read_state(partial)
            resume = torch.load(partial / "trainer_state.pt", weights_only=False)
            print(f"[resume] {name}: continuing from step {resume['step']}")

        def after_step(step: int, snapshot) -> None:
            self.method.after_step(step)
            if config.save_every and step % config.save_every == 0:
                # a non-finite parameter stops the stage here: the last good partial checkpoint stays
                check_finite_parameters(self.model, f"after step {step} of stage {stage + 1} {name}", self.accelerator)
                if self.main:
                    def write(folder: Path) -> None:
                        self.write_state(folder)
                        torch.save(snapshot(), folder / "trainer_state.pt")

                    atomic_dir(partial, write)

        loader = self.method.train_loader(stage, train)
        # a budget per task: a stage of several tasks (multitask) trains for the sum of theirs
        steps = sum(config.task_steps(t) for t in tasks) or num_optimizer_steps(config, len(loader))
        print(f"[budget] {name}: {steps} optimizer steps")
        stats = train_stage(self.model, self.dslora, loader, config, steps, self.log_dir / "train_loss.jsonl",
                            self.device, self.amp_dtype, desc=f"stage {stage + 1}/{len(self.stages)} {name}",
                            step_offset=sum(s["optimizer_steps"] for s in self.stage_info.values()),
                            aux_loss=self.method.aux_loss, resume=resume, on_step=after_step,
                            optimizer_factory=self.method.optimizer, loss_fn=self.method.loss,
                            accelerator=self.accelerator)
        figures = self.method.after_stage(stage, tasks, train)  # e.g. each loss term's ratio to the task loss
        self.save_stage(stage, tasks)
        info = dict(stage=stage, task=",".join(tasks), optimizer_steps=stats.optimizer_steps, tokens=stats.tokens,
                    skipped_nonfinite=stats.skipped_nonfinite, train_wall_s=round(stats.wall_s, 2),
                    teacher_wall_s=round(setup_s, 2), wall_s=round(time.perf_counter() - started, 2),
                    peak_memory_mb=round(peak_memory_mb(self.device), 1), train_samples=len(train),
                    trainable_params=self.method.num_trainable(), processes=self.accelerator.num_processes, **info, **figures)
        if self.main:
            with (self.log_dir / "stages.jsonl").open("a") as handle:
                handle.write(json.dumps(info) + "\n")
        self.stage_info[stage] = info

    # ---- the sequence --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        self.evaluate_all(-1, "base")
        for stage, tasks in enumerate(self.stages):
            done = self.stage_dir(stage, tasks)
            if (done / "method_state.pt").is_file() and stage in self.stage_info:
                self.read_state(done)
                print(f"[resume] stage {stage + 1} ({self.stage_name(tasks)}) already trained: loaded {done}")
            else:
                self.train_stage(stage, tasks)
            self.evaluate_all(stage, self.stage_name(tasks))
        summary = self.summary()
        if self.main:
            write_summary(self.log_dir, summary)
        self.accelerator.end_training()
        return summary

    def summary(self) -> dict:
        """The run's summary so far (``summarize`` over every stage)."""
        return summarize(self.config, self.rows, self.stage_info, self.stages, self.log_dir)


def scored_tasks(config: Config, stages: list[list[str]]) -> list[str]:
    """The tasks trained in ``stages``, in the config's order."""
    return [t for t in config.tasks if any(t in stage for stage in stages)]


def summarize(config: Config, rows: dict, stage_info: dict, stages: list[list[str]], log_dir: Path) -> dict:
    """The score matrix with each cell's 95 % interval, AP / LA / BWT / FWT / forgetting with joint intervals
    (cl_metrics.py: the same resampled samples in every row), the loss, format and cut-off matrices, the
    evaluations flagged as mostly cut off, T5's refusal rates after the last stage, and the training costs, from a
    run's evaluation rows {(stage, task): row} and stage records {stage: row}. ``stages`` (the tasks of each stage)
    may be the first few of the run's: the summary is then that of the shorter sequence (its tasks only).
    A cell that was not evaluated (eval_scope needed: a task two or more stages ahead) is None in every matrix."""
    tasks = scored_tasks(config, stages)
    last, indices = len(stages) - 1, range(len(stages))
    cell = lambda s, t: rows.get((s, t), {})  # noqa: E731
    matrix = lambda key, at: [[cell(s, t).get(key) for t in tasks] for s in at]  # noqa: E731
    R, base = matrix("score", indices), [rows[(-1, t)]["score"] for t in tasks]
    figures = figures_with_ci(*run_samples(rows, tasks, len(stages)),
                              config.bootstrap_resamples)  # multi-task (one stage): AP only
    names = ["base", *(Sequence.stage_name(t) for t in stages)]
    cut_off = [dict(after=names[s + 1], task=t, cutoff_rate=rows[(s, t)]["cutoff_rate"])
               for s in (-1, *indices) for t in tasks if cell(s, t).get("mostly_cut_off")]
    rates = {t: {k: v for k, v in rows[(last, t)].items() if k.startswith(("refusal_rate", "over_refusal_rate"))}
             for t in tasks if "refusal_rate" in rows[(last, t)]}
    return dict(run=log_dir.name, log_dir=str(log_dir), method=config.method, tasks=tasks,
                stage_names=names[1:], base_scores=base, base_ci=matrix("score_ci", [-1])[0], R=R,
                R_ci=matrix("score_ci", indices), **figures,
                loss_matrix=matrix("eval_loss", indices), base_losses=matrix("eval_loss", [-1])[0],
                format_matrix=matrix("format_rate", indices), cutoff_matrix=matrix("cutoff_rate", indices),
                base_cutoff=matrix("cutoff_rate", [-1])[0], max_new_tokens=matrix("max_new_tokens", [-1])[0],
                reference_tokens=matrix("reference_tokens", [-1])[0],
                budget_override=config.max_new_tokens > 0, mostly_cut_off=cut_off, final_refusal_rates=rates,
                final_scores=dict(zip(tasks, R[-1])), final_ci=dict(zip(tasks, matrix("score_ci", indices)[-1])),
                samples=matrix("samples", [-1])[0], early_samples=config.early_eval_samples,
                stages=[stage_info[s] for s in indices],
                trainable_params=stage_info[last].get("trainable_params"),
                peak_memory_mb=max(stage_info[s]["peak_memory_mb"] for s in indices),
                train_wall_s=round(sum(stage_info[s]["wall_s"] for s in indices), 1),
                fast_mode=config.fast_mode, use_slsd=config.use_slsd)


def summary_from_logs(log_dir: Path, stages: int | None = None) -> dict:
    """A run's summary rebuilt from its logs (config.json, eval.jsonl, stages.jsonl), of all its stages or of the
    first ``stages`` (a run stopped later still gives the sequence of its first tasks). Nothing is loaded or run.
    Raises FileNotFoundError when the run or an evaluation those stages' figures read is missing (the base row, and
    R[l][i] for every task i of stages 0 .. l + 1: what eval_scope needed scores), ConfigError when it has no such
    first stages (too few, or one stage of several tasks: multi-task); both one line."""
    if not (log_dir / "config.json").is_file():
        raise FileNotFoundError(f"{log_dir} holds no run (no config.json)")
    config = build_config(config_file=str(log_dir / "config.json"))
    all_stages = method_class(config.method).stages(config.tasks)
    if stages is not None and not (1 <= stages <= len(all_stages) and len(all_stages) == len(config.tasks)):
        raise ConfigError(f"{log_dir} ({config.method}) has {len(all_stages)} stage(s) for {len(config.tasks)} "
                          f"tasks: no sequence of its first {stages} tasks")
    kept = all_stages[:stages or len(all_stages)]
    rows = {(r["stage"], r["task"]): r for r in read_rows(log_dir / "eval.jsonl")}
    stage_info = {r["stage"]: r for r in read_rows(log_dir / "stages.jsonl")}
    last = len(kept) - 1
    needed = [(-1, t) for t in scored_tasks(config, kept)]
    needed += [(s, t) for s in range(len(kept)) for t in scored_tasks(config, kept[:s + 2])]
    missing = [f"stage {s} {t}" for s, t in needed if (s, t) not in rows]
    missing += [f"stage {s} record" for s in range(len(kept)) if s not in stage_info]
    if missing:
        raise FileNotFoundError(f"{log_dir} lacks evaluations its first {last + 1} stage(s) need (unfinished, or a row "
                                f"lost): no {', '.join(missing)}")
    return summarize(config, rows, stage_info, kept, log_dir)


def samples_file(log_dir: Path, row: dict, exists: bool = False) -> Path:
    """The answers file of an eval.jsonl row (Sequence.evaluate_all writes it): a line per scored sample, its id,
    prompt, answer and scores. ``exists``: FileNotFoundError (one line) when it is missing."""
    path = log_dir / f"samples_{row['stage'] + 1:02d}_{row['stage_name']}_{task_name(row['task'])}.jsonl"
    if exists and not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the answers of {row['task']} after {row['stage_name']}")
    return path


def scored_ids(log_dir: Path, row: dict) -> list[str]:
    """The ids of the samples an eval.jsonl row scored, in its order (the rows themselves hold their strata only)."""
    return [sample["id"] for sample in read_rows(samples_file(log_dir, row, exists=True))]


def write_summary(log_dir: Path, summary: dict) -> None:
    """<log_dir>/summary.json, strict JSON (NaN as null)."""
    (log_dir / "summary.json").write_text(json.dumps(json_ready(summary), indent=2, allow_nan=False) + "\n")


def format_summary(summary: dict) -> str:
    """The score matrix (rows: base, then after each stage) with 95 % intervals, the continual-learning figures
    with theirs, T5's refusal rates and the evaluations whose answers were mostly cut off, as terminal text (a cell
    that was not evaluated: ``-``)."""
    tasks = summary["tasks"]
    width = max(22, *(len(t) for t in tasks))
    cut = {(c["after"], c["task"]) for c in summary["mostly_cut_off"]}
    head = "after stage".ljust(16) + "".join(t.rjust(width + 2) for t in tasks)
    lines = [head, "-" * len(head)]
    for name, row, cis in zip(["base", *summary["stage_names"]], [summary["base_scores"], *summary["R"]],
                              [summary["base_ci"], *summary["R_ci"]]):
        lines.append(name.ljust(16) + "".join((format_score(v, ci) + ("*" if (name, t) in cut else " ")).rjust(width + 2)
                                              for t, v, ci in zip(tasks, row, cis)))
    figures = "  ".join(f"{k} {format_score(summary[k], summary[f'{k}_ci'], sign=k != 'AP' and k != 'LA')}"
                        for k in ("AP", "LA", "BWT", "FWT", "forgetting"))
    wall = sum(s["wall_s"] for s in summary["stages"])
    early = f", a fixed {summary['early_samples']} of them before the last stage" if summary.get("early_samples") else ""
    lines += ["", f"{figures}   (95 % bootstrap intervals over {min(summary['samples'])}-{max(summary['samples'])} "
                  f"samples per task{early}; training wall time {wall:.0f} s)"]
    if summary.get("plasticity"):
        lines.append("plasticity R[i][i] - base[i] (paired on the same samples): " + "  ".join(
            f"{t} {format_score(v, ci, sign=True)}" for t, v, ci in zip(tasks, summary["plasticity"],
                                                                         summary["plasticity_ci"])))
    for task, rates in summary["final_refusal_rates"].items():
        lines.append(f"{task} after the last stage: refusal rate (harmful) "
                     f"{format_score(rates['refusal_rate'], rates['refusal_rate_ci'])}, over-refusal rate (benign) "
                     f"{format_score(rates.get('over_refusal_rate'), rates.get('over_refusal_rate_ci'))}")
    if cut:
        lines.append(f"* mostly cut off: more than {CUTOFF_FLAG:.0%} of the answers hit the generation budget"
                     f"{' (the max_new_tokens override)' if summary['budget_override'] else ''}; such a score "
                     "measures the budget as much as the model")
    return "\n".join(lines)
