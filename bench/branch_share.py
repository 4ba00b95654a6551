"""How much of a DS-LoRA run's weight update each branch carries, stage by stage, and (``--against``) how far
another run's branches are from it: what a method acting on one branch (SLSD: the slow one) can move.

    python bench/branch_share.py --run cmp_study_ds_lora_slsd_s42 [--against cmp_study_ds_lora_s42]

Per stage checkpoint (checkpoints/<run>/stage_*/adapters.safetensors; the scaling alpha/r from its metadata):
    |ΔW_slow| = sqrt(Σ_modules ‖s_slow · B_slow A_slow‖²_F),  |ΔW_fast| the same over every fast branch,
    |ΔW|      = the same of the sum ΔW_slow + ΔW_fast (the update the model runs with: how far it is from W0),
    slow_share = |ΔW_slow| / (|ΔW_slow| + |ΔW_fast|),
    cos_slow_fast = Σ_modules <ΔW_slow, ΔW_fast>_F / (|ΔW_slow| · |ΔW_fast|)
                    (< 0: the slow branch undoes part of the fast one, and their sum is smaller);
with --against O: |ΔW_b − ΔW_b(O)| / |ΔW_b(O)| for b in slow, fast, and for the sum ΔW = ΔW_slow + ΔW_fast.
Last line: JSON, one row per stage.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def branch_deltas(adapters: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"slow"|"fast": {module: ΔW}} from one DSLoRA.save'd file; several fast branches (per_task) add up."""
    with safe_open(str(adapters), framework="pt") as handle:
        settings = json.loads(handle.metadata()["ds_lora"])
    scaling = {"slow": settings["alpha"] / settings["r_slow"], "fast": settings["alpha"] / settings["r_fast"]}
    tensors = load_file(str(adapters))
    deltas: dict[str, dict[str, torch.Tensor]] = {"slow": {}, "fast": {}}
    for key, lora_a in tensors.items():
        if not key.endswith(".lora_A"):
            continue
        branch = "slow" if ".slow." in key else "fast"
        module = key.split(f".{branch}.")[0]
        delta = scaling[branch] * tensors[key[:-len("lora_A")] + "lora_B"].float() @ lora_a.float()
        deltas[branch][module] = deltas[branch].get(module, 0) + delta
    return deltas


def norm(deltas: dict[str, torch.Tensor]) -> float:
    return sum(float(d.norm()) ** 2 for d in deltas.values()) ** 0.5


def total(deltas: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {m: deltas["slow"].get(m, 0) + deltas["fast"].get(m, 0) for m in {*deltas["slow"], *deltas["fast"]}}


def cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The alignment of two updates over the modules both adapt: Σ <a_m, b_m>_F / (|a| · |b|)."""
    shared = a.keys() & b.keys()
    dot = sum(float((a[m] * b[m]).sum()) for m in shared)
    return dot / max(norm({m: a[m] for m in shared}) * norm({m: b[m] for m in shared}), 1e-12)


def relative_distance(mine: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> float:
    return norm({m: mine[m] - other[m] for m in other}) / max(norm(other), 1e-12)


def stage_checkpoints(folder: Path) -> list[Path]:
    """A run's finished stage checkpoints, named stage_<i>_<name> as the engine names them, in stage order: an
    interrupted stage's .partial folder or a write's .tmp folder is not one, and stage 10 comes after stage 9."""
    stages = [f for f in folder.glob("stage_*")
              if re.fullmatch(r"stage_\d+_\w+", f.name) and (f / "adapters.safetensors").is_file()]
    return sorted(stages, key=lambda f: int(f.name.split("_")[1]))


def stage_rows(run: str, against: str | None) -> list[dict]:
    rows = []
    for stage in stage_checkpoints(ROOT / "checkpoints" / run):
        mine = branch_deltas(stage / "adapters.safetensors")
        slow, fast = norm(mine["slow"]), norm(mine["fast"])
        row = dict(stage=stage.name, slow=round(slow, 4), fast=round(fast, 4), total=round(norm(total(mine)), 4),
                   slow_share=round(slow / (slow + fast), 3),
                   cos_slow_fast=round(cosine(mine["slow"], mine["fast"]), 3))
        if against:
            other = branch_deltas(ROOT / "checkpoints" / against / stage.name / "adapters.safetensors")
            row.update({f"distance_{b}": round(relative_distance(mine[b], other[b]), 3) for b in ("slow", "fast")},
                       distance_total=round(relative_distance(total(mine), total(other)), 3))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run name (its checkpoints/ folder)")
    parser.add_argument("--against", help="another run of the same model and stages, e.g. the same seed without SLSD")
    args = parser.parse_args()
    if not (ROOT / "checkpoints" / args.run).is_dir():
        raise SystemExit(f"branch_share: checkpoints/{args.run}: no such run (its stage checkpoints are needed)")
    rows = stage_rows(args.run, args.against)
    for row in rows:
        print("  ".join(f"{k} {v}" for k, v in row.items()))
    print(json.dumps(dict(run=args.run, against=args.against, stages=rows)))


if __name__ == "__main__":
    main()
