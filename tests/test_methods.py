"""Every method runs a smoke sequence end to end on the one engine, and each method's defining rule holds."""
from __future__ import annotations

import pytest
import torch

import train_slsd_seq
from configs.base_config import METHOD_NAMES, PRESETS, build_config
from methods import make_method
from methods.gorp import ProjectedAdam
from methods.replay import ReplayBuffer, mixed_loader
from models.loading import load_model
from training import train_stage
from utils_data import SFTDataset, task_file

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def data_dir(small_data, monkeypatch):
    monkeypatch.setitem(PRESETS["smoke"], "data_dir", str(small_data))


def method(name: str, tokenizer, **overrides):
    config = build_config("smoke", overrides=dict(method=name, **overrides))
    torch.manual_seed(0)
    return make_method(load_model(config), tokenizer, config, CPU, None)


def task_data(name: str, tokenizer, config) -> SFTDataset:
    return SFTDataset.from_file(task_file(name, "train", config.data_dir), tokenizer, config.max_seq_len, 8)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_runs_a_smoke_sequence(name, tmp_path):
    summary = train_slsd_seq.main(["--preset", "smoke", "--method", name, "--tasks", "T2_math,T1_general",
                                   "--max_steps", "2", "--max_eval_samples", "2", "--no_plots",
                                   "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt")])
    stages = 1 if name == "multitask" else 2
    assert summary["method"] == name and len(summary["R"]) == stages and summary["AP"] is not None
    assert summary["trainable_params"] > 0 and summary["peak_memory_mb"] > 0
    assert (summary["BWT"] is None) == (name == "multitask")


def test_multitask_sees_every_task_in_one_stage(tmp_path):
    summary = train_slsd_seq.main(["--preset", "smoke", "--method", "multitask", "--tasks", "T2_math,T1_general",
                                   "--max_steps", "2", "--max_eval_samples", "2", "--no_plots",
                                   "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt")])
    (stage,) = summary["stages"]
    assert stage["task"] == "T2_math,T1_general" and stage["train_samples"] == 2 * 16
    assert stage["optimizer_steps"] == 2 * 2  # max_steps per task: the sequence's budget


def test_ablations_set_their_fields():
    assert build_config("smoke", overrides=dict(method="ds_lora")).use_slsd is False
    assert build_config("smoke", overrides=dict(method="slsd_both")).kd_branches == "both"
    assert build_config("smoke", overrides=dict(method="slsd_random")).probe_selection == "random"
    assert build_config("smoke", overrides=dict(method="ds_lora_slsd_per_task")).fast_mode == "per_task"


def test_replay_batches_hold_earlier_tasks_samples(tokenizer):
    config = build_config("smoke", overrides=dict(batch_size=4, replay_ratio=0.5))
    buffer = ReplayBuffer()
    buffer.add(task_data("T2_math", tokenizer, config), 4, seed=0, task="T2_math")
    current = task_data("T1_general", tokenizer, config)
    old = {tuple(f["input_ids"]) for f in buffer.features}
    new = {tuple(f["input_ids"]) for f in current.features}
    batches = list(mixed_loader(current, buffer, config, 1, tokenizer.pad_token_id))
    assert len(batches) == len(current) // 2
    for batch in batches:
        rows = [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
        assert sum(r in old for r in rows) == 2 and sum(r in new for r in rows) == 2


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it(tokenizer):
    ewc = method("ewc", tokenizer)
    ewc.after_stage(0, ["T2_math"], task_data("T2_math", tokenizer, ewc.config))
    assert float(ewc.penalty().detach()) == 0.0 and sum(float(f.sum()) for f in ewc.fisher) > 0
    penalties = []
    for scale in (0.01, 0.1):
        with torch.no_grad():
            for p, a in zip(ewc.params(), ewc.anchor):
                p.copy_(a + scale)
        penalties.append(float(ewc.penalty().detach()))
    assert 0 < penalties[0] < penalties[1]


def test_o_lora_keeps_earlier_loras_and_lowers_the_orthogonality_term(tokenizer, tmp_path):
    olora = method("o_lora", tokenizer, olora_lambda_orth=1.0, lr_lora=1e-2)
    with torch.no_grad():  # the first task's LoRA as training would leave it: non-zero
        for p in olora.dslora.fast_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    data = task_data("T1_general", tokenizer, olora.config)
    olora.before_stage(1, ["T1_general"], data)
    earlier = {k: v.clone() for k, v in olora.dslora.adapter_state().items() if ".fast.shared." in k}
    before = float(olora.orthogonality().detach())
    train_stage(olora.model, olora.dslora, olora.train_loader(1, data), olora.config, 6, tmp_path / "log.jsonl", CPU,
                None, aux_loss=olora.aux_loss, optimizer_factory=olora.optimizer, loss_fn=olora.loss)
    after_state = olora.dslora.adapter_state()
    assert all(torch.equal(after_state[k], v) for k, v in earlier.items())
    assert float(olora.orthogonality().detach()) < before


def test_gorp_full_rank_update_lies_in_the_projected_subspace():
    torch.manual_seed(0)
    for shape in ((6, 10), (10, 6)):  # wide and tall weights
        weight = torch.nn.Parameter(torch.randn(shape))
        optimizer = ProjectedAdam([dict(params=[weight], lr=0.1, rank=2, update_proj_gap=5, scale=1.0)])
        for _ in range(3):
            before = weight.detach().clone()
            weight.grad = torch.randn(shape)
            optimizer.step()
            delta = weight.detach() - before
            P = optimizer.state[weight]["P"]
            side = delta.t() if shape[0] > shape[1] else delta
            assert torch.linalg.norm(side - P @ (P.t() @ side)) < 1e-5 * torch.linalg.norm(side)
            assert torch.linalg.norm(delta) > 0


def test_gorp_trains_full_rank_weights_and_carries_the_first_moment(tokenizer, tmp_path):
    gorp = method("gorp", tokenizer)
    data = task_data("T2_math", tokenizer, gorp.config)
    weights = [w.detach().clone() for w in gorp.full_rank_weights()]
    train_stage(gorp.model, gorp.dslora, gorp.train_loader(0, data), gorp.config, 2, tmp_path / "log.jsonl", CPU,
                None, optimizer_factory=gorp.optimizer, loss_fn=gorp.loss)
    assert all(not torch.equal(w, before) for w, before in zip(gorp.full_rank_weights(), weights))
    gorp.after_stage(0, ["T2_math"], data)
    optimizer = gorp.optimizer()
    first = gorp.full_rank_weights()[0]
    assert torch.equal(optimizer.state[first]["exp_avg"], gorp.carried[0]["exp_avg"])


def test_gorp_keeps_its_trained_weights_in_fp32_over_a_bf16_base(tokenizer):
    gorp = method("gorp", tokenizer, base_dtype="bf16")
    assert {w.dtype for w in gorp.full_rank_weights()} == {torch.float32}  # bf16 would round small updates away
    assert gorp.model.get_input_embeddings().weight.dtype == torch.bfloat16  # the rest of the base stays bf16


def test_ilora_slow_is_the_ema_of_fast(tokenizer, tmp_path):
    ilora = method("ilora", tokenizer, ilora_ema=0.9, lr_lora=1e-2)
    data = task_data("T2_math", tokenizer, ilora.config)
    slow_before = [p.detach().clone() for p in ilora.dslora.slow_parameters()]

    def check(step, snapshot):
        fast = [p.detach() for p in ilora.dslora.fast_parameters()]
        ilora.after_step(step)
        for s, s0, f in zip(ilora.dslora.slow_parameters(), slow_before, fast):
            torch.testing.assert_close(s.detach(), 0.9 * s0 + 0.1 * f)
            s0.copy_(s.detach())

    train_stage(ilora.model, ilora.dslora, ilora.train_loader(0, data), ilora.config, 3, tmp_path / "log.jsonl", CPU,
                None, optimizer_factory=ilora.optimizer, loss_fn=ilora.loss, on_step=check)
    assert not all(torch.equal(s, f) for s, f in zip(ilora.dslora.slow_parameters(), ilora.dslora.fast_parameters()))


def test_slsd_both_lets_the_kd_loss_reach_the_fast_branch(tokenizer):
    for name, fast_moves in (("ds_lora_slsd", False), ("slsd_both", True)):
        dual = method(name, tokenizer, probe_size=2, probe_candidates=2)
        data = task_data("T2_math", tokenizer, dual.config)
        with torch.no_grad():
            for p in dual.dslora.slow_parameters() + dual.dslora.fast_parameters():
                p.add_(torch.randn_like(p) * 0.05)
        dual.before_stage(1, ["T2_math"], data)
        with torch.no_grad():  # the student drifts from the teacher so that the KD loss has a gradient
            for p in dual.dslora.slow_parameters() + dual.dslora.fast_parameters():
                p.add_(torch.randn_like(p) * 0.05)
        dual.aux_loss(dual.config.kd_every // 2).backward()  # a distillation step
        assert all(p.grad is not None for p in dual.dslora.slow_parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dual.dslora.fast_parameters()) == fast_moves


def test_every_method_reports_its_trainable_parameters(tokenizer):
    counts = {name: method(name, tokenizer).num_trainable() for name in ("seq_lora", "freeze_only", "ds_lora_slsd", "gorp")}
    assert counts["freeze_only"] < counts["seq_lora"] < counts["gorp"]
    assert counts["ds_lora_slsd"] == counts["freeze_only"]  # r_s + r_f on the same upper layers
