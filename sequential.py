"""The sequential continual-instruction-tuning engine: one loop over the task list, evaluation of every task before
the first stage and after each one, continual-learning metrics, checkpoints and exact resume.

    for stage k, task t_k:   SLSD probe buffer from the model as it stands (the teacher)
                             [fast_mode=per_task: a fresh fast branch for t_k]
                             train on t_k: supervised loss on slow + fast, SLSD's KD loss on slow only
                             save checkpoints/<run>/stage_<k>_<t_k>/ ; evaluate every task -> R[k][·]

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
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from transformers import set_seed

from cl_metrics import continual_metrics
from configs.base_config import Config, save_config
from evaluation import evaluate_tasks
from models.ds_lora import DSLoRA
from models.loading import autocast_dtype, load_model, load_tokenizer, pick_device, resolve_model_path
from slsd import SLSD
from training import num_optimizer_steps, train_stage
from utils_data import SFTDataset, make_loader, read_jsonl, read_rows, task_file


class RunConflictError(RuntimeError):
    """logs/<run> holds a run of a different config; pass --overwrite to replace it."""


def run_name(config: Config) -> str:
    """The config's run_name, else one derived from the config itself: the same command finds the same run."""
    if config.run_name:
        return config.run_name
    digest = hashlib.sha1(json.dumps(dataclasses.asdict(config), sort_keys=True).encode()).hexdigest()[:8]
    return f"seq_{'slsd' if config.use_slsd else 'dslora'}_{digest}"


def prepare_run(config: Config, overwrite: bool) -> tuple[Path, Path]:
    run = run_name(config)
    log_dir, ckpt_dir = Path(config.log_dir) / run, Path(config.checkpoint_dir) / run
    saved = log_dir / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(dataclasses.asdict(config))):
        if not overwrite:
            raise RunConflictError(f"{log_dir} holds a run with a different config; use --overwrite to replace it "
                                   f"or choose another --run_name")
        shutil.rmtree(log_dir)
        shutil.rmtree(ckpt_dir, ignore_errors=True)
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
        self.log_dir, self.ckpt_dir = prepare_run(config, overwrite)
        set_seed(config.seed)
        self.device = pick_device(config)
        self.amp_dtype = autocast_dtype(config, self.device)
        self.tokenizer = load_tokenizer(config)
        self.model = load_model(config).to(self.device)
        self.dslora = DSLoRA.from_config(self.model, config)
        self.slsd = SLSD(self.model, self.dslora, config, self.device, self.amp_dtype)
        self.eval_path = self.log_dir / "eval.jsonl"
        self.rows = {(r["stage"], r["task"]): r for r in read_rows(self.eval_path)}
        self.stage_info = {r["stage"]: r for r in read_rows(self.log_dir / "stages.jsonl")}

    # ---- evaluation ----------------------------------------------------------------------------------------------
    def eval_branch(self, task: str) -> str:
        """per_task: task t is evaluated with slow + fast_t when fast_t exists; otherwise with the active branch."""
        stem = Path(task).stem
        if self.config.fast_mode == "per_task" and stem in self.dslora.fast_names:
            return stem
        return self.dslora.active_fast

    @contextmanager
    def inference(self, branch: str):
        """The model as evaluated with fast branch ``branch`` (ΔW folded in when ``merge_for_eval``)."""
        active = self.dslora.active_fast
        self.dslora.set_active_fast(branch)
        try:
            with self.dslora.merged() if self.config.merge_for_eval else nullcontext():
                yield
        finally:
            self.dslora.set_active_fast(active)

    def evaluate_all(self, stage: int, label: str) -> None:
        """Score every task of the sequence (seen and unseen) and append one eval.jsonl row per task; tasks that
        are evaluated with the same branches share generation batches."""
        groups: dict[str, list[str]] = {}
        for task in self.config.tasks:
            if (stage, task) not in self.rows:
                groups.setdefault(self.eval_branch(task), []).append(task)
        for branch, group in groups.items():
            records = {task: read_jsonl(task_file(task, self.config.eval_split, self.config.data_dir),
                                        self.config.skip_bad_lines, self.config.max_eval_samples)[0] for task in group}
            with self.inference(branch):
                results = evaluate_tasks(self.model, self.tokenizer, records, self.config, self.device,
                                         self.amp_dtype, label)
            for task, (summary, samples) in results.items():
                row = dict(stage=stage, stage_name=label, task=task, **summary)
                with (self.log_dir / f"samples_{stage + 1:02d}_{label}_{task}.jsonl").open("w") as handle:
                    handle.writelines(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
                with self.eval_path.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                self.rows[(stage, task)] = row

    # ---- one stage -----------------------------------------------------------------------------------------------
    def stage_dir(self, stage: int, task: str) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{Path(task).stem}"

    def save_stage(self, stage: int, task: str) -> None:
        def write(folder: Path) -> None:
            self.dslora.save(folder / "adapters.safetensors")
            if self.config.export_peft:
                self.dslora.export_peft(folder / "peft", resolve_model_path(self.config.model_name, self.config.model_cache_dir))

        atomic_dir(self.stage_dir(stage, task), write)
        shutil.rmtree(self.partial_dir(stage, task), ignore_errors=True)

    def partial_dir(self, stage: int, task: str) -> Path:
        return self.ckpt_dir / f"stage_{stage}_{Path(task).stem}.partial"

    def train_task(self, stage: int, task: str) -> None:
        config = self.config
        train = SFTDataset.from_file(task_file(task, "train", config.data_dir), self.tokenizer, config.max_seq_len,
                                     config.max_train_samples, config.skip_bad_lines)
        print(f"[data] {train.report.summary()}")
        set_seed(config.seed + stage)  # each stage's randomness is its own: a resumed run draws what a straight one did
        started = time.perf_counter()
        probe = self.slsd.before_stage(stage, train)  # the teacher: the model as the previous stage left it
        teacher_s = time.perf_counter() - started
        if config.fast_mode == "per_task":
            self.dslora.add_fast(Path(task).stem)
        partial, resume = self.partial_dir(stage, task), None
        if (partial / "trainer_state.pt").is_file():
            self.dslora.load(partial / "adapters.safetensors")
            resume = torch.load(partial / "trainer_state.pt", weights_only=False)
            print(f"[resume] {task}: continuing from step {resume['step']}")

        def checkpoint(step: int, snapshot) -> None:
            if config.save_every and step % config.save_every == 0:
                def write(folder: Path) -> None:
                    self.dslora.save(folder / "adapters.safetensors")
                    torch.save(snapshot(), folder / "trainer_state.pt")

                atomic_dir(partial, write)

        loader = make_loader(train, config.batch_size, self.tokenizer.pad_token_id, shuffle=True,
                             seed=config.seed + stage, group_by_length=config.group_by_length)
        steps = num_optimizer_steps(config, len(loader))
        stats = train_stage(self.model, self.dslora, loader, config, steps, self.log_dir / "train_loss.jsonl",
                            self.device, self.amp_dtype, desc=f"stage {stage + 1}/{len(config.tasks)} {task}",
                            step_offset=sum(s["optimizer_steps"] for s in self.stage_info.values()),
                            aux_loss=self.slsd.aux_loss, resume=resume, on_step=checkpoint)
        self.save_stage(stage, task)
        info = dict(stage=stage, task=task, optimizer_steps=stats.optimizer_steps, tokens=stats.tokens,
                    skipped_nonfinite=stats.skipped_nonfinite, train_wall_s=round(stats.wall_s, 2),
                    teacher_wall_s=round(teacher_s, 2), wall_s=round(time.perf_counter() - started, 2),
                    peak_memory_mb=round(peak_memory_mb(self.device), 1), train_samples=len(train), **probe)
        with (self.log_dir / "stages.jsonl").open("a") as handle:
            handle.write(json.dumps(info) + "\n")
        self.stage_info[stage] = info

    # ---- the sequence --------------------------------------------------------------------------------------------
    def run(self) -> dict:
        config = self.config
        self.evaluate_all(-1, "base")
        for stage, task in enumerate(config.tasks):
            done = self.stage_dir(stage, task)
            if (done / "adapters.safetensors").is_file() and stage in self.stage_info:
                self.dslora.load(done / "adapters.safetensors")
                print(f"[resume] stage {stage + 1} ({task}) already trained: loaded {done}")
            else:
                self.train_task(stage, task)
            self.evaluate_all(stage, Path(task).stem)
        summary = self.summary()
        (self.log_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def summary(self) -> dict:
        tasks = self.config.tasks
        matrix = lambda key, stages: [[self.rows[(s, t)].get(key) for t in tasks] for s in stages]  # noqa: E731
        R, base = matrix("score", range(len(tasks))), [self.rows[(-1, t)]["score"] for t in tasks]
        return dict(run=self.log_dir.name, tasks=tasks, base_scores=base, R=R,
                    loss_matrix=matrix("eval_loss", range(len(tasks))), base_losses=matrix("eval_loss", [-1])[0],
                    format_matrix=matrix("format_rate", range(len(tasks))), **continual_metrics(R, base),
                    final_scores=dict(zip(tasks, R[-1])), stages=[self.stage_info[s] for s in range(len(tasks))],
                    fast_mode=self.config.fast_mode, use_slsd=self.config.use_slsd)


def format_summary(summary: dict) -> str:
    """The score matrix (rows: after each stage) and the continual-learning figures, as a terminal table."""
    tasks = summary["tasks"]
    width = max(10, *(len(t) for t in tasks))
    head = "after stage".ljust(16) + "".join(t.rjust(width + 2) for t in tasks)
    lines = [head, "-" * len(head), "base".ljust(16) + "".join(f"{v:{width + 2}.3f}" for v in summary["base_scores"])]
    for task, row in zip(tasks, summary["R"]):
        lines.append(task.ljust(16) + "".join(f"{v:{width + 2}.3f}" for v in row))
    figures = "  ".join(f"{k} {summary[k]:+.3f}" if summary[k] is not None else f"{k} -"
                        for k in ("AP", "BWT", "FWT", "forgetting"))
    wall = sum(s["wall_s"] for s in summary["stages"])
    return "\n".join(lines + ["", f"{figures}   (training wall time {wall:.0f} s)"])
