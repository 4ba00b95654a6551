"""The training loop and train_single_task.py end to end on the smoke preset."""
from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

import train_single_task
from configs.base_config import build_config
from models import loading
from models.ds_lora import DSLoRA
from models.loading import autocast_dtype, base_dtype, load_model
from tests.conftest import FIXTURES
from training import NonFiniteLossError, NonFiniteParametersError, supervised_loss, train_stage
from utils_data import SFTDataset, collate, make_loader


def run_stage(tokenizer, tmp_path, name, hooks=None, **overrides):
    """One seeded stage on the smoke preset; ``hooks(dslora)`` may give train_stage's aux_loss / on_step."""
    config = build_config("smoke", overrides=overrides)
    set_seed(config.seed)
    model = load_model(config)
    dslora = DSLoRA.from_config(model, config)
    dataset = SFTDataset.from_file(FIXTURES / "alpaca.jsonl", tokenizer, config.max_seq_len)
    loader = make_loader(dataset, config.batch_size, tokenizer.pad_token_id, shuffle=True, seed=config.seed)
    log = tmp_path / f"{name}.jsonl"
    cpu = torch.device("cpu")
    stats = train_stage(model, dslora, loader, config, config.max_steps, log, cpu, autocast_dtype(config, cpu),
                        **(hooks(dslora) if hooks else {}))
    return stats, [json.loads(line) for line in log.read_text().splitlines()], dslora


def test_same_seed_gives_the_same_losses_and_another_seed_does_not(tokenizer, tmp_path):
    _, first, _ = run_stage(tokenizer, tmp_path, "a")
    _, second, _ = run_stage(tokenizer, tmp_path, "b")
    _, other, _ = run_stage(tokenizer, tmp_path, "c", seed=7)
    assert [r["loss"] for r in first] == [r["loss"] for r in second]
    assert [r["loss"] for r in first] != [r["loss"] for r in other]
    assert [r["step"] for r in first] == [1, 2, 3, 4]
    assert first[0]["lr_slow"] == 1e-3 and first[0]["lr_fast"] == 5e-3  # no warm-up in smoke; cosine after
    assert first[-1]["lr_fast"] < first[0]["lr_fast"]
    assert all(r["tokens"] > 0 for r in first)


def test_training_lowers_the_loss_on_repeated_data(tokenizer, tmp_path):
    stats, rows, _ = run_stage(tokenizer, tmp_path, "fit", max_steps=30, lr_schedule="constant",
                                lr_slow=1e-2, lr_fast=3e-2)
    assert stats.optimizer_steps == 30
    # a 4-layer random model with LoRA on 2 layers learns slowly; the run is seeded, so the margin is stable
    assert sum(r["loss"] for r in rows[-5:]) / 5 < sum(r["loss"] for r in rows[:5]) / 5 - 0.1


def test_base_dtype_follows_bf16_autocast(monkeypatch):
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert base_dtype(build_config("default"), cpu) == torch.float32  # precision auto = fp32 on this CPU
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert base_dtype(build_config("default"), cpu) == torch.bfloat16  # a CPU with native bf16: bf16 autocast
    assert base_dtype(build_config("default", overrides=dict(precision="bf16")), cpu) == torch.bfloat16
    assert base_dtype(build_config("default", overrides=dict(precision="fp32")), cpu) == torch.float32
    assert base_dtype(build_config("default"), cuda) == torch.bfloat16  # precision auto = bf16 autocast on CUDA
    assert base_dtype(build_config("default", overrides=dict(precision="fp16")), cuda) == torch.float32
    assert base_dtype(build_config("default", overrides=dict(precision="fp32")), cuda) == torch.float32
    explicit = build_config("default", overrides=dict(base_dtype="bf16", precision="fp32"))
    assert base_dtype(explicit, cpu) == torch.bfloat16
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP flattens base and adapters into one dtype
    assert base_dtype(build_config("default"), cuda) == torch.float32


def test_a_bf16_base_trains_fp32_adapters_under_bf16_autocast(tokenizer, tmp_path):
    """The frozen base is stored in bf16 (half the memory) while the DS-LoRA branches stay fp32 and train."""
    stats, rows, dslora = run_stage(tokenizer, tmp_path, "bf16", base_dtype="bf16", precision="bf16", max_steps=2)
    model = dslora.model
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {torch.bfloat16}
    adapters = dslora.slow_parameters() + dslora.fast_parameters()
    assert {p.dtype for p in adapters} == {torch.float32}
    assert all(math.isfinite(r["loss"]) for r in rows) and stats.optimizer_steps == 2
    assert all(m.delta_weight().abs().sum() > 0 for m in dslora.modules.values())  # B moved off zero


def test_the_aux_loss_joins_the_last_micro_batchs_backward(tokenizer, tmp_path):
    """One backward per micro-batch, the aux term (SLSD's KD) riding on the last one: DeepSpeed steps its optimizer
    inside each backward it is told ends a step, and DDP then averages the aux term like the supervised loss."""
    config = build_config("smoke", overrides=dict(grad_accum_steps=2, max_steps=3))
    model = load_model(config)
    dslora = DSLoRA.from_config(model, config)
    loader = make_loader(SFTDataset.from_file(FIXTURES / "alpaca.jsonl", tokenizer, config.max_seq_len),
                         config.batch_size, tokenizer.pad_token_id, shuffle=True, seed=config.seed)
    slow = dslora.slow_parameters()[0]
    backwards, aux_calls = [], []
    slow.register_hook(lambda grad: backwards.append(1))  # runs once per backward pass that reaches the parameter

    def aux_loss(step: int) -> torch.Tensor:
        aux_calls.append(step)
        return sum(p.square().sum() for p in dslora.slow_parameters()) * 1e-3

    log = tmp_path / "aux.jsonl"
    train_stage(model, dslora, loader, config, config.max_steps, log, torch.device("cpu"), None, aux_loss=aux_loss)
    assert aux_calls == [1, 2, 3]
    assert len(backwards) == config.max_steps * config.grad_accum_steps  # not one more per step for the aux term
    assert all("aux_loss" in json.loads(line) for line in log.read_text().splitlines())


def poison_losses(monkeypatch, is_nan):
    """Make the n-th training loss NaN whenever ``is_nan(n)``."""
    import training

    original, calls = training.supervised_loss, itertools.count(1)

    def supervised_loss(model, batch):
        loss = original(model, batch)
        return loss * float("nan") if is_nan(next(calls)) else loss

    monkeypatch.setattr(training, "supervised_loss", supervised_loss)


def test_non_finite_losses_are_skipped_and_counted(tokenizer, tmp_path, monkeypatch):
    poison_losses(monkeypatch, lambda n: n % 2 == 0)
    stats, rows, _ = run_stage(tokenizer, tmp_path, "nan", max_steps=4, grad_accum_steps=2)
    assert stats.skipped_nonfinite == 4 and rows[-1]["skipped_nonfinite"] == 4
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_non_finite_losses_in_a_row_abort_clearly(tokenizer, tmp_path, monkeypatch):
    poison_losses(monkeypatch, lambda n: True)
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row at step 2"):
        run_stage(tokenizer, tmp_path, "nan", max_nonfinite_in_row=3, grad_accum_steps=2)


def adapters(dslora):
    return [p.detach().clone() for p in dslora.slow_parameters() + dslora.fast_parameters()]


def test_skipped_micro_batches_and_non_finite_extra_terms_move_nothing(tokenizer, tmp_path, monkeypatch):
    """Step 2: both micro-batches' losses are NaN, on a step whose extra term (a KD-like term on the slow branch)
    is finite: no optimizer step, so nothing moves (no zero gradient for AdamW to move on momentum). Step 3: the
    extra term is NaN: the last micro-batch is skipped with it, the first still applies, and nothing turns NaN."""
    poison_losses(monkeypatch, lambda n: n in (3, 4))
    after = {}

    def hooks(dslora):
        def aux_loss(step: int) -> torch.Tensor:
            term = sum(p.square().sum() for p in dslora.slow_parameters()) * 1e-3
            return term * float("nan") if step == 3 else term

        return dict(aux_loss=aux_loss, on_step=lambda step, _: after.__setitem__(step, adapters(dslora)))

    stats, rows, dslora = run_stage(tokenizer, tmp_path, "skip", hooks, grad_accum_steps=2, max_steps=4)
    assert all(torch.equal(p, q) for p, q in zip(after[1], after[2]))
    assert all(torch.isfinite(p).all() for p in after[4])
    assert stats.skipped_nonfinite == 3 and [r["skipped_nonfinite"] for r in rows] == [0, 2, 3, 3]
    assert math.isnan(rows[1]["grad_norm"]) and math.isfinite(rows[2]["grad_norm"])  # step 2 made no update
    assert any(not torch.equal(p, q) for p, q in zip(after[2], after[3]))  # step 3's first micro-batch applied


def poison_parameter(dslora, at_step: int):
    def on_step(step: int, _snapshot) -> None:
        if step == at_step:
            with torch.no_grad():
                dslora.fast_parameters()[0][0, 0] = float("nan")

    return dict(on_step=on_step)


def test_parameters_that_turn_non_finite_stop_the_stage_with_one_line(tokenizer, tmp_path):
    """Mid-stage: the next loss is NaN, and the skip finds the NaN parameter at once (not after
    max_nonfinite_in_row skips). At the last step: the stage ends with the error, so no checkpoint is written."""
    with pytest.raises(NonFiniteParametersError, match=r"lora_A is not finite at step 3 of train") as mid:
        run_stage(tokenizer, tmp_path, "mid", lambda dslora: poison_parameter(dslora, 2), max_steps=4)
    with pytest.raises(NonFiniteParametersError, match=r"lora_A is not finite after step 4 of train") as end:
        run_stage(tokenizer, tmp_path, "end", lambda dslora: poison_parameter(dslora, 4), max_steps=4)
    assert "\n" not in str(mid.value) + str(end.value)


def test_a_non_finite_parameter_never_overwrites_the_last_good_checkpoint(tmp_path, small_data):
    """The engine checks the parameters before each mid-stage checkpoint: the one of step 2 stays, step 4's (NaN)
    is never written, and the stage stops before its own checkpoint."""
    import sequential

    config = build_config("smoke", overrides=dict(
        data_dir=str(small_data), tasks=["T2_math"], max_steps=5, save_every=2, run_name="nan",
        log_dir=str(tmp_path / "logs"), checkpoint_dir=str(tmp_path / "ckpt"), export_peft=False))
    run = sequential.Sequence(config)
    run.method.after_step = lambda step: poison_parameter(run.dslora, 4)["on_step"](step, None)
    with pytest.raises(NonFiniteParametersError, match="after step 4 of stage 1 T2_math"):
        run.train_stage(0, ["T2_math"])
    partial = run.partial_dir(0, ["T2_math"])
    assert torch.load(partial / "trainer_state.pt", weights_only=False)["step"] == 2
    assert all(torch.isfinite(t).all() for t in load_file(str(partial / "adapters.safetensors")).values())
    assert not run.stage_dir(0, ["T2_math"]).exists()


def test_train_single_task_end_to_end(tmp_path):
    task = str(FIXTURES / "tiny_task" / "train.jsonl")
    result = train_single_task.main([
        "--task", task, "--preset", "smoke", "--run_name", "e2e",
        "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt"), "--max_steps", "2",
        "--task_max_steps", f"{task}:6"])  # the task's own budget (named as --task names it) wins over max_steps
    logs, ckpt = tmp_path / "logs" / "e2e", tmp_path / "ckpt" / "e2e"
    assert json.loads((logs / "config.json").read_text())["task_max_steps"] == {task: 6}
    rows = [json.loads(line) for line in (logs / "train_loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    saved = json.loads((logs / "eval.json").read_text())
    assert saved == result and result["task"] == "tiny_task" and result["val_samples"] == 3
    assert math.isfinite(result["eval_loss"]) and result["eval_loss"] != result["eval_loss_before"]
    assert (ckpt / "adapters.safetensors").is_file()
    assert (ckpt / "peft" / "adapter_config.json").is_file() and (ckpt / "peft" / "adapter_model.safetensors").is_file()


def test_a_lone_jsonl_file_gets_a_holdout_and_bad_data_is_reported(tmp_path):
    result = train_single_task.main([
        "--task", str(FIXTURES / "alpaca.jsonl"), "--preset", "smoke", "--run_name", "lone",
        "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt"), "--max_steps", "1"])
    assert result["train_samples"] + result["val_samples"] == 12 and result["val_samples"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    from utils_data import DataFormatError

    with pytest.raises(DataFormatError, match=f"{bad}:2: missing field 'output'"):
        train_single_task.main(["--task", str(bad), "--preset", "smoke", "--log_dir", str(tmp_path / "logs"),
                                "--checkpoint_dir", str(tmp_path / "ckpt")])


def test_supervised_loss_equals_the_models_own_loss(tokenizer, tiny_model):
    records = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": f"{w}!"}]}
               for w in ("hello", "a much longer answer than the first one")]
    batch = collate([SFTDataset(records, tokenizer, 64, "t")[i] for i in range(2)], tokenizer.pad_token_id)
    torch.testing.assert_close(supervised_loss(tiny_model, batch), tiny_model(**batch).loss, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_step(tokenizer, tmp_path):
    plain, plain_rows, plain_lora = run_stage(tokenizer, tmp_path, "plain", max_steps=2)
    ckpt, ckpt_rows, ckpt_lora = run_stage(tokenizer, tmp_path, "ckpt", max_steps=2, gradient_checkpointing=True)
    assert ckpt_lora.model.is_activation_checkpointing and not plain_lora.model.is_activation_checkpointing
    for a, b in zip(plain_rows, ckpt_rows):
        assert abs(a["loss"] - b["loss"]) < 1e-5
    for p, q in zip(plain_lora.slow_parameters() + plain_lora.fast_parameters(),
                    ckpt_lora.slow_parameters() + ckpt_lora.fast_parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_report_to_tensorboard_logs_losses_through_accelerate(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_single_task.main(["--task", str(FIXTURES / "alpaca.jsonl"), "--preset", "smoke", "--max_steps", "2",
                            "--report_to", "tensorboard", "--run_name", "tb", "--log_dir", str(tmp_path / "logs"),
                            "--checkpoint_dir", str(tmp_path / "ckpt"), "--export_peft", "false"])
    events = EventAccumulator(str(next((tmp_path / "logs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"train/loss", "train/lr_slow", "train/lr_fast"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("train/loss")) == 2
