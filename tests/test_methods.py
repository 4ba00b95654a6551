"""Every method runs a smoke sequence end to end on the one engine, and each method's defining rule holds."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from itertools import islice
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import train_single_task
import train_slsd_seq
from configs.base_config import METHOD_NAMES, PRESETS, Config, build_config
from methods import make_method
from methods.components import ReplayBuffer
from methods.gorp import ProjectedAdam
from models.loading import load_model
from tests.conftest import FIXTURES
from sequential import Sequence
from training import batches_forever, train_stage
from utils_data import SFTDataset, collate, task_file

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


@pytest.mark.parametrize("method, steps", [("seq_lora", [2, 3]), ("multitask", [2 + 3])])
def test_a_stage_trains_for_its_tasks_budgets(tmp_path, capsys, method, steps):
    """max_steps per task, task_max_steps for the tasks it names; multitask's one stage gets the sum, the
    sequence's budget. A name that is not among the tasks is reported."""
    summary = train_slsd_seq.main(["--preset", "smoke", "--method", method, "--tasks", "T2_math,T1_general",
                                   "--max_steps", "2", "--task_max_steps", "T1_general:3,T2_maths:7",
                                   "--max_eval_samples", "2", "--no_plots", "--eval_scope", "needed",
                                   "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt")])
    assert [stage["optimizer_steps"] for stage in summary["stages"]] == steps
    assert "task_max_steps names T2_maths, not among tasks: ignored" in capsys.readouterr().out
    if method == "multitask":
        (stage,) = summary["stages"]
        assert stage["task"] == "T2_math,T1_general" and stage["train_samples"] == 2 * 16


def test_ablations_set_their_fields():
    assert build_config("smoke", overrides=dict(method="ds_lora")).use_slsd is False
    assert build_config("smoke", overrides=dict(method="slsd_both")).kd_branches == "both"
    assert build_config("smoke", overrides=dict(method="slsd_random")).probe_selection == "random"
    assert build_config("smoke", overrides=dict(method="ds_lora_slsd_per_task")).fast_mode == "per_task"


def test_multitask_gives_each_task_the_samples_of_its_own_stage(tokenizer):
    """With step budgets, multitask's one stage holds, of each task, the samples its own stage of a sequence draws:
    its budget (past its data: later passes; length-grouped batches, accumulated micro-batches), not its share of the
    union."""
    budgets = {"T2_math": 3, "T1_general": 14}  # x 3 x 2 per step: 18 of T2's ~20 samples; 84 of T1's, 4+ passes
    fields = dict(tasks="T2_math,T1_general", batch_size=3, grad_accum_steps=2, group_by_length=True)
    config = build_config("smoke", overrides=dict(method="multitask", task_max_steps=budgets, **fields))
    engine = SimpleNamespace(config=config, tokenizer=tokenizer)
    samples = lambda loader, count: [tuple(ids[mask.bool()].tolist()) for batch in islice(batches_forever(loader), count)
                                     for ids, mask in zip(batch["input_ids"], batch["attention_mask"])][:count]
    per_task = {task: steps * 3 * 2 for task, steps in budgets.items()}
    mixed = samples(method("multitask", tokenizer, task_max_steps=budgets, **fields).train_loader(
        0, Sequence.stage_dataset(engine, config.tasks)), sum(per_task.values()))
    seq_lora = method("seq_lora", tokenizer, **fields)
    own = {}
    for stage, task in enumerate(config.tasks):
        alone = Sequence.stage_dataset(engine, [task])
        own[task] = {tuple(feature["input_ids"]) for feature in alone.features}
        assert Counter(row for row in mixed if row in own[task]) == Counter(
            samples(seq_lora.train_loader(stage, alone), per_task[task]))
    assert mixed != sorted(mixed, key=lambda row: row in own["T1_general"])  # interleaved, not task after task


def test_replay_batches_hold_earlier_tasks_samples(tokenizer):
    config = build_config("smoke", overrides=dict(batch_size=4, replay_ratio=0.5))
    buffer = ReplayBuffer(config, tokenizer.pad_token_id)
    buffer.add(task_data("T2_math", tokenizer, config), 4, seed=0, task="T2_math")
    current = task_data("T1_general", tokenizer, config)
    old = {tuple(f["input_ids"]) for f in buffer.features}
    new = {tuple(f["input_ids"]) for f in current.features}
    batches = list(buffer.train_loader(1, current))
    assert len(batches) == len(current) // 2
    for batch in batches:
        rows = [tuple(r[m.bool()].tolist()) for r, m in zip(batch["input_ids"], batch["attention_mask"])]
        assert sum(r in old for r in rows) == 2 and sum(r in new for r in rows) == 2


def test_a_held_replay_buffer_reaches_the_methods_hooks_and_checkpoint(tokenizer):
    """Replay holds a ReplayBuffer and overrides none of the stage hooks: after stage 0 its loader mixes the buffer in
    (the ``replayed`` mask), its state_dict carries the buffer, and a fresh Replay loaded from that state gives the same
    batches (resume). Fails if Method's hooks stopped calling the held pieces' hooks."""
    replay = method("replay", tokenizer, batch_size=4, replay_ratio=0.5)
    math, general = (task_data(name, tokenizer, replay.config) for name in ("T2_math", "T1_general"))
    assert "replayed" not in next(iter(replay.train_loader(0, math)))
    replay.after_stage(0, ["T2_math"], math)
    batch = next(iter(replay.train_loader(1, general)))
    assert batch["replayed"].tolist() == [False, False, True, True]
    resumed = method("replay", tokenizer, batch_size=4, replay_ratio=0.5)
    resumed.load_state_dict(replay.state_dict())
    assert torch.equal(next(iter(resumed.train_loader(1, general)))["input_ids"], batch["input_ids"])


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
    before = float(olora.loras.orthogonality().detach())
    train_stage(olora.model, olora.dslora, olora.train_loader(1, data), olora.config, 6, tmp_path / "log.jsonl", CPU,
                None, aux_loss=olora.aux_loss, optimizer_factory=olora.optimizer, loss_fn=olora.loss)
    after_state = olora.dslora.adapter_state()
    assert all(torch.equal(after_state[k], v) for k, v in earlier.items())
    assert float(olora.loras.orthogonality().detach()) < before


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


def test_the_recovery_probe_trains_gorp_from_an_empty_optimizer(tokenizer, tmp_path, monkeypatch):
    """The probe from the final checkpoint and its control from the base model train alike: the moments GORP
    carried out of the last stage are not in the probe's optimizer."""
    import recovery_probe

    gorp = method("gorp", tokenizer)
    data = task_data("T2_math", tokenizer, gorp.config)
    train_stage(gorp.model, gorp.dslora, gorp.train_loader(0, data), gorp.config, 2, tmp_path / "log.jsonl", CPU,
                None, optimizer_factory=gorp.optimizer, loss_fn=gorp.loss)
    gorp.after_stage(0, ["T2_math"], data)
    assert gorp.carried  # what the sequence's next stage would start from
    checkpoint = tmp_path / "final"  # as the sequence saves a stage: adapters and the method's state
    gorp.dslora.save(checkpoint / "adapters.safetensors")
    torch.save(gorp.state_dict(), checkpoint / "method_state.pt")
    probed = method("gorp", tokenizer)

    class Started(Exception):
        pass

    def first_step(model, dslora, loader, config, steps, log_path, device, amp_dtype, optimizer_factory, **_):
        optimizer = optimizer_factory()
        raise Started([optimizer.state[w] for w in probed.full_rank_weights()])

    monkeypatch.setattr(recovery_probe, "train_stage", first_step)
    with pytest.raises(Started) as started:  # the probe loads the checkpoint (and its moments), then trains
        recovery_probe.probe_task(probed, "T2_math", 0, checkpoint, [], None, 2, tmp_path / "probe.jsonl")
    assert all(not state for state in started.value.args[0])


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


# ---- LwF -------------------------------------------------------------------------------------------------------
def lwf_at_stage_1(tokenizer, **overrides):
    """LwF at the start of its second stage: the previous stage's LoRA non-zero and kept as the teacher."""
    lwf = method("lwf", tokenizer, **overrides)
    data = task_data("T2_math", tokenizer, lwf.config)
    with torch.no_grad():
        for p in lwf.dslora.fast_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    lwf.before_stage(1, ["T2_math"], data)
    return lwf, data


def test_lwf_teacher_is_the_previous_stage_model_after_a_stage(tokenizer, tmp_path):
    """After a stage the kept teacher is still the model the previous stage left, in eval mode, not the student
    (a snapshot that is a view of the parameters, as ``.float().cpu()`` of an fp32 CPU tensor is, follows them)."""
    from training import supervised_logits

    lwf, data = lwf_at_stage_1(tokenizer)
    model, params = lwf.model, lwf.dslora.fast_parameters()
    previous = [p.detach().clone() for p in params]
    batch = next(iter(lwf.train_loader(1, data)))
    model.eval()
    with torch.no_grad():
        previous_logits = supervised_logits(model, batch)[0]
    train_stage(model, lwf.dslora, lwf.train_loader(1, data), lwf.config, 1, tmp_path / "log.jsonl", CPU, None,
                optimizer_factory=lwf.optimizer, loss_fn=lwf.loss)
    student = [p.detach().clone() for p in params]
    assert not any(torch.equal(s, p) for s, p in zip(student, previous))  # the stage moved the student
    with lwf.dslora.swapped(lwf.teacher_state):
        assert all(torch.equal(t, p) for t, p in zip(params, previous))  # the teacher: the previous stage's LoRA
    assert all(torch.equal(p, s) for p, s in zip(params, student))  # and the student is back
    teacher_logits = lwf.teacher_logits(model, batch)
    assert torch.equal(teacher_logits, previous_logits)
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(supervised_logits(model, batch)[0], teacher_logits)


def test_lwf_teacher_pass_is_deterministic_and_leaves_the_training_random_stream_alone(tokenizer):
    """With dropout on, the teacher pass draws no random numbers (the student's dropout masks are Seq-LoRA's: at
    λ = 0 LwF's loss is the supervised loss, draw for draw), and two teacher passes on one batch agree exactly."""
    from training import supervised_loss

    lwf, data = lwf_at_stage_1(tokenizer, lwf_lambda=0.0)
    assert lwf.config.lora_dropout > 0
    model, batch = lwf.model, next(iter(lwf.train_loader(1, data)))
    model.train()
    torch.manual_seed(1)
    with_teacher = lwf.loss(model, batch)
    torch.manual_seed(1)
    assert torch.equal(with_teacher, supervised_loss(model, batch))
    rng = torch.get_rng_state()
    first = lwf.teacher_logits(model, batch)
    assert torch.equal(lwf.teacher_logits(model, batch), first)
    assert torch.equal(torch.get_rng_state(), rng) and model.training  # train mode is back for the student


# ---- EWC, GORP, O-LoRA, I-LoRA and train_single_task (issue 17, items 6-9) -------------------------------------------
def perturbed(m, *groups, scale: float = 0.1, seed: int = 0):
    """Add seeded noise to parameter lists (fresh LoRAs have B = 0, so some gradients and terms would vanish)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [p for group in groups for p in group]:
            p.add_(torch.randn(p.shape, generator=generator) * scale)
    return m


def run_stage(m, stage: int, task: str, tmp_path, steps: int | None = None) -> dict:
    """One stage of the engine's hooks (as sequential.py calls them); returns after_stage's figures."""
    data = task_data(task, m.tokenizer, m.config)
    m.before_stage(stage, [task], data)
    torch.manual_seed(100 + stage)
    train_stage(m.model, m.dslora, m.train_loader(stage, data), m.config, steps or m.config.max_steps,
                tmp_path / f"{m.name}_{stage}.jsonl", CPU, None, aux_loss=m.aux_loss, optimizer_factory=m.optimizer,
                loss_fn=m.loss, on_step=lambda step, _snapshot: m.after_step(step))
    return m.after_stage(stage, [task], data)


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in params])


def test_ewc_fisher_is_the_mean_of_per_sample_squared_sequence_gradients(tokenizer):
    ewc = method("ewc", tokenizer, ewc_batches=2, batch_size=2)
    perturbed(ewc, ewc.params())
    data = task_data("T2_math", tokenizer, ewc.config)
    ewc.after_stage(0, ["T2_math"], data)
    chosen = ewc.fisher_samples(0, data)
    assert len(chosen) == 4 and len(set(chosen)) == 4
    expected = [torch.zeros_like(p) for p in ewc.params()]
    ewc.model.eval()
    for index in chosen:  # the model's own loss (token mean) × tokens = the sequence's negative log-likelihood
        batch = collate([data[index]], tokenizer.pad_token_id)
        tokens = int((batch["labels"][:, 1:] != -100).sum())
        grads = torch.autograd.grad(ewc.model(**batch).loss * tokens, ewc.params())
        for e, g in zip(expected, grads):
            e += g ** 2 / len(chosen)
    for f, e in zip(ewc.fisher, expected):
        torch.testing.assert_close(f, e, rtol=1e-4, atol=1e-10)
    assert sum(float(f.sum()) for f in ewc.fisher) > 0


def test_ewc_penalty_changes_training_against_seq_lora_on_the_same_data(tokenizer, tmp_path):
    ends, starts, figures = {}, {}, {}
    for name in ("seq_lora", "ewc"):
        m = method(name, tokenizer)
        run_stage(m, 0, "T2_math", tmp_path)
        starts[name] = flat(m.dslora.fast_parameters())
        figures[name] = run_stage(m, 1, "T1_general", tmp_path)
        ends[name] = flat(m.dslora.fast_parameters())
    torch.testing.assert_close(starts["ewc"], starts["seq_lora"])  # the same first stage: only the penalty differs
    moved = torch.linalg.norm(ends["seq_lora"] - starts["seq_lora"])
    assert torch.linalg.norm(ends["ewc"] - ends["seq_lora"]) > 0.1 * moved
    assert figures["ewc"]["ewc_penalty_to_task_loss"] > 0.01 and "ewc_penalty_to_task_loss" not in figures["seq_lora"]


def test_gorp_adds_no_loss_term_and_o_lora_adds_exactly_its_own(tokenizer):
    gorp, olora = method("gorp", tokenizer), method("o_lora", tokenizer)
    for m in (gorp, olora):
        perturbed(m, m.dslora.fast_parameters())
        m.before_stage(1, ["T1_general"], task_data("T1_general", tokenizer, m.config))
        assert len(m.dslora.fast_names) == 2  # an earlier LoRA to be orthogonal to
    assert gorp.aux_loss(1) is None
    expected = sum((old.lora_A @ new.fast[new.active_fast].lora_A.T).abs().sum()
                   for new in olora.dslora.modules.values() for name, old in new.fast.items() if name != new.active_fast)
    torch.testing.assert_close(olora.aux_loss(1), olora.config.olora_lambda_orth * expected)


def test_stage_figures_give_each_terms_ratio_to_the_task_loss(tokenizer, tmp_path):
    olora = method("o_lora", tokenizer)
    perturbed(olora, olora.dslora.fast_parameters())  # the first task's LoRA as training would leave it
    figures = run_stage(olora, 1, "T1_general", tmp_path, steps=3)
    rows = [json.loads(line) for line in (tmp_path / "o_lora_1.jsonl").read_text().splitlines()]
    task = sum(r["loss"] for r in rows) / len(rows)
    aux = sum(r["aux_loss"] for r in rows) / len(rows)  # λ2 = 0: the aux loss is λ1 · orthogonality alone
    assert figures["task_loss_mean"] == pytest.approx(task, rel=1e-5)
    assert figures["orthogonality_to_task_loss"] == pytest.approx(aux / task, rel=1e-5)
    assert figures["l2_to_task_loss"] == 0.0


def ilora_at_stage_two(tokenizer, **overrides):
    """I-LoRA after a first stage (a buffer of its samples), both learners moved apart, and a second-task batch."""
    ilora = method("ilora", tokenizer, batch_size=4, **overrides)
    ilora.after_stage(0, ["T2_math"], task_data("T2_math", tokenizer, ilora.config))
    perturbed(ilora, ilora.dslora.slow_parameters(), seed=1)
    perturbed(ilora, ilora.dslora.fast_parameters(), seed=2)
    batch = next(iter(ilora.train_loader(1, task_data("T1_general", tokenizer, ilora.config))))
    return ilora, batch


def test_ilora_gradients_are_the_same_with_gradient_checkpointing(tokenizer):
    grads = []
    for checkpointing in (False, True):
        ilora, batch = ilora_at_stage_two(tokenizer, gradient_checkpointing=checkpointing)
        assert ilora.model.is_activation_checkpointing == checkpointing
        ilora.model.train()
        ilora.loss(ilora.model, batch).backward()
        grads.append(flat(p.grad for p in ilora.dslora.fast_parameters()))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_ilora_consistency_follows_the_replay_mask_not_the_row_order(tokenizer):
    ilora, batch = ilora_at_stage_two(tokenizer)
    assert batch["replayed"].tolist() == [False, False, True, True]
    ilora.model.eval()  # no dropout: the same rows give the same loss
    with torch.no_grad():
        loss = ilora.loss(ilora.model, batch)
        shuffled = ilora.loss(ilora.model, {k: v[torch.tensor([2, 0, 3, 1])] for k, v in batch.items()})
        unmarked = ilora.loss(ilora.model, dict(batch, replayed=torch.zeros(4, dtype=torch.bool)))
    torch.testing.assert_close(shuffled, loss)
    assert loss > unmarked + 1e-4  # the consistency term acts on the marked rows only


def test_train_single_task_trains_the_named_methods_single_task_form(tmp_path):
    result = train_single_task.main([
        "--task", str(FIXTURES / "tiny_task" / "train.jsonl"), "--preset", "smoke", "--method", "seq_lora",
        "--lr_lora", "5e-4", "--max_steps", "2", "--export_peft", "false", "--run_name", "seq",
        "--log_dir", str(tmp_path / "logs"), "--checkpoint_dir", str(tmp_path / "ckpt")])
    rows = [json.loads(line) for line in (tmp_path / "logs" / "seq" / "train_loss.jsonl").read_text().splitlines()]
    assert [sorted(k for k in r if k.startswith("lr_")) for r in rows] == [["lr_lora"], ["lr_lora"]]
    assert rows[0]["lr_lora"] == pytest.approx(5e-4)  # no warm-up in the smoke preset: the first step runs at lr_lora
    adapters = load_file(str(tmp_path / "ckpt" / "seq" / "adapters.safetensors"))
    config = build_config("smoke")
    assert not any(".slow." in k for k in adapters)  # Seq-LoRA's one LoRA, not DS-LoRA's two branches
    assert {v.shape[0] for k, v in adapters.items() if k.endswith("lora_A")} == {config.lora_r_slow + config.lora_r_fast}
    assert result["method"] == "seq_lora" and result["eval_loss"] != result["eval_loss_before"]


def test_train_single_task_refuses_fields_that_act_only_in_a_sequence(capsys):
    with pytest.raises(SystemExit) as stopped:
        train_single_task.main(["--task", "T2_math", "--preset", "smoke", "--method", "replay", "--replay_ratio", "0.25"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "config field 'replay_ratio'" in error and "train_slsd_seq.py" in error
    assert set(train_single_task.SEQUENCE_ONLY) <= {f.name for f in dataclasses.fields(Config)}  # no stale names




def test_fast_mode_reset_clears_the_fast_branch_after_the_teacher_saw_it(tokenizer):
    """reset: every task after the first starts from ΔW_fast = 0 (B_fast = 0), and SLSD's teacher is the model as the
    previous stage left it, fast branch included; shared keeps the branch as it was."""
    fast, teachers = {}, {}
    for mode in ("shared", "reset"):
        ds = method("ds_lora_slsd", tokenizer, fast_mode=mode)
        data = task_data("T2_math", tokenizer, ds.config)
        with torch.no_grad():
            for p in ds.dslora.fast_parameters():
                p.add_(0.1)  # what a first stage would leave behind
        ds.before_stage(1, ["T1_general"], data)
        fast[mode] = {m: (b.fast[b.active_fast].lora_A.detach().clone(), b.fast[b.active_fast].lora_B.detach().clone())
                      for m, b in ds.dslora.modules.items()}
        teachers[mode] = [probe.teacher_topk_logp for probe in ds.slsd.probes]
    assert all(torch.count_nonzero(B) == 0 for _, B in fast["reset"].values())
    assert all(torch.count_nonzero(B) > 0 for _, B in fast["shared"].values())
    assert teachers["reset"] and all(torch.equal(a, b) for a, b in zip(teachers["shared"], teachers["reset"]))
