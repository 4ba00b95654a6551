"""The sequential continual-instruction-tuning engine: one loop over the task list, evaluation of every task before
the first stage and after each one, continual-learning metrics, checkpoints and exact resume.

    evaluate every task with the base model -> base[·]
    for stage k, task t_k:   method.before_stage   (DS-LoRA + SLSD: the probe buffer, from the model as it stands)
                             train on t_k with the method's loader, loss, per-step terms and optimizer
                             method.after_stage    (e.g. EWC's Fisher, the replay buffer)
                             save checkpoints/<run>/stage_<k>_<t_k>/ ; evaluate every task -> R[k][·]

The method (``--method``, methods/) is a small set of hooks; this file is the only training loop of the sequence.

Re-running the same command resumes: finished stages are loaded, not retrained; an interrupted stage continues from
its last mid-stage checkpoint (adapters, optimizer, schedule, RNG, data position), so the result equals an
uninterrupted run. Every checkpoint is written to a temporary folder and renamed into place.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import resource
import shutil
import time
from pathlib import Path

import torch
from transformers import set_seed

from cl_metrics import continual_metrics
from configs.base_config import Config, save_config
from distributed import make_accelerator, tracker_config
from evaluation import evaluate_tasks
from methods import make_method
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device, resolve_model_path
from training import num_optimizer_steps, train_stage
from utils_data import SFTDataset, read_jsonl, read_rows, task_file


class RunConflictError(RuntimeError):
    """logs/<run> holds a run of a different config; pass --overwrite to replace it."""


def run_name(config: Config) -> str:
    """The config's run_name, else one derived from the config itself: the same command finds the same run."""
    if config.run_name:
        return config.run_name
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:8]
    return f"seq_{config.method}_{digest}"


def prepare_run(config: Config, overwrite: bool, main: bool = True) -> tuple[Path, Path]:
    """The run's folders; refuses (every process) a run of another config unless ``overwrite``; the main process
    replaces it and saves the config."""
    run = run_name(config)
    log_dir, ckpt_dir = Path(config.log_dir) / run, Path(config.checkpoint_dir) / run
    saved = log_dir / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(dataclasses.asdict(config))):
        if not overwrite:
            raise RunConflictError(f"{log_dir} holds a run with a different config; use --overwrite to replace it "
                                   f"or choose another --run_name")
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
        self.eval_path = self.log_dir / "eval.jsonl"
        self.rows = {(r["stage"], r["task"]): r for r in read_rows(self.eval_path)}
        if self.main and config.report_to != "none":
            self.accelerator.init_trackers(self.log_dir.name, config=tracker_config(config))
        self.stage_info = {r["stage"]: r for r in read_rows(self.log_dir / "stages.jsonl")}

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def evaluate_all(self, stage: int, label: str) -> None:
        """Score every task of the sequence (seen and unseen) and append one eval.jsonl row per task; tasks that
        the method evaluates with the same weights share generation batches."""
        groups: dict[str, list[str]] = {}
        for task in self.config.tasks:
            if (stage, task) not in self.rows:
                groups.setdefault(self.method.eval_key(task), []).append(task)
        for key, group in groups.items():
            records = {task: read_jsonl(task_file(task, self.config.eval_split, self.config.data_dir),
                                        self.config.skip_bad_lines, self.config.max_eval_samples)[0] for task in group}
            with self.method.inference(key):
                results = evaluate_tasks(self.model, self.tokenizer, records, self.config, self.device,
                                         self.amp_dtype, label, self.accelerator)
            for task, (summary, samples) in results.items():
                row = dict(stage=stage, stage_name=label, task=task, **summary)
                self.rows[(stage, task)] = row
                if not self.main:
                    continue
                with (self.log_dir / f"samples_{stage + 1:02d}_{label}_{task}.jsonl").open("w") as handle:
                    handle.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
                with self.eval_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                if self.accelerator.trackers:
                    self.accelerator.log({f"eval/{task}/{k}": v for k, v in summary.items()
                                          if isinstance(v, (int, float)) and v is not None}, step=stage + 1)

    # ---- one stage -----------------------------------------------------------------------------------------------
    @staticmethod
    def stage_name(tasks: list[str]) -> str:
        return Path(tasks[0]).stem if len(tasks) == 1 else "multitask"

    def stage_dir(self, stage: int, tasks: list[str]) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{self.stage_name(tasks)}"

    def partial_dir(self, stage: int, tasks: list[str]) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{self.stage_name(tasks)}.partial"

    def write_state(self, folder: Path) -> None:
        """Adapters (safetensors) and whatever the method carries across stages."""
        self.dslora.save(folder / "adapters.safetensors")
        torch.save(self.method.state_dict(), folder / "method_state.pt")

    def read_state(self, folder: Path) -> None:
        self.dslora.load(folder / "adapters.safetensors")
        self.method.load_state_dict(torch.load(folder / "method_state.pt", weights_only=False))

    def save_stage(self, stage: int, tasks: list[str]) -> None:
        def write(folder: Path) -> None:
            self.write_state(folder)
            if self.config.export_peft:
                self.dslora.export_peft(folder / "peft", resolve_model_path(self.config.model_name, self.config.model_cache_dir))

        if self.main:
            atomic_dir(self.stage_dir(stage, tasks), write)
            shutil.rmtree(self.partial_dir(stage, tasks), ignore_errors=True)
        self.accelerator.wait_for_everyone()

    def stage_dataset(self, tasks: list[str]) -> SFTDataset:
        """The training split of the stage's tasks (several for multi-task: their union)."""
        config, records, problems = self.config, [], []
        for task in tasks:
            rows, bad = read_jsonl(task_file(task, "train", config.data_dir), config.skip_bad_lines, config.max_train_samples)
            records += rows
            problems += bad
        return SFTDataset(records, self.tokenizer, config.max_seq_len, ",".join(tasks), problems)

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
            if config.save_every and step % config.save_every == 0 and self.main:
                def write(folder: Path) -> None:
                    self.write_state(folder)
                    torch.save(snapshot(), folder / "trainer_state.pt")

                atomic_dir(partial, write)

        loader = self.method.train_loader(stage, train)
        steps = num_optimizer_steps(config, len(loader)) * (len(tasks) if config.max_steps else 1)  # max_steps is per task
        stats = train_stage(self.model, self.dslora, loader, config, steps, self.log_dir / "train_loss.jsonl",
                            self.device, self.amp_dtype, desc=f"stage {stage + 1}/{len(self.stages)} {name}",
                            step_offset=sum(s["optimizer_steps"] for s in self.stage_info.values()),
                            aux_loss=self.method.aux_loss, resume=resume, on_step=after_step,
                            optimizer_factory=self.method.optimizer, loss_fn=self.method.loss,
                            accelerator=self.accelerator)
        self.method.after_stage(stage, tasks, train)
        self.save_stage(stage, tasks)
        info = dict(stage=stage, task=",".join(tasks), optimizer_steps=stats.optimizer_steps, tokens=stats.tokens,
                    skipped_nonfinite=stats.skipped_nonfinite, train_wall_s=round(stats.wall_s, 2),
                    teacher_wall_s=round(setup_s, 2), wall_s=round(time.perf_counter() - started, 2),
                    peak_memory_mb=round(peak_memory_mb(self.device), 1), train_samples=len(train),
                    trainable_params=self.method.num_trainable(), processes=self.accelerator.num_processes, **info)
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
            (self.log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.accelerator.end_training()
        return summary

    def summary(self) -> dict:
        tasks, stages = self.config.tasks, range(len(self.stages))
        matrix = lambda key, rows: [[self.rows[(s, t)].get(key) for t in tasks] for s in rows]  # noqa: E731
        R, base = matrix("score", stages), [self.rows[(-1, t)]["score"] for t in tasks]
        transfer = continual_metrics(R, base) if len(self.stages) == len(tasks) else dict(
            AP=sum(R[-1]) / len(tasks), BWT=None, FWT=None, forgetting=None)  # multi-task: one stage, no transfer
        return dict(run=self.log_dir.name, log_dir=str(self.log_dir), method=self.config.method, tasks=tasks,
                    stage_names=[self.stage_name(t) for t in self.stages], base_scores=base, R=R,
                    loss_matrix=matrix("eval_loss", stages), base_losses=matrix("eval_loss", [-1])[0],
                    format_matrix=matrix("format_rate", stages), **transfer,
                    final_scores=dict(zip(tasks, R[-1])), stages=[self.stage_info[s] for s in stages],
                    trainable_params=self.stage_info[len(self.stages) - 1].get("trainable_params"),
                    peak_memory_mb=max(self.stage_info[s]["peak_memory_mb"] for s in stages),
                    train_wall_s=round(sum(self.stage_info[s]["wall_s"] for s in stages), 1),
                    fast_mode=self.config.fast_mode, use_slsd=self.config.use_slsd)


def format_summary(summary: dict) -> str:
    """The score matrix (rows: after each stage) and the continual-learning figures, as a terminal table."""
    tasks = summary["tasks"]
    width = max(10, *(len(t) for t in tasks))
    head = "after stage".ljust(16) + "".join(t.rjust(width + 2) for t in tasks)
    lines = [head, "-" * len(head), "base".ljust(16) + "".join(f"{v:{width + 2}.3f}" for v in summary["base_scores"])]
    for task, row in zip(summary.get("stage_names", tasks), summary["R"]):
        lines.append(task.ljust(16) + "".join(f"{v:{width + 2}.3f}" for v in row))
    figures = "  ".join(f"{k} {summary[k]:+.3f}" if summary[k] is not None else f"{k} -"
                        for k in ("AP", "BWT", "FWT", "forgetting"))
    wall = sum(s["wall_s"] for s in summary["stages"])
    return "\n".join(lines + ["", f"{figures}   (training wall time {wall:.0f} s)"])
