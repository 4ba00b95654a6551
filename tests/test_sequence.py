"""train_slsd_seq.py: the whole smoke sequence, exact resume after interruptions, run protection, per-task fast."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import sequential
import train_slsd_seq
from configs.base_config import PRESETS, build_config
from models import loading

SHORT = ["--preset", "smoke", "--tasks", "T2_math,T1_general", "--max_steps", "6", "--save_every", "2",
         "--max_eval_samples", "2", "--no_plots"]


@pytest.fixture(autouse=True)
def data_dir(small_data, monkeypatch):
    monkeypatch.setitem(PRESETS["smoke"], "data_dir", str(small_data))


def run_args(tmp_path, name, *extra):
    return [*SHORT, "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt"),
            "--run_name", name, *extra]


def final_adapters(tmp_path, name):
    return load_file(str(tmp_path / "ckpt" / name / "stage_1_T1_general" / "adapters.safetensors"))


def test_whole_default_sequence_on_the_smoke_preset(tmp_path):
    summary = train_slsd_seq.main(["--preset", "smoke", "--log_dir", str(tmp_path / "logs"),
                                   "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", "full"])
    tasks = build_config().tasks
    assert summary["tasks"] == tasks and len(summary["R"]) == 5 and all(len(row) == 5 for row in summary["R"])
    for key in ("AP", "BWT", "FWT", "forgetting"):
        assert summary[key] is not None
    log = tmp_path / "logs" / "full"
    rows = [json.loads(line) for line in (log / "eval.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 5 and {r["stage"] for r in rows} == set(range(-1, 5))  # base + every stage, every task
    stages = [json.loads(line) for line in (log / "stages.jsonl").read_text().splitlines()]
    assert stages[0].get("probe_kept") is None and all(s["probe_kept"] > 0 for s in stages[1:])  # SLSD from stage 2
    assert all(s["probe_bytes_per_token"] <= 1024 and s["peak_memory_mb"] > 0 for s in stages[1:])
    assert any("aux_loss" in json.loads(line) for line in (log / "train_loss.jsonl").read_text().splitlines())
    for k, task in enumerate(tasks):
        assert (tmp_path / "ckpt" / "full" / f"stage_{k}_{task}" / "peft" / "adapter_config.json").is_file()
    for figure in ("train_loss.png", "eval_by_task.png", "score_matrix.png"):
        assert (log / figure).stat().st_size > 1000


# each method with the state it carries; and DS-LoRA + SLSD under bf16 autocast over a bf16 base (what precision
# auto runs on CUDA and on a CPU with native bf16): resume stays exact there too
@pytest.mark.parametrize("method, numerics", [("ds_lora_slsd", "fp32"), ("ewc", "fp32"), ("gorp", "fp32"),
                                              ("ilora", "fp32"), ("ds_lora_slsd", "bf16")])
def test_resume_after_interruptions_equals_an_uninterrupted_run(tmp_path, monkeypatch, method, numerics):
    def args(name: str) -> list[str]:
        return run_args(tmp_path, name, "--method", method, "--precision", numerics, "--base_dtype", numerics)

    reference = train_slsd_seq.main(args("straight"))

    # 1. interrupted at a stage boundary: stage 1 trained and saved, its evaluation never ran
    original_eval = sequential.Sequence.evaluate_all

    def stop_after_first_stage(self, stage, label):
        if stage == 0:
            raise KeyboardInterrupt
        return original_eval(self, stage, label)

    monkeypatch.setattr(sequential.Sequence, "evaluate_all", stop_after_first_stage)
    with pytest.raises(KeyboardInterrupt):
        train_slsd_seq.main(args("boundary"))
    monkeypatch.setattr(sequential.Sequence, "evaluate_all", original_eval)
    resumed = train_slsd_seq.main(args("boundary"))

    # 2. interrupted mid-stage: stage 2 stops after step 5 (its last checkpoint is step 4)
    original_train = sequential.train_stage

    def crash_in_stage_2(*a, **kw):
        save = kw["on_step"]

        def on_step(step, snapshot):
            save(step, snapshot)
            if "stage 2/2" in kw["desc"] and step == 5:
                raise KeyboardInterrupt

        return original_train(*a, **dict(kw, on_step=on_step))

    monkeypatch.setattr(sequential, "train_stage", crash_in_stage_2)
    with pytest.raises(KeyboardInterrupt):
        train_slsd_seq.main(args("midstage"))
    assert (tmp_path / "ckpt" / "midstage" / "stage_1_T1_general.partial" / "trainer_state.pt").is_file()
    monkeypatch.setattr(sequential, "train_stage", original_train)
    mid = train_slsd_seq.main(args("midstage"))

    for other, name in ((resumed, "boundary"), (mid, "midstage")):
        assert other["R"] == reference["R"] and other["loss_matrix"] == reference["loss_matrix"]
        expected, got = final_adapters(tmp_path, "straight"), final_adapters(tmp_path, name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert not (tmp_path / "ckpt" / "midstage" / "stage_1_T1_general.partial").exists()


def test_precision_auto_on_a_native_bf16_cpu_trains_as_explicit_bf16(tmp_path, monkeypatch):
    """precision auto on a CPU with native bf16 stores the base in bf16 and must autocast the training forward too
    (the accelerator's mixed precision, not fp32): the same run as precision bf16, not a dtype error."""
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    auto = train_slsd_seq.main(run_args(tmp_path, "auto", "--precision", "auto", "--base_dtype", "auto"))
    explicit = train_slsd_seq.main(run_args(tmp_path, "bf16", "--precision", "bf16", "--base_dtype", "bf16"))
    assert auto["R"] == explicit["R"] and auto["loss_matrix"] == explicit["loss_matrix"]
    expected, got = final_adapters(tmp_path, "bf16"), final_adapters(tmp_path, "auto")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_rerun_skips_finished_stages_and_a_changed_config_is_refused(tmp_path, capsys):
    train_slsd_seq.main(run_args(tmp_path, "guarded"))
    steps_before = (tmp_path / "logs" / "guarded" / "train_loss.jsonl").read_text()
    train_slsd_seq.main(run_args(tmp_path, "guarded"))  # everything done: nothing retrained
    assert (tmp_path / "logs" / "guarded" / "train_loss.jsonl").read_text() == steps_before
    saved = tmp_path / "logs" / "guarded" / "config.json"  # the probe's fields are not the run's: a run saved
    fields = json.loads(saved.read_text())  # before one existed, or with other values, is the same run
    del fields["recovery_lr_scale"]
    saved.write_text(json.dumps(fields))
    train_slsd_seq.main(run_args(tmp_path, "guarded", "--recovery_steps", "9"))
    assert (tmp_path / "logs" / "guarded" / "train_loss.jsonl").read_text() == steps_before
    with pytest.raises(SystemExit) as exit_info:
        train_slsd_seq.main(run_args(tmp_path, "guarded", "--lr_fast", "0.01"))
    assert exit_info.value.code == 2 and "different config" in capsys.readouterr().err
    summary = train_slsd_seq.main(run_args(tmp_path, "guarded", "--lr_fast", "0.01", "--overwrite"))
    assert json.loads((tmp_path / "logs" / "guarded" / "config.json").read_text())["lr_fast"] == 0.01
    assert len(summary["R"]) == 2


def test_per_task_fast_branches_are_kept_and_used_for_their_task(tmp_path):
    train_slsd_seq.main(run_args(tmp_path, "pertask", "--fast_mode", "per_task", "--use_slsd", "false"))
    saved = load_file(str(tmp_path / "ckpt" / "pertask" / "stage_1_T1_general" / "adapters.safetensors"))
    assert any(".fast.T2_math." in k for k in saved) and any(".fast.T1_general." in k for k in saved)
    first = load_file(str(tmp_path / "ckpt" / "pertask" / "stage_0_T2_math" / "adapters.safetensors"))
    key = next(k for k in first if ".fast.T2_math.lora_B" in k)
    assert torch.equal(first[key], saved[key])  # T2's fast branch frozen while T1 trained
