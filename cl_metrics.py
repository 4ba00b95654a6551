"""Continual-learning metrics from the score matrix R, and their bootstrap confidence intervals.

R[i][j] is the score on task j after training stage i (stages and tasks in sequence order, T of each) and
``base[j]`` the base model's zero-shot score.

    AP         = (1/T) Σ_j R[T-1][j]                                   average performance after the last stage
    LA         = (1/T) Σ_i R[i][i]                                     learning accuracy: each task just after its
                                                                       stage (plasticity; a model that never learns
                                                                       cannot forget)
    BWT        = 1/(T-1) Σ_{i<T-1} (R[T-1][i] − R[i][i])               backward transfer (< 0: forgetting)
    FWT        = 1/(T-1) Σ_{i>0} (R[i-1][i] − base[i])                 forward transfer (before training task i)
    Forgetting = 1/(T-1) Σ_{i<T-1} (max_{i≤l<T-1} R[l][i] − R[T-1][i])  drop from each task's best earlier score

Uncertainty: 95 % percentile bootstrap over the evaluated test samples. A task's samples are the same in every row
of R (the base row and every stage: ``evaluation.select_samples``), so one resample draws sample indices per task and
applies them to every row, and every figure is recomputed on that one draw (joint resampling: BWT keeps the pairing
of R[T-1][i] with R[i][i] on the same samples). A task whose samples come in groups (T5: harmful / benign) scores
the mean of its group means, and its draws are stratified: each group is resampled within itself. Hand-written with
numpy rather than scipy.stats.bootstrap, which resamples one statistic's arguments, not one draw shared by a whole
matrix, several runs and their seeds.
"""
from __future__ import annotations

import numpy as np

FIGURES = ("AP", "LA", "BWT", "FWT", "forgetting")
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # fixed: the same per-sample scores always give the same interval


def continual_metrics(R, base) -> dict[str, float | np.ndarray | None]:
    """The figures above from R (stages × tasks) and base (tasks). Leading axes (e.g. resamples) are kept: each
    figure is then an array over them. Only AP when R is not square (multi-task: one stage); no transfer for T = 1."""
    R, base = np.asarray(R, dtype=float), np.asarray(base, dtype=float)
    stages, T = R.shape[-2:]
    last = R[..., -1, :]
    figures = dict.fromkeys(FIGURES)
    figures["AP"] = last.mean(-1)
    if stages == T:
        diagonal = np.diagonal(R, axis1=-2, axis2=-1)  # R[i][i]
        figures["LA"] = diagonal.mean(-1)
    if stages == T > 1:
        figures["BWT"] = (last[..., :-1] - diagonal[..., :-1]).mean(-1)
        figures["FWT"] = (np.diagonal(R, offset=1, axis1=-2, axis2=-1) - base[..., 1:]).mean(-1)  # R[i-1][i] − base[i]
        earlier = R[..., :-1, :-1]  # rows l < T-1, columns i < T-1; only l ≥ i counts
        reached = np.arange(T - 1)[:, None] >= np.arange(T - 1)[None, :]
        figures["forgetting"] = (np.where(reached, earlier, -np.inf).max(-2) - last[..., :-1]).mean(-1)
    return {k: (float(v) if v is not None and np.ndim(v) == 0 else v) for k, v in figures.items()}


def group_mean(scores, groups) -> np.ndarray | float:
    """Mean of the group means over the last axis (the plain mean when every sample is in one group)."""
    scores, groups = np.asarray(scores, dtype=float), np.asarray(groups)
    means = np.mean([scores[..., groups == g].mean(-1) for g in np.unique(groups)], axis=0)
    return float(means) if np.ndim(means) == 0 else means


def draw_samples(groups, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) stratified bootstrap draws of sample indices: each group's positions are drawn with replacement
    from that group, so ``groups[draw] == groups`` and every resample keeps each group's size."""
    groups = np.asarray(groups)
    draws = np.empty((resamples, len(groups)), dtype=np.int64)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        draws[:, members] = members[rng.integers(0, len(members), (resamples, len(members)))]
    return draws


def interval(values) -> list[float]:
    """The percentile interval [lo, hi] at CONFIDENCE of bootstrap values."""
    tail = 100 * (1 - CONFIDENCE) / 2
    return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


class Bootstrap:
    """One set of draws shared by every run it resamples: the same resampled samples of each task for every stage,
    method and seed, and the same resampled seeds (paired by position), so a difference between two methods is
    resampled jointly and its interval is paired.

    ``groups[j]``: the group label of each evaluated sample of task j. A run is ``scores[j]``: the per-sample scores
    of task j, one row per evaluation (base, then each stage), in the same sample order as ``groups[j]``.
    """

    def __init__(self, groups: list, resamples: int, seeds: int = 1, seed: int = BOOTSTRAP_SEED):
        rng = np.random.default_rng(seed)
        self.groups = [np.asarray(g) for g in groups]
        self.samples = [draw_samples(g, resamples, rng) for g in self.groups]
        self.seeds = rng.integers(0, seeds, (resamples, seeds))  # per resample, the seeds drawn with replacement

    def matrix(self, scores: list) -> tuple[np.ndarray, np.ndarray]:
        """The run's score matrix (rows × tasks) and its resamples (resamples × rows × tasks)."""
        point = np.stack([group_mean(s, g) for s, g in zip(scores, self.groups)], -1)
        resampled = np.stack([group_mean(np.asarray(s, dtype=float)[:, draw], g)  # (rows, resamples) per task
                              for s, g, draw in zip(scores, self.groups, self.samples)], -1)
        return point, resampled.transpose(1, 0, 2)

    def pool(self, values, resampled) -> tuple[np.ndarray, np.ndarray]:
        """The seed-mean of per-seed values (seeds, ...) and its resamples from theirs (seeds, resamples, ...):
        each resample averages its drawn seeds."""
        values, resampled = np.asarray(values, dtype=float), np.asarray(resampled, dtype=float)
        return values.mean(0), resampled[self.seeds, np.arange(len(self.seeds))[:, None]].mean(1)

    def final_scores(self, runs: list[list]) -> tuple[np.ndarray, np.ndarray]:
        """The seed-mean of each task's score after the last stage (tasks,) and its resamples (resamples, tasks)."""
        matrices = [self.matrix(scores) for scores in runs]
        return self.pool([point[-1] for point, _ in matrices], [resampled[:, -1] for _, resampled in matrices])

    def figures(self, runs: list[list]) -> dict[str, tuple[float, np.ndarray] | None]:
        """Each figure's seed-mean over ``runs`` (one per seed; rows = base, then each stage): its value and its
        resamples (each recomputed on its drawn samples and averaged over its drawn seeds)."""
        per_seed = []
        for scores in runs:
            point, resampled = self.matrix(scores)
            per_seed.append((continual_metrics(point[1:], point[0]),
                             continual_metrics(resampled[:, 1:], resampled[:, 0])))
        out = {}
        for key in FIGURES:
            if per_seed[0][0][key] is None:
                out[key] = None
                continue
            value, resampled = self.pool([p[key] for p, _ in per_seed], [r[key] for _, r in per_seed])
            out[key] = (float(value), resampled)
        return out


def run_samples(rows: dict, tasks: list[str], stages: int) -> tuple[list[list], list[list]]:
    """From a run's evaluation rows {(stage, task): row} (stage -1: the base model): per task, the per-sample
    scores of every evaluation (base first, then each stage) and the samples' groups. A cell that was not evaluated
    (``eval_scope needed``: a task two or more stages ahead) is all NaN; no figure reads such a cell."""
    def scores(stage: int, task: str) -> list[float]:
        row = rows.get((stage, task))
        return row["sample_scores"] if row else [float("nan")] * len(rows[(-1, task)]["sample_scores"])

    return ([[scores(s, t) for s in range(-1, stages)] for t in tasks],
            [rows[(-1, t)]["sample_groups"] for t in tasks])


def format_score(value: float | None, ci: list[float] | None, sign: bool = False) -> str:
    """A score and its interval for a table: ``0.500 [0.25, 0.75]`` (``sign``: ``+0.100 [+0.02, +0.18]``)."""
    if value is None:
        return "-"
    plus = "+" if sign else ""
    return f"{value:{plus}.3f}" + ("" if ci is None else f" [{ci[0]:{plus}.2f}, {ci[1]:{plus}.2f}]")


def figures_with_ci(scores: list, groups: list, resamples: int) -> dict[str, float | list[float] | None]:
    """AP, LA, BWT, FWT, forgetting of one run and their joint 95 % intervals (``<figure>_ci``)."""
    out = {}
    for key, figure in Bootstrap(groups, resamples).figures([scores]).items():
        out[key], out[f"{key}_ci"] = (None, None) if figure is None else (figure[0], interval(figure[1]))
    return out


def score_ci(scores, groups, resamples: int) -> list[float]:
    """95 % interval of one evaluation's score (the mean of its group means) over its samples."""
    _, resampled = Bootstrap([groups], resamples).matrix([np.asarray(scores, dtype=float)[None]])
    return interval(resampled[:, 0, 0])


def paired_difference(runs: list[list], reference: list[list], groups: list, resamples: int
                      ) -> dict[str, tuple[float, list[float]] | None]:
    """Figure of ``runs`` minus the same figure of ``reference`` (each a list of seeds' runs on the same samples,
    seed k of one paired with seed k of the other), averaged over seeds, with its 95 % interval: every resample
    draws the same samples and the same seeds for both."""
    if len(runs) != len(reference):
        raise ValueError(f"paired difference needs the same seeds on both sides ({len(runs)} vs {len(reference)} runs)")
    bootstrap = Bootstrap(groups, resamples, seeds=len(runs))
    mine, theirs = bootstrap.figures(runs), bootstrap.figures(reference)
    return {key: None if mine[key] is None or theirs[key] is None else
            (mine[key][0] - theirs[key][0], interval(mine[key][1] - theirs[key][1])) for key in FIGURES}
