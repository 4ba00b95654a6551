"""DS-LoRA: placement, freezing, learning rates, branch switches, save/load, PEFT export, merging, architectures."""
from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from torch import nn
from transformers import (AutoModelForCausalLM, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, PhiConfig,
                          Qwen2Config)

from configs.base_config import build_config
from models.ds_lora import DSLoRA, DualSpeedLinear, find_decoder_layers
from models.loading import load_model
from training import make_optimizer

CPU = torch.device("cpu")


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def one_step(model, dslora, batch, config):
    model.train()
    optimizer = make_optimizer(dslora, config)
    loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    return optimizer


def test_lower_layers_have_no_lora_and_upper_layers_do(tiny_dslora):
    _, blocks = find_decoder_layers(tiny_dslora.model)
    assert tiny_dslora.num_frozen == 2 and len(blocks) == 4
    for index, block in enumerate(blocks):
        wrapped = [m for m in block.modules() if isinstance(m, DualSpeedLinear)]
        if index < tiny_dslora.num_frozen:
            assert wrapped == []
            assert all(not p.requires_grad for p in block.parameters())
        else:  # all seven LLaMA projections carry both branches
            assert len(wrapped) == 7


def test_w0_frozen_and_lower_layers_unchanged_by_a_step(tiny_model, tiny_dslora, token_batch, smoke_config):
    base_before = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if "lora_" not in n}
    assert all(not p.requires_grad for n, p in tiny_model.named_parameters() if "lora_" not in n)
    one_step(tiny_model, tiny_dslora, token_batch, smoke_config)
    for name, p in tiny_model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, base_before[name]), name


def test_slow_and_fast_get_their_own_learning_rates_and_both_move(tiny_model, tiny_dslora, token_batch, smoke_config):
    slow_before = [p.detach().clone() for p in tiny_dslora.slow_parameters()]
    fast_before = [p.detach().clone() for p in tiny_dslora.fast_parameters()]
    optimizer = one_step(tiny_model, tiny_dslora, token_batch, smoke_config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["slow"]["lr"] == smoke_config.lr_slow and groups["fast"]["lr"] == smoke_config.lr_fast
    assert {id(p) for p in groups["slow"]["params"]} == {id(p) for p in tiny_dslora.slow_parameters()}
    assert {id(p) for p in groups["fast"]["params"]} == {id(p) for p in tiny_dslora.fast_parameters()}
    slow_move = max((a - b).abs().max().item() for a, b in zip(tiny_dslora.slow_parameters(), slow_before))
    fast_move = max((a - b).abs().max().item() for a, b in zip(tiny_dslora.fast_parameters(), fast_before))
    assert slow_move > 0 and fast_move > 0
    # Adam's first step moves each weight by about its learning rate: the fast branch moves lr_fast/lr_slow further.
    assert fast_move / slow_move == pytest.approx(smoke_config.lr_fast / smoke_config.lr_slow, rel=0.2)


def test_branch_switches(tiny_model, token_batch, smoke_config):
    base = logits(tiny_model, token_batch)
    dslora = DSLoRA.from_config(tiny_model, smoke_config)
    assert torch.allclose(logits(tiny_model, token_batch), base)  # B = 0 at creation: ΔW = 0
    with torch.no_grad():
        for p in dslora.slow_parameters() + dslora.fast_parameters():
            p.normal_(0, 0.1)
    both = logits(tiny_model, token_batch)
    with dslora.branches(slow=True, fast=False):
        slow_only = logits(tiny_model, token_batch)
    with dslora.branches(slow=False, fast=True):
        fast_only = logits(tiny_model, token_batch)
    with dslora.branches(slow=False, fast=False):
        off = logits(tiny_model, token_batch)
    assert not torch.allclose(both, slow_only) and not torch.allclose(both, fast_only)
    assert not torch.allclose(slow_only, fast_only)
    assert torch.equal(off, base)
    assert torch.equal(logits(tiny_model, token_batch), both)  # switches restored on exit


def test_fast_grad_off_keeps_fast_in_output_but_out_of_the_graph(tiny_model, tiny_dslora, token_batch):
    both = logits(tiny_model, token_batch)
    with tiny_dslora.branches(fast_grad=False):
        assert torch.equal(logits(tiny_model, token_batch), both)
        tiny_model(**token_batch, labels=token_batch["input_ids"]).loss.backward()
    assert all(p.grad is None for p in tiny_dslora.fast_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_dslora.slow_parameters())


def test_per_task_fast_branches(tiny_model, tiny_dslora, token_batch, smoke_config):
    first = logits(tiny_model, token_batch)
    tiny_dslora.add_fast("T2_math")
    assert tiny_dslora.active_fast == "T2_math" and tiny_dslora.fast_names == ["shared", "T2_math"]
    with tiny_dslora.branches(fast=False):
        slow_only = logits(tiny_model, token_batch)
    torch.testing.assert_close(logits(tiny_model, token_batch), slow_only)  # the new fast branch starts at ΔW = 0
    groups = {g["name"]: g for g in tiny_dslora.param_groups(1e-3, 1e-2)}
    assert {id(p) for p in groups["fast"]["params"]} == {id(p) for p in tiny_dslora.fast_parameters("T2_math")}
    assert all(not p.requires_grad for p in tiny_dslora.fast_parameters("shared"))  # earlier fast branch frozen
    tiny_dslora.set_active_fast("shared")
    assert torch.equal(logits(tiny_model, token_batch), first)
    tiny_dslora.reset_fast()
    torch.testing.assert_close(logits(tiny_model, token_batch), slow_only)
    with pytest.raises(KeyError, match="no fast branch named 'T9'"):
        tiny_dslora.set_active_fast("T9")


def test_save_and_load_round_trip(tiny_dslora, token_batch, smoke_config, tmp_path):
    tiny_dslora.add_fast("T2_math")
    with torch.no_grad():
        for p in tiny_dslora.fast_parameters():
            p.normal_(0, 0.1)
    expected = logits(tiny_dslora.model, token_batch)
    tiny_dslora.save(tmp_path / "adapters.safetensors")
    other = DSLoRA.from_config(load_model(smoke_config), smoke_config)
    assert not torch.allclose(logits(other.model, token_batch), expected)
    other.load(tmp_path / "adapters.safetensors")
    assert other.fast_names == ["shared", "T2_math"] and other.active_fast == "T2_math"
    assert torch.equal(logits(other.model, token_batch), expected)


def test_peft_export_loads_and_matches_logits(tiny_dslora, token_batch, smoke_config, tmp_path):
    from peft import PeftModel

    expected = logits(tiny_dslora.model, token_batch)
    tiny_dslora.export_peft(tmp_path / "peft")
    base = load_model(smoke_config)
    base_logits = logits(base, token_batch)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "peft"))
    got = logits(peft_model, token_batch)
    assert not torch.allclose(base_logits, expected)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_merge_into_base_matches_logits(tiny_dslora, token_batch):
    expected = logits(tiny_dslora.model, token_batch)
    merged = tiny_dslora.merge_and_unload()
    assert not any(isinstance(m, DualSpeedLinear) for m in merged.modules())
    torch.testing.assert_close(logits(merged, token_batch), expected, atol=1e-4, rtol=1e-4)


def test_merged_inference_matches_the_branches_and_restores_w0_exactly(tiny_dslora, token_batch):
    """fp32 base, fp32 matmuls: every layer runs on its folded weight W0 + ΔW, equal to the branches up to fp32
    rounding (the tolerance), and W0 is untouched."""
    expected = logits(tiny_dslora.model, token_batch)
    w0 = {name: m.base.weight.detach().clone() for name, m in tiny_dslora.modules.items()}
    with tiny_dslora.merged():
        assert all(m.merged for m in tiny_dslora.modules.values())
        got = logits(tiny_dslora.model, token_batch)
        assert all(m.folded is not None for m in tiny_dslora.modules.values())  # the fast path ran
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert all(torch.equal(m.base.weight, w0[name]) and not m.merged and m.folded is None
               for name, m in tiny_dslora.modules.items())
    torch.testing.assert_close(logits(tiny_dslora.model, token_batch), expected, atol=0, rtol=0)


def realistic_update(config, relative: float = 2.5e-4) -> DSLoRA:
    """DS-LoRA on the smoke model with random slow and fast branches, each scaled per layer to
    ‖ΔW‖ = relative·‖W0‖ (2.5e-4: the adapters after two stages of `make run`)."""
    dslora = DSLoRA.from_config(load_model(config), config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in dslora.modules.values():
            for branch in (m.slow, m.fast[m.active_fast]):
                for p in (branch.lora_A, branch.lora_B):
                    p.copy_(torch.randn(p.shape, generator=generator))
                delta = branch.scaling * branch.lora_B @ branch.lora_A
                branch.lora_B.mul_(relative * m.base.weight.float().norm() / delta.norm())
    return dslora


def bf16_logits(model, batch):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return logits(model, batch).float()


@pytest.mark.parametrize("base_dtype", ["bf16", "fp32"])
def test_merged_inference_under_bf16_matmuls_is_the_unmerged_model(base_dtype, token_batch):
    """Under bf16 autocast (the CUDA default; bf16 base, or fp32 base cast by autocast) a fold W0 + ΔW is rounded to
    bf16, which keeps 8 significant bits: most entries of a realistic ΔW vanish and merged inference is another model
    than the trained one. Tolerance 0, because merged() must then run the unmerged forward itself, the one the model
    was trained with. A bf16-noise tolerance could not see the defect on this random tiny model: the old bf16 fold
    moved its logits by at most 3.9e-3, the bf16 forward itself is 5.3e-3 from fp32."""
    config = build_config("smoke", overrides=dict(base_dtype=base_dtype, precision="bf16"))
    dslora = realistic_update(config)
    layer = next(iter(dslora.modules.values()))
    w0 = layer.base.weight.bfloat16()  # (a LLaMA layer: nn.Linear's layout, as ΔW's)
    rounded_away = ((w0 + layer.delta_weight().bfloat16()) == w0).float().mean()
    assert rounded_away > 0.5  # the regime of the defect: a bf16 fold would drop most of ΔW
    unmerged = bf16_logits(dslora.model, token_batch)
    with dslora.branches(slow=False, fast=False):
        assert not torch.equal(bf16_logits(dslora.model, token_batch), unmerged)  # the adapters change the output
    with dslora.merged():
        merged = bf16_logits(dslora.model, token_batch)
    torch.testing.assert_close(merged, unmerged, atol=0, rtol=0)


def test_slsd_teacher_targets_under_merge_are_the_unmerged_models_on_a_bf16_base(tokenizer):
    """SLSD's teacher pass runs under merged() (merge_for_eval): its targets must be the previous stage's model's."""
    from slsd import build_probe_buffer
    from utils_data import SFTDataset

    config = build_config("smoke", overrides=dict(base_dtype="bf16", precision="bf16"))
    dslora = realistic_update(config)
    records = [dict(messages=[dict(role="user", content=f"What is {a} + {a}?"),
                              dict(role="assistant", content=str(2 * a))]) for a in range(4)]
    data = SFTDataset(records, tokenizer, config.max_seq_len, "sums")
    probes = {}
    for merge in (False, True):
        with dslora.merged() if merge else nullcontext():
            probes[merge] = build_probe_buffer(dslora.model, data, list(range(4)), config, CPU, torch.bfloat16)
    assert len(probes[True]) == len(probes[False]) > 0
    for merged, unmerged in zip(probes[True], probes[False]):
        assert merged.entropy == unmerged.entropy
        for field in ("teacher_topk_logp", "teacher_topk_ids", "teacher_tail_logp"):
            assert torch.equal(getattr(merged, field), getattr(unmerged, field)), field


def test_merge_and_unload_refuses_a_bf16_base():
    dslora = realistic_update(build_config("smoke", overrides=dict(base_dtype="bf16", precision="bf16")))
    with pytest.raises(ValueError, match="merge_and_unload needs fp32 base weights, these are bfloat16"):
        dslora.merge_and_unload()


def test_peft_export_over_a_bf16_base_is_the_unmerged_model(token_batch, tmp_path):
    """PEFT keeps the exported fp32 adapter in fp32 over a bf16 base and adds B A x unmerged, as DS-LoRA does: under
    the same autocast the logits are identical (tolerance 0), the realistic update included."""
    from peft import PeftModel

    config = build_config("smoke", overrides=dict(base_dtype="bf16", precision="bf16"))
    dslora = realistic_update(config)
    expected = bf16_logits(dslora.model, token_batch)
    dslora.export_peft(tmp_path / "peft")
    base = load_model(config)
    assert not torch.equal(bf16_logits(base, token_batch), expected)
    got = bf16_logits(PeftModel.from_pretrained(base, str(tmp_path / "peft")), token_batch)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_adapter_snapshots_are_copies_and_a_swap_restores_exactly(tiny_dslora):
    """A snapshot must not follow the parameters (on a CPU, ``.float().cpu()`` of an fp32 CPU tensor is the tensor
    itself), and a swap (LwF's teacher) must give the student's values back bit for bit."""
    params = tiny_dslora.slow_parameters() + tiny_dslora.fast_parameters()
    before = [p.detach().clone() for p in params]
    for snapshot in (tiny_dslora.adapter_state, lambda: tiny_dslora.adapter_state(device=None)):
        state = snapshot()
        with torch.no_grad():
            for p in params:
                p.add_(1.0)  # training moves the parameters after the snapshot
        tiny_dslora.load_state(state)
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    other = {k: torch.randn_like(v) for k, v in tiny_dslora.adapter_state().items()}
    with tiny_dslora.swapped(other):
        assert not any(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_a_swap_inside_a_bf16_autocast_region_leaves_the_student_its_own_weights(tiny_dslora, token_batch):
    """LwF's teacher pass and its student pass share one autocast region, which caches the bf16 cast of each leaf
    parameter it multiplies (one branch on, as in the single-LoRA baselines: two are concatenated first): after the
    swap back, the student must be computed from its own values, as in a region of its own (without the cache
    cleared it got the teacher's logits)."""
    model, ids = tiny_dslora.model.eval(), token_batch["input_ids"]  # no dropout: the two student passes compare
    other = {k: torch.randn_like(v) for k, v in tiny_dslora.adapter_state().items()}
    with tiny_dslora.branches(slow=False, fast=True):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            student_alone = model(input_ids=ids).logits.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad(), tiny_dslora.swapped(other):
                teacher = model(input_ids=ids).logits.float()
            student = model(input_ids=ids).logits.float()
    assert not torch.equal(teacher, student_alone)
    torch.testing.assert_close(student, student_alone, atol=0, rtol=0)


TINY = dict(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)
ARCHITECTURES = {
    "llama": LlamaConfig(**TINY), "qwen2": Qwen2Config(**TINY), "mistral": MistralConfig(**TINY),
    "gemma": GemmaConfig(**TINY, head_dim=8), "phi": PhiConfig(**TINY),
    "gpt2": GPT2Config(vocab_size=256, n_embd=32, n_layer=4, n_head=4, n_positions=64),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architectures_found_generically_and_export_exactly(arch, tmp_path):
    from peft import PeftModel

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(ARCHITECTURES[arch])
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(ARCHITECTURES[arch])
    batch = dict(input_ids=torch.randint(0, 256, (2, 10)), attention_mask=torch.ones(2, 10, dtype=torch.long))
    base = logits(model, batch)
    dslora = DSLoRA(model, frozen_layers=0.5)
    assert dslora.num_frozen == 2 and len(dslora.modules) >= 4
    assert all(f".{i}." in name for name in dslora.modules for i in (2, 3) if f".{i}." in name)
    assert not any(f"{dslora.layers_path}.{i}." in name for name in dslora.modules for i in (0, 1))
    with torch.no_grad():
        for p in dslora.slow_parameters() + dslora.fast_parameters():
            p.normal_(0, 0.2)
    adapted = logits(model, batch)
    assert not torch.allclose(adapted, base)
    dslora.export_peft(tmp_path)
    peft_logits = logits(PeftModel.from_pretrained(reference, str(tmp_path)), batch)
    torch.testing.assert_close(peft_logits, adapted, atol=1e-5, rtol=1e-5)


def test_model_without_decoder_layers_is_a_clear_error():
    class NoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

    with pytest.raises(ValueError, match="cannot find the decoder layers of NoLayers"):
        DSLoRA(NoLayers())


def test_unknown_target_module_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match=r"match no linear layer; the decoder layers have \['down_proj'"):
        DSLoRA(tiny_model, target_modules=["query"], frozen_layers=2)
