"""SLSD: stability-aware lightweight self-distillation into the slow branch.

At the start of every stage after the first:
  1. probe buffer — ``probe_candidates`` samples of the *current* task's training set (seeded);
  2. teacher — the model as it is at that moment, i.e. as it was at the end of the previous stage. Its outputs are
     computed once, before any update of the new stage, so no copy of the model (or of the base weights) exists;
  3. entropy filter — each candidate is scored by the teacher's mean token entropy over its response tokens,
     H = mean_t −Σ_v p_t(v) log p_t(v); the samples below the ``entropy_quantile`` quantile (the ones most
     typical of the old style: the teacher is sure how to answer them) are kept, at most ``probe_size``;
  4. compact teacher targets — per response token the top-k log-probabilities at temperature T (fp16), their token
     ids (int32) and the log of the remaining tail mass: k·6 + 2 bytes per token instead of V·4.
During the stage, every ``kd_every`` steps (mid-interval: steps kd_every/2, 3·kd_every/2, ..., so that no
distillation step lands where warm-up or the decayed end of the schedule makes it a no-op) a probe batch gives the
distillation loss

    L_KD = λ · T² · KL(p_teacher ‖ p_student)   over response tokens, on the k+1 buckets (top-k ids + tail),

computed with the fast branch in the forward pass but out of the autograd graph, so L_KD reaches only the slow
branch. (The KL over the coarsened k+1-bucket distribution is exact for that coarsening and a lower bound of the
full-vocabulary KL.)

The fast branch learns from the supervised loss alone, through three rules:
  * no gradient: the fast branch is detached in the KD forward (above);
  * no random numbers: the teacher pass runs in eval mode (no dropout: it draws nothing), and the KD pass runs in
    train mode (dropout on, like the supervised pass) inside ``torch.random.fork_rng`` on a stream of its own, seeded
    by (seed, stage, step), so the training stream, and with it every later dropout mask, is what it would be
    without SLSD;
  * no shared clipping: training.py clips each optimizer group on its own, so the KD gradient of the slow branch
    cannot shrink the fast branch's update when clipping engages.
The fast branch still moves differently through the slow branch's effect on the supervised loss: that is the method.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from methods.components import Plugin
from models.ds_lora import DSLoRA
from training import autocast, response_logits, response_positions
from utils_data import collate


@dataclass
class ProbeSample:
    input_ids: list[int]
    labels: list[int]
    positions: torch.Tensor  # logit positions t whose target label[t+1] is a response token
    teacher_topk_logp: torch.Tensor  # (n, k) float16, log-probabilities at temperature T
    teacher_topk_ids: torch.Tensor  # (n, k) int32
    teacher_tail_logp: torch.Tensor  # (n,) float16, log of the probability mass outside the top-k
    entropy: float  # teacher's mean response-token entropy (at T = 1)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.positions, self.teacher_topk_logp,
                                                            self.teacher_topk_ids, self.teacher_tail_logp))


def _tail_logp(topk_logp: torch.Tensor) -> torch.Tensor:
    """log(1 − Σ exp(topk)), clamped away from log(0)."""
    return torch.log1p(-topk_logp.exp().sum(-1).clamp(max=1 - 1e-6))


@torch.no_grad()
def build_probe_buffer(model, dataset, indices: list[int], config, device: torch.device,
                       amp_dtype: torch.dtype | None) -> list[ProbeSample]:
    """Teacher pass over the candidates (model as it is now), entropy filter, compact top-k targets."""
    was_training = model.training
    model.eval()
    candidates: list[ProbeSample] = []
    batch_size = config.eval_batch_size  # the teacher pass is inference: it runs at the evaluation batch size
    for start in tqdm(range(0, len(indices), batch_size), desc="SLSD teacher pass", leave=False, dynamic_ncols=True):
        features = [dataset[i] for i in indices[start:start + batch_size]]
        batch = {k: v.to(device) for k, v in collate(features, 0).items()}
        positions = [response_positions(labels) for labels in batch["labels"]]
        with autocast(device, amp_dtype):
            logits = response_logits(model, batch, positions)
        for feature, pos, z in zip(features, positions, logits):
            z = z.float()
            logp = F.log_softmax(z, dim=-1)
            entropy = float(-(logp.exp() * logp).sum(-1).mean())
            topk_logp, topk_ids = F.log_softmax(z / config.kd_temperature, dim=-1).topk(config.teacher_topk, dim=-1)
            candidates.append(ProbeSample(
                feature["input_ids"], feature["labels"], pos.cpu(), topk_logp.half().cpu(),
                topk_ids.int().cpu(), _tail_logp(topk_logp).half().cpu(), entropy))
    model.train(was_training)
    if config.probe_selection == "random":  # ablation: the candidates are already a seeded random draw
        return candidates[:config.probe_size]
    threshold = torch.quantile(torch.tensor([c.entropy for c in candidates]), config.entropy_quantile).item()
    kept = sorted((c for c in candidates if c.entropy <= threshold), key=lambda c: c.entropy)
    return kept[:config.probe_size]


@contextmanager
def own_random_stream(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block on a random stream of its own (CPU and ``device`` seeded with ``seed``); the training stream is
    restored untouched afterwards."""
    devices = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else None):
        torch.random.default_generator.manual_seed(seed)
        if devices:  # the current device's generator, which dropout draws from on an accelerator
            torch.get_device_module(device.type).manual_seed(seed)
        yield


def kd_loss(model, dslora: DSLoRA, probes: list[ProbeSample], config, device: torch.device,
            amp_dtype: torch.dtype | None) -> torch.Tensor:
    """λ·T²·KL(teacher ‖ student) on the probes' response tokens; gradient to the slow branch only
    (``kd_branches = both``, an ablation: to the fast branch too)."""
    batch = {k: v.to(device) for k, v in collate([dict(input_ids=p.input_ids, labels=p.labels) for p in probes], 0).items()}
    with dslora.branches(fast_grad=config.kd_branches == "both"), autocast(device, amp_dtype):
        logits = response_logits(model, batch, [p.positions.to(device) for p in probes])
    student, teacher_logp, teacher_tail = [], [], []
    for probe, z in zip(probes, logits):
        student_logp = F.log_softmax(z.float() / config.kd_temperature, dim=-1)
        ids = probe.teacher_topk_ids.to(device).long()
        topk = student_logp.gather(-1, ids)
        student.append(torch.cat([topk, _tail_logp(topk).unsqueeze(-1)], dim=-1))
        teacher_logp.append(probe.teacher_topk_logp.to(device).float())
        teacher_tail.append(probe.teacher_tail_logp.to(device).float().unsqueeze(-1))
    q = torch.cat(student)
    p = torch.cat([torch.cat(teacher_logp), torch.cat(teacher_tail)], dim=-1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    return config.kd_lambda * config.kd_temperature ** 2 * kl


class SLSD(Plugin):
    """A piece DS-LoRA holds (methods/dual_speed.py): ``before_stage`` builds the probe buffer, ``aux_loss`` gives
    L_KD, which the holding method adds to its loss."""

    def __init__(self, model, dslora: DSLoRA, config, device: torch.device, amp_dtype: torch.dtype | None):
        self.model, self.dslora, self.config, self.device, self.amp_dtype = model, dslora, config, device, amp_dtype
        self.probes: list[ProbeSample] = []
        self.stage = 0

    def before_stage(self, stage: int, tasks: list[str], dataset) -> dict:
        """Build this stage's probe buffer (nothing for the first stage: there is no previous model)."""
        self.stage, self.probes = stage, []
        if stage == 0 or not self.config.use_slsd:
            return {}
        generator = torch.Generator().manual_seed(self.config.seed * 1000 + stage)
        count = min(self.config.probe_candidates, len(dataset))
        indices = torch.randperm(len(dataset), generator=generator)[:count].tolist()
        with self.dslora.merged() if self.config.merge_for_eval else nullcontext():  # the teacher runs as evaluation does
            self.probes = build_probe_buffer(self.model, dataset, indices, self.config, self.device, self.amp_dtype)
        tokens = sum(len(p.positions) for p in self.probes)
        stored = sum(p.nbytes() for p in self.probes)
        return dict(probe_candidates=count, probe_kept=len(self.probes), probe_tokens=tokens, probe_bytes=stored,
                    probe_bytes_per_token=stored / max(tokens, 1),
                    probe_entropy_max=max((p.entropy for p in self.probes), default=math.nan))

    def aux_loss(self, step: int) -> torch.Tensor | None:
        """L_KD at steps ≡ kd_every/2 (mod kd_every), on a probe batch drawn from a (seed, stage, step)-seeded
        generator, its dropout masks from a stream of the same seed (the training stream is left as it was)."""
        if not self.probes or step % self.config.kd_every != self.config.kd_every // 2:
            return None
        seed = (self.config.seed * 1000 + self.stage) * 100_000 + step
        size = min(self.config.kd_batch_size, len(self.probes))
        chosen = torch.randperm(len(self.probes), generator=torch.Generator().manual_seed(seed))[:size].tolist()
        with own_random_stream(seed, self.device):
            return kd_loss(self.model, self.dslora, [self.probes[i] for i in chosen], self.config, self.device,
                           self.amp_dtype)
