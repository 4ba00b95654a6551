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

Illusory vs real forgetting (recovery_probe.py): each old task's drop splits into the part a short recovery probe
brings back (illusory) and the rest (real), ``forgetting_split``; the evaluation alone flags a task whose format
compliance fell while its eval loss held (``Bootstrap.drift``, ``format_drift_only``).

Uncertainty: 95 % percentile bootstrap over the evaluated test samples. A task's samples are the same in every row
of R (the base row and every stage: ``evaluation.select_samples``), so one resample draws sample indices per task and
applies them to every row, and every figure is recomputed on that one draw (joint resampling: BWT keeps the pairing
of R[T-1][i] with R[i][i] on the same samples). A task whose samples come in groups (T5: harmful / benign) scores
the mean of its group means, and its draws are stratified: each group is resampled within itself. Rows after the
stages before the last may score a fixed subset of the samples (config.early_eval_samples): the samples they skip
are NaN and each cell is the mean over the (drawn) samples its row scored. A figure that compares two evaluations of
a task (BWT, FWT, forgetting, plasticity, the recovery split) reads every row of the task on the samples all of them
scored (``shared_samples``), so R[T-1][i] − R[i][i] stays paired sample by sample; AP, LA and the final scores read
each row on all its samples. Hand-written with
numpy rather than scipy.stats.bootstrap, which resamples one statistic's arguments, not one draw shared by a whole
matrix, several runs and their seeds.
"""
from __future__ import annotations

import warnings

import numpy as np

FIGURES = ("AP", "LA", "BWT", "FWT", "forgetting")
COMPARING = ("BWT", "FWT", "forgetting")  # figures that compare two evaluations of a task: read on their shared samples
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0  # fixed: the same per-sample scores always give the same interval
LOSS_TOLERANCE = 0.02  # nats per token: a rise of the eval loss below this (perplexity × 1.02) counts as steady


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
        figures["forgetting"] = (best_earlier(R) - last[..., :-1]).mean(-1)
    return {k: (float(v) if v is not None and np.ndim(v) == 0 else v) for k, v in figures.items()}


def best_earlier(R: np.ndarray) -> np.ndarray:
    """max_{i≤l<T-1} R[l][i] for each old task i < T-1 (leading axes kept): its best score before the last stage."""
    T = R.shape[-1]
    reached = np.arange(T - 1)[:, None] >= np.arange(T - 1)[None, :]  # rows l < T-1, columns i < T-1; only l ≥ i
    return np.where(reached, R[..., :-1, :-1], -np.inf).max(-2)


def forgetting_split(R, recovered, base=None, control=None) -> dict[str, np.ndarray]:
    """Each old task's drop split by a recovery probe into an illusory and a real part (recovery_probe.py).

    ``recovered[j]``: task j's score after its probe (the task's final score where it was not probed). Per old task
    i < T-1, leading axes kept:

        drop_i     = max_{i≤l<T-1} R[l][i] − R[T-1][i]    the drop that ``forgetting`` averages
        gain_i     = Rec[i] − R[T-1][i]                    what the probe brought back
        illusory_i = clip(gain_i, 0, max(drop_i, 0))       brought back, up to the drop (a probe that also teaches
                                                           more than was lost, or makes it worse, moves nothing)
        real_i     = drop_i − illusory_i                   so that mean(illusory) + mean(real) = forgetting exactly

    A task whose score rose (drop_i < 0) has illusory 0 and real = drop_i, as ``forgetting`` counts it.

    The probe also teaches: a few steps can raise a score that was never known. With the probe's control
    (``control[j]``: task j's score after the same probe from the base model, whose score is ``base[j]``; the base
    score where it was not probed) the part brought back beyond what the probe teaches from scratch is

        taught_i              = Ctrl[i] − base[i]
        illusory_controlled_i = clip(gain_i − max(taught_i, 0), 0, max(drop_i, 0))   ≤ illusory_i

    so illusory_controlled ≤ illusory: the illusory part lies between the two readings.
    """
    R, recovered = np.asarray(R, dtype=float), np.asarray(recovered, dtype=float)
    best, final = best_earlier(R), R[..., -1, :-1]
    drop, gain = best - final, recovered[..., :-1] - final
    illusory = np.clip(gain, 0, np.maximum(drop, 0))
    split = dict(best=best, final=final, recovered=recovered[..., :-1], drop=drop, gain=gain, illusory=illusory,
                 real=drop - illusory)
    if control is not None:
        control = np.asarray(control, dtype=float)[..., :-1]
        taught = control - np.asarray(base, dtype=float)[..., :-1]
        split |= dict(control=control, taught=taught,
                      illusory_controlled=np.clip(gain - np.maximum(taught, 0), 0, np.maximum(drop, 0)))
    return split


def group_mean(scores, groups) -> np.ndarray | float:
    """Mean of the group means over the last axis (the plain mean when every sample is in one group). A NaN is a
    sample that evaluation did not score (a subset, config.early_eval_samples): each mean is over the scored ones,
    NaN where none is (a cell not evaluated)."""
    scores, groups = np.asarray(scores, dtype=float), np.asarray(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a mean of no scored sample is NaN, as it should be
        means = np.mean([np.nanmean(scores[..., groups == g], -1) for g in np.unique(groups)], axis=0)
    return float(means) if np.ndim(means) == 0 else means


def shared_samples(scores) -> np.ndarray:
    """A task's per-sample rows (evaluations × samples) kept only at the samples that every evaluation which scored
    any of them scored, NaN elsewhere: what a figure comparing two evaluations of the task reads, so that a subset
    row (config.early_eval_samples) is compared with the whole rows on its own samples, paired. A row that scored
    none (a cell not evaluated) narrows nothing."""
    scores = np.asarray(scores, dtype=float)
    scored = ~np.isnan(scores)
    return np.where(scored[scored.any(-1)].all(0), scores, np.nan)


def shared_losses(nll: list, tokens: list) -> np.ndarray:
    """Token-weighted eval loss Σ nll / Σ tokens of each task's evaluations (evaluations × tasks; per task, its
    per-sample rows of summed NLL and supervised-token counts) over the samples all of them scored
    (``shared_samples``); NaN for a cell not evaluated."""
    losses = []
    for task_nll, task_tokens in zip(nll, tokens):
        task_nll = shared_samples(task_nll)
        task_tokens = np.where(np.isnan(task_nll), 0.0, np.asarray(task_tokens, dtype=float))
        with np.errstate(invalid="ignore", divide="ignore"):
            losses.append(np.nansum(task_nll, -1) / task_tokens.sum(-1))
    return np.stack(losses, -1)


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
    """The percentile interval [lo, hi] at CONFIDENCE of bootstrap values. A NaN value is a resample that drew
    none of the samples a subset row scored (config.early_eval_samples; with 50 of 100 samples about 0.5^100, 1e-30,
    of them; T5's 22 of 44 benign prompts about 1e-13): it is left out, i.e. the interval is conditioned on drawing
    at least one."""
    tail = 100 * (1 - CONFIDENCE) / 2
    return [float(v) for v in np.nanpercentile(values, [tail, 100 - tail])]


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

    def matrix(self, scores: list, shared: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The run's score matrix (rows × tasks) and its resamples (resamples × rows × tasks); ``shared``: each
        task's cells on the samples all its evaluations scored (``shared_samples``)."""
        scores = [shared_samples(s) for s in scores] if shared else scores
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

    def plasticity(self, runs: list[list]) -> tuple[np.ndarray, np.ndarray] | None:
        """Each task's gain in its own stage, R[i][i] − base[i], seed-mean (tasks,) and its resamples (resamples,
        tasks); None unless the run has one stage per task (multi-task has no stage of its own per task)."""
        matrices = [self.matrix(scores, shared=True) for scores in runs]
        rows, tasks = matrices[0][0].shape
        if rows - 1 != tasks:
            return None
        gain = lambda m: np.diagonal(m[..., 1:, :], axis1=-2, axis2=-1) - m[..., 0, :]  # noqa: E731
        return self.pool([gain(point) for point, _ in matrices], [gain(resampled) for _, resampled in matrices])

    def continual(self, scores: list, shared: bool = False) -> tuple[dict, dict]:
        """``continual_metrics`` of one run's matrix and of its resamples (``shared``: as ``matrix``)."""
        point, resampled = self.matrix(scores, shared)
        return continual_metrics(point[1:], point[0]), continual_metrics(resampled[:, 1:], resampled[:, 0])

    def figures(self, runs: list[list]) -> dict[str, tuple[float, np.ndarray] | None]:
        """Each figure's seed-mean over ``runs`` (one per seed; rows = base, then each stage): its value and its
        resamples (each recomputed on its drawn samples and averaged over its drawn seeds)."""
        per_seed = []
        for scores in runs:
            whole, shared = self.continual(scores), self.continual(scores, shared=True)
            per_seed.append(tuple({k: (shared if k in COMPARING else whole)[i][k] for k in FIGURES} for i in (0, 1)))
        out = {}
        for key in FIGURES:
            if per_seed[0][0][key] is None:
                out[key] = None
                continue
            value, resampled = self.pool([p[key] for p, _ in per_seed], [r[key] for _, r in per_seed])
            out[key] = (float(value), resampled)
        return out

    def recovery(self, runs: list[list], recovered: list[list], control: list[list] | None = None
                 ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``forgetting_split`` of each run, seed-mean: per old task (arrays over tasks i < T-1) and averaged over
        them (forgetting, forgetting_illusory, forgetting_real; with ``control``, forgetting_illusory_controlled),
        each (value, resamples). ``recovered[k][j]`` (``control[k][j]``): the per-sample scores of task j after its
        probe from seed k's final checkpoint (from the base model). The probes' rows join the run's rows, so one
        draw of a task's samples scores R and the probes alike (the same samples as ``figures``)."""
        per_seed = []
        for k, (scores, probe) in enumerate(zip(runs, recovered)):
            extra = [probe] if control is None else [probe, control[k]]
            point, resampled = self.matrix([np.vstack([s, *rows]) for s, *rows in zip(scores, *extra)], shared=True)
            last = point.shape[0] - len(extra)  # rows: base, the stages, the probes
            per_seed.append(tuple(forgetting_split(m[..., 1:last, :], m[..., last, :], m[..., 0, :],
                                                   None if control is None else m[..., last + 1, :])
                                  for m in (point, resampled)))
        out = {key: self.pool([p[key] for p, _ in per_seed], [r[key] for _, r in per_seed]) for key in per_seed[0][0]}
        for name, key in (("forgetting", "drop"), ("forgetting_illusory", "illusory"), ("forgetting_real", "real"),
                          ("forgetting_illusory_controlled", "illusory_controlled")):
            if key in out:
                out[name] = (out[key][0].mean(-1), out[key][1].mean(-1))
        return out

    def drift(self, nll: list[list], tokens: list[list], formats: list[list]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """How each old task's eval loss and format compliance moved from its own stage (the row of R[i][i]) to the
        last one, seed-mean, over tasks i < T-1, each (value, resamples); the arguments are laid out as ``runs``
        (seed, task, evaluation, sample), from the rows' sample_nll, sample_tokens and sample_format:

            delta_loss_i   = Σ nll_T-1 / Σ tokens_T-1 − Σ nll_i / Σ tokens_i   token-weighted, as eval_loss
            delta_format_i = mean format_T-1 − mean format_i                    as format_rate

        over the task's (drawn) samples: the draws of ``figures``, so the two stages are paired sample by sample."""
        per_seed = []
        for run in zip(nll, tokens, formats):
            point, resampled = [], []
            for i, draw in enumerate(self.samples[:-1]):
                n, t, f = (np.asarray(values[i], dtype=float)[[i + 1, -1]] for values in run)  # own stage, last
                both = ~np.isnan(n).any(0)  # the samples both rows scored (the own stage's may be a subset)
                n, t, f = (np.where(both, v, 0.0) for v in (n, t, f))
                for picked, out in ((slice(None), point), (draw, resampled)):  # all samples; each resample's draw
                    with np.errstate(invalid="ignore", divide="ignore"):  # no supervised token drawn: NaN
                        loss = n[:, picked].sum(-1) / t[:, picked].sum(-1)
                        rate = f[:, picked].sum(-1) / both[picked].sum(-1)
                    out.append(np.stack([loss[1] - loss[0], rate[1] - rate[0]]))  # last − own
            per_seed.append((np.stack(point, -1), np.stack(resampled, -1)))  # (2, tasks), (2, resamples, tasks)
        out = {}
        for k, key in enumerate(("delta_loss", "delta_format")):
            out[key] = self.pool([p[k] for p, _ in per_seed], [r[k] for _, r in per_seed])
        return out


def laid_out(values: list, positions: list[int] | None, length: int) -> list:
    """A per-sample list of a row that scored the samples at ``positions`` (None: all ``length`` of them, in order)
    laid out on all ``length`` samples: NaN where it did not score."""
    if positions is None:
        return list(values)
    full = [float("nan")] * length
    for position, value in zip(positions, values, strict=True):
        full[position] = value
    return full


def run_samples(rows: dict, tasks: list[str], stages: int, key: str = "sample_scores") -> tuple[list[list], list[list]]:
    """From a run's evaluation rows {(stage, task): row} (stage -1: the base model): per task, the per-sample
    scores (or another per-sample list, ``key``) of every evaluation (base first, then each stage) and the samples'
    groups. A cell that was not evaluated (``eval_scope needed``: a task two or more stages ahead) is all NaN; no
    figure reads such a cell. A row that scored a subset (``sample_positions``) is NaN at the samples it skipped."""
    def scores(stage: int, task: str) -> list[float]:
        row, length = rows.get((stage, task)), len(rows[(-1, task)][key])
        return laid_out(row[key], row.get("sample_positions"), length) if row else [float("nan")] * length

    return ([[scores(s, t) for s in range(-1, stages)] for t in tasks],
            [rows[(-1, t)]["sample_groups"] for t in tasks])


def recovery_samples(rows: dict, probes: dict, tasks: list[str], stages: int, controls: dict | None = None
                     ) -> dict[str, list]:
    """A run's per-sample inputs of ``recovery_report`` from its evaluation rows (as ``run_samples``) and its
    recovery probes {task: recovery.jsonl row}: scores and groups, recovered (per task, the scores after its probe;
    a task not probed keeps its final scores: gain 0, its whole drop counts as real), the nll, tokens and format
    of every evaluation, and control (per task, the scores after the probe from the base model: ``controls``; a
    task not probed keeps its base scores) when every probed task has its control, else None."""
    scores, groups = run_samples(rows, tasks, stages)
    recovered = [probes[t]["sample_scores"] if t in probes else rows[(stages - 1, t)]["sample_scores"] for t in tasks]
    nll, tokens, formats = (run_samples(rows, tasks, stages, key)[0]
                            for key in ("sample_nll", "sample_tokens", "sample_format"))
    control = None
    if controls is not None and all(t in controls for t in probes):
        control = [controls[t]["sample_scores"] if t in probes else rows[(-1, t)]["sample_scores"] for t in tasks]
    return dict(scores=scores, groups=groups, recovered=recovered, nll=nll, tokens=tokens, formats=formats,
                control=control)


def format_score(value: float | None, ci: list[float] | None, sign: bool = False, ci_digits: int = 2) -> str:
    """A score and its interval for a table: ``0.500 [0.25, 0.75]`` (``sign``: ``+0.100 [+0.02, +0.18]``;
    ``ci_digits`` 3 for a figure whose intervals are narrower than 0.01, such as a loss difference)."""
    if value is None:
        return "–"
    plus = "+" if sign else ""
    bounds = "" if ci is None else f" [{ci[0]:{plus}.{ci_digits}f}, {ci[1]:{plus}.{ci_digits}f}]"
    return f"{value:{plus}.3f}" + bounds


def figures_with_ci(scores: list, groups: list, resamples: int) -> dict[str, float | list | None]:
    """AP, LA, BWT, FWT, forgetting of one run and their joint 95 % intervals (``<figure>_ci``), and each task's
    plasticity R[i][i] − base[i] (a list over tasks) with its interval paired on the same samples (``plasticity_ci``;
    None for a multi-task run, which has no stage per task)."""
    bootstrap = Bootstrap(groups, resamples)
    out = {}
    for key, figure in bootstrap.figures([scores]).items():
        out[key], out[f"{key}_ci"] = (None, None) if figure is None else (figure[0], interval(figure[1]))
    gains = bootstrap.plasticity([scores])
    out["plasticity"], out["plasticity_ci"] = (None, None) if gains is None else \
        ([float(g) for g in gains[0]], [interval(gains[1][:, j]) for j in range(len(gains[0]))])
    return out


def format_drift_only(delta_loss_ci: list[float], delta_format_ci: list[float]) -> bool:
    """Illusory forgetting read from the evaluation alone: the format compliance fell (Δformat's interval lies below
    0) while the eval loss on the references held (Δloss's interval lies below LOSS_TOLERANCE: any rise is smaller
    than that, an equivalence reading): the answers lost their form, not the knowledge that scores the references.
    An interval that merely reaches 0 is not enough: [−0.01, +1.5] cannot tell a held loss from a large rise."""
    return delta_format_ci[1] < 0 and delta_loss_ci[1] < LOSS_TOLERANCE


def recovery_report(runs: list[dict], tasks: list[str], resamples: int) -> dict:
    """Illusory vs real forgetting over one method's seeds (``runs``: each run's ``recovery_samples``), JSON-ready:
    forgetting, forgetting_illusory and forgetting_real with their joint 95 % intervals, and per old task its best,
    final and recovered scores, drop, gain, illusory and real parts (``forgetting_split``), delta_loss and
    delta_format (``Bootstrap.drift``), each with its interval, and ``format_drift_only``."""
    bootstrap = Bootstrap(runs[0]["groups"], resamples, seeds=len(runs))
    controlled = all(r.get("control") is not None for r in runs)
    split = bootstrap.recovery([r["scores"] for r in runs], [r["recovered"] for r in runs],
                               [r["control"] for r in runs] if controlled else None)
    drift = bootstrap.drift(*([r[key] for r in runs] for key in ("nll", "tokens", "formats")))
    report = {}
    for key in ("forgetting", "forgetting_illusory", "forgetting_real", "forgetting_illusory_controlled"):
        value, resampled = split.pop(key, (None, None))
        report[key], report[f"{key}_ci"] = (None, None) if value is None else (float(value), interval(resampled))
    per_task = {}
    for j, task in enumerate(tasks[:-1]):
        entry = {}
        for key, (value, resampled) in (split | drift).items():
            entry[key], entry[f"{key}_ci"] = float(value[j]), interval(resampled[:, j])
        entry["format_drift_only"] = format_drift_only(entry["delta_loss_ci"], entry["delta_format_ci"])
        per_task[task] = entry
    return dict(report, tasks=per_task, loss_tolerance=LOSS_TOLERANCE)


def score_ci(scores, groups, resamples: int) -> list[float]:
    """95 % interval of one evaluation's score (the mean of its group means) over its samples."""
    _, resampled = Bootstrap([groups], resamples).matrix([np.asarray(scores, dtype=float)[None]])
    return interval(resampled[:, 0, 0])


def seed_t_interval(values: list[float]) -> list[float] | None:
    """The 95 % Student-t interval of the mean of per-seed values (None under 2 seeds): the spread between seeds
    alone. A bootstrap that resamples 3 seeds with replacement understates it, which matters where the samples'
    noise is small beside the seeds' (a loss difference)."""
    if len(values) < 2:
        return None
    from scipy import stats

    mean, sem = float(np.mean(values)), float(stats.sem(values))
    if sem == 0:  # every seed alike: scipy's interval would be 0 × inf
        return [mean, mean]
    low, high = stats.t.interval(CONFIDENCE, len(values) - 1, loc=mean, scale=sem)
    return [float(low), float(high)]


def paired_loss_bwt(losses: list[dict], reference: list[dict], groups: list, resamples: int
                    ) -> tuple[float, list[float], list[float]]:
    """Loss BWT of ``losses`` minus that of ``reference`` (each a list of seeds' runs, a run {nll, tokens, formats}
    laid out as ``Bootstrap.drift`` reads them, seed k paired with seed k): the difference, its 95 % interval and
    the per-seed differences. A run's loss BWT is the mean over its old tasks of drift's delta_loss (> 0: the loss on
    the old tasks' references rose), so

        Δloss_BWT = 1/(T-1) Σ_{i<T-1} (delta_loss_i − delta_loss_i of the reference)

    on the draws ``paired_difference`` uses (the same Bootstrap seed): the same samples and seeds for both."""
    def drift(bootstrap: Bootstrap, runs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        return bootstrap.drift(*([run[key] for run in runs] for key in ("nll", "tokens", "formats")))["delta_loss"]

    bootstrap = Bootstrap(groups, resamples, seeds=len(losses))
    mine, theirs = drift(bootstrap, losses), drift(bootstrap, reference)
    one_draw = Bootstrap(groups, 1)  # a single seed's value: its point does not depend on the draws
    per_seed = [float(drift(one_draw, [a])[0].mean() - drift(one_draw, [b])[0].mean()) for a, b in zip(losses, reference)]
    return float(mine[0].mean() - theirs[0].mean()), interval(mine[1].mean(-1) - theirs[1].mean(-1)), per_seed


def paired_difference(runs: list[list], reference: list[list], groups: list, resamples: int
                      ) -> dict[str, tuple[float, list[float], list[float]] | None]:
    """Figure of ``runs`` minus the same figure of ``reference`` (each a list of seeds' runs on the same samples,
    seed k of one paired with seed k of the other), averaged over seeds, with its 95 % interval (every resample
    draws the same samples and the same seeds for both) and the per-seed differences (their mean is the
    difference: a figure's seed-mean is the mean of its seeds' figures)."""
    if len(runs) != len(reference):
        raise ValueError(f"paired difference needs the same seeds on both sides ({len(runs)} vs {len(reference)} runs)")
    bootstrap = Bootstrap(groups, resamples, seeds=len(runs))
    mine, theirs = bootstrap.figures(runs), bootstrap.figures(reference)
    one_draw = Bootstrap(groups, 1)  # a single seed's value: its point does not depend on the draws
    per_seed = [(one_draw.figures([a]), one_draw.figures([b])) for a, b in zip(runs, reference)]
    return {key: None if mine[key] is None or theirs[key] is None else
            (mine[key][0] - theirs[key][0], interval(mine[key][1] - theirs[key][1]),
             [a[key][0] - b[key][0] for a, b in per_seed]) for key in FIGURES}
