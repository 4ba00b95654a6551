"""The hooks a continual-learning method plugs into the one sequential loop (sequential.py).

    for stage k (one task, or all tasks for multi-task):
        method.before_stage(k, tasks, dataset)          set up branches, buffers, teachers
        loader = method.train_loader(k, dataset)    what the batches hold (replay mixes old samples in)
        train_stage(loss_fn=method.loss,            per-batch loss (supervised + batch-dependent terms)
                    aux_loss=method.aux_loss,       per-step terms (penalties, distillation on a probe buffer)
                    optimizer_factory=method.optimizer, on_step -> method.after_step)
        method.after_stage(k, tasks, dataset)            consolidation (Fisher, buffers, subspaces); figures
        evaluate every task under method.inference(method.eval_key(task))

A method is a small class overriding only the hooks it needs; everything else (data, schedules, checkpoints, resume,
evaluation, metrics) is the engine's. Shared pieces (a replay buffer, per-task LoRAs, SLSD's probe buffer) are held, not
inherited (methods/components.py), and every method's docstring lists every loss term it adds. Each term is also
logged in ``self.terms``, whose per-stage ratios to the task loss ``after_stage`` returns. State that a method carries
across stages (a Fisher, a buffer, full-rank weights) goes through ``state_dict`` / ``load_state_dict`` so that resume
stays exact.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import torch

from methods.components import Plugin, TermLog
from models.ds_lora import DSLoRA
from training import make_optimizer, supervised_loss
from utils_data import make_loader


class Method:
    """Base strategy: adapters from ``install``, plain supervised training, evaluation of the model as it is."""

    name = "base"

    def __init__(self, model, tokenizer, config, device: torch.device, amp_dtype: torch.dtype | None):
        self.model, self.tokenizer, self.config, self.device, self.amp_dtype = model, tokenizer, config, device, amp_dtype
        self.plugins: list[Plugin] = []  # held pieces (``hold``), whose hooks this class's hooks call
        self.dslora = self.install()
        self.stage = 0
        self.terms = TermLog()  # the loss terms of the running stage, for after_stage's figures

    # ---- set-up ----------------------------------------------------------------------------------------------
    def install(self) -> DSLoRA:
        """Put the method's adapters into the model."""
        raise NotImplementedError

    def hold(self, plugin: Plugin) -> Plugin:
        """Hold ``plugin`` (a replay buffer, per-task LoRAs, SLSD): the stage hooks below call its hooks."""
        self.plugins.append(plugin)
        return plugin

    @staticmethod
    def stages(tasks: list[str]) -> list[list[str]]:
        """The training stages as lists of tasks: one task per stage (multi-task overrides)."""
        return [[task] for task in tasks]

    # ---- training hooks --------------------------------------------------------------------------------------
    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        """Called before stage ``stage`` trains on ``dataset`` (the training split of ``tasks``); returns figures
        for stages.jsonl."""
        self.stage = stage
        info = {}
        for plugin in self.plugins:
            info.update(plugin.before_stage(stage, tasks, dataset))
        return info

    def train_loader(self, stage: int, dataset):
        """The first held piece's loader (replay's mixed batches), else shuffled batches of ``dataset``."""
        for plugin in self.plugins:
            if (loader := plugin.train_loader(stage, dataset)) is not None:
                return loader
        config = self.config
        return make_loader(dataset, config.batch_size, self.tokenizer.pad_token_id, shuffle=True, seed=config.seed + stage,
                           group_by_length=config.group_by_length)

    def optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.dslora, self.config)

    def loss(self, model, batch: dict) -> torch.Tensor:
        loss = supervised_loss(model, batch)
        self.terms.add(TermLog.TASK, loss)
        return loss

    def aux_loss(self, step: int) -> torch.Tensor | None:
        return None

    def after_step(self, step: int) -> None:
        """Called after every optimizer step."""

    def after_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        """Called once a stage has finished training (not when a finished stage is loaded on resume); returns figures
        for stages.jsonl: the mean task loss and each auxiliary term's ratio to it (``TermLog``)."""
        for plugin in self.plugins:
            plugin.after_stage(stage, tasks, dataset)
        return self.terms.figures()

    # ---- evaluation ------------------------------------------------------------------------------------------
    def eval_key(self, task: str) -> str:
        """Tasks with the same key are evaluated with the same weights (and share generation batches)."""
        return "model"

    @contextmanager
    def inference(self, key: str) -> Iterator[None]:
        """The model as evaluated for ``key``; ΔW folded in when ``merge_for_eval``."""
        with self.dslora.merged() if self.config.merge_for_eval else nullcontext():
            yield

    # ---- export ----------------------------------------------------------------------------------------------
    def export_keys(self, tasks: list[str] | None = None) -> dict[str, str]:
        """{task: the eval key it is scored with} over ``tasks`` (default: the configured ones), at this point of the
        sequence."""
        return {task: self.eval_key(task) for task in (self.config.tasks if tasks is None else tasks)}

    def export(self, folder: Path, base_model: str | None, tasks: list[str] | None = None) -> None:
        """Write the model this method evaluates, for use outside the toolkit, as a standard PEFT LoRA adapter in
        ``folder/peft``: the branches in use under ``inference(key)`` (DS-LoRA: slow + fast; I-LoRA: its slow learner;
        O-LoRA: every task's LoRA summed). Tasks scored with different weights (fast_mode=per_task: slow + fast_t)
        get one adapter per key, ``folder/peft/<key>/``, and ``folder/peft/README.md`` names each task's adapter.
        ``tasks``: the tasks whose weights to write (default: the configured ones; a single-task run: its task)."""
        tasks_of: dict[str, list[str]] = {}
        for task, key in self.export_keys(tasks).items():
            tasks_of.setdefault(key, []).append(task)
        for key in tasks_of:
            with self.inference(key):
                self.dslora.export_peft(folder / "peft" / key if len(tasks_of) > 1 else folder / "peft", base_model)
        if len(tasks_of) > 1:
            lines = [f"- `{key}/`: {', '.join(tasks)}" for key, tasks in tasks_of.items()]
            (folder / "peft" / "README.md").write_text(
                f"# PEFT adapters of method {self.config.method}, one per set of weights it evaluates\n\n"
                "Load a task's adapter with `PeftModel.from_pretrained(base, 'peft/<folder>')`:\n\n"
                + "\n".join(lines) + "\n")

    @torch.no_grad()
    def export_merged(self, folder: Path, tasks: list[str] | None = None) -> None:
        """Write the evaluated model with its adapters folded in, W = W0 + ΔW (fp32 for the adapted layers), as a
        plain transformers model folder (config, safetensors, tokenizer): for methods whose weights no LoRA holds."""
        keys = set(self.export_keys(tasks).values())
        if len(keys) != 1:
            raise ValueError(f"export_merged needs one set of evaluated weights, {self.name} has {len(keys)}")
        with self.inference(keys.pop()):
            state = {k: v for k, v in self.model.state_dict().items()
                     if not any(k.startswith(f"{name}.") for name in self.dslora.modules)}
            for name, m in self.dslora.modules.items():
                weight = m.base_weight().float() + m.delta_weight()  # (out × in); GPT-2's Conv1D stores Wᵀ
                state[f"{name}.weight"] = (weight if isinstance(m.base, torch.nn.Linear) else weight.t()).contiguous()
                if m.base.bias is not None:
                    state[f"{name}.bias"] = m.base.bias
        self.model.save_pretrained(folder, state_dict=state)
        self.tokenizer.save_pretrained(folder)

    def evaluate(self, records: dict[str, list[dict]], label: str, accelerator=None,
                 positions: dict[str, list[int]] | None = None) -> dict[str, tuple[dict, list[dict]]]:
        """evaluate_tasks under this method's inference rule (``positions``: a subset of a task's records, as
        there); tasks that share an eval key are scored in one group (shared generation batches). The one
        evaluation path of the engine and evaluate.py."""
        from evaluation import evaluate_tasks

        groups: dict[str, list[str]] = {}
        for task in records:
            groups.setdefault(self.eval_key(task), []).append(task)
        results = {}
        for key, group in groups.items():
            with self.inference(key):
                results.update(evaluate_tasks(self.model, self.tokenizer, {t: records[t] for t in group}, self.config,
                                              self.device, self.amp_dtype, label, accelerator,
                                              positions and {t: positions[t] for t in group if t in positions}))
        return results

    # ---- state across stages ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the method and its held pieces carry beyond the adapters (saved with every checkpoint)."""
        return {key: value for plugin in self.plugins for key, value in plugin.state_dict().items()}

    def load_state_dict(self, state: dict) -> None:
        for plugin in self.plugins:
            plugin.load_state_dict(state)

    def drop_carried_optimizer_state(self) -> None:
        """Forget optimizer state that the method carries from one stage to the next, so that its next optimizer()
        starts empty: the recovery probe trains from a checkpoint as its control does from the base model. Nothing
        is carried here (GORP carries its moments)."""

    def load(self, folder: Path) -> None:
        """A checkpoint folder's adapters (branches it names are created) and, when saved, the method's own state."""
        adapters = folder / "adapters.safetensors"
        if not adapters.is_file():
            raise FileNotFoundError(f"checkpoint {folder} holds no adapters.safetensors")
        self.dslora.load(adapters)
        state = folder / "method_state.pt"
        if state.is_file():  # train_single_task.py writes it only for a method that carries more than adapters
            self.load_state_dict(torch.load(state, weights_only=False))

    def num_trainable(self) -> int:
        return sum(p.numel() for group in self.optimizer().param_groups for p in group["params"])
