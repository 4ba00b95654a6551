"""Continual-learning metrics on a hand-computed score matrix, and their bootstrap confidence intervals."""
import numpy as np
import pytest

from cl_metrics import Bootstrap, continual_metrics, figures_with_ci, interval, paired_difference, score_ci


def test_metrics_on_a_hand_computed_matrix():
    base = [0.1, 0.2, 0.0]
    R = [[0.8, 0.3, 0.1],   # after stage 0
         [0.6, 0.9, 0.2],   # after stage 1
         [0.5, 0.7, 0.9]]   # after stage 2
    m = continual_metrics(R, base)
    assert m["AP"] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
    assert m["LA"] == pytest.approx((0.8 + 0.9 + 0.9) / 3)
    assert m["BWT"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert m["FWT"] == pytest.approx(((0.3 - 0.2) + (0.2 - 0.0)) / 2)
    assert m["forgetting"] == pytest.approx(((0.8 - 0.5) + (0.9 - 0.7)) / 2)
    batched = continual_metrics(np.stack([R, np.zeros((3, 3))]), np.stack([base, np.zeros(3)]))
    assert batched["forgetting"] == pytest.approx([m["forgetting"], 0.0])  # leading axes: one figure per resample


def test_single_task_has_no_transfer_and_multitask_no_la():
    m = continual_metrics([[0.4]], [0.1])
    assert m["AP"] == 0.4 and m["LA"] == 0.4 and m["BWT"] is None and m["FWT"] is None and m["forgetting"] is None
    multitask = continual_metrics([[0.4, 0.6]], [0.1, 0.2])  # one stage, two tasks
    assert multitask["AP"] == pytest.approx(0.5) and multitask["LA"] is None


def test_score_interval_contains_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(3)
    widths = []
    for n in (20, 500):
        scores = (rng.random(n) < 0.3).astype(float)
        lo, hi = score_ci(scores, [""] * n, 1000)
        assert lo <= scores.mean() <= hi and lo < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~1/sqrt(n): 5x narrower for 25x the samples
    assert score_ci(scores, [""] * 500, 1000) == [lo, hi]  # seeded: the same scores, the same interval


def test_balanced_score_is_resampled_within_its_groups():
    """Refuse everything: harmful scores 1, benign 0. Stratified draws keep both groups whole: always 0.5."""
    scores, groups = [1.0] * 30 + [0.0] * 10, ["harmful"] * 30 + ["benign"] * 10
    assert score_ci(scores, groups, 1000) == [0.5, 0.5]


def test_joint_interval_of_bwt_on_a_per_sample_matrix():
    """Every sample of task 0 loses exactly 0.1 from stage 0 to stage 1: BWT is -0.1 on every joint resample, though
    each cell alone is uncertain (resampling the rows independently would give BWT a wide interval)."""
    u = np.random.default_rng(0).random(40)
    task0 = np.stack([u * 0, u, u - 0.1])  # rows: base, after stage 0, after stage 1
    task1 = np.stack([u * 0, 0.5 * u, u])
    figures = figures_with_ci([task0, task1], [[""] * 40, [""] * 40], 1000)
    assert figures["BWT"] == pytest.approx(-0.1) and figures["BWT_ci"] == pytest.approx([-0.1, -0.1])
    assert figures["forgetting_ci"] == pytest.approx([0.1, 0.1])
    assert figures["LA"] == pytest.approx(u.mean())
    lo, hi = figures["LA_ci"]
    assert lo < u.mean() < hi and hi - lo > 0.1
    for key in ("AP", "FWT"):
        assert figures[f"{key}_ci"][0] <= figures[key] <= figures[f"{key}_ci"][1]


def test_plasticity_per_task_is_paired_and_reads_the_task_metric():
    """Each task's R[i][i] − base[i]: task 0 gains exactly 0.2 on every sample, so its interval is [0.2, 0.2] (cells
    resampled apart would give a wide one); task 1 (T5-like groups) gains 0.5, the mean of its group means (harmful
    all refused, benign all answered), not the plain mean of its samples (0.75)."""
    u = np.random.default_rng(2).random(40)
    task0 = np.stack([u, u + 0.2, u])  # rows: base, after stage 0, after stage 1
    groups1 = ["harmful"] * 30 + ["benign"] * 10
    task1 = np.stack([np.zeros(40), np.zeros(40), np.array([1.0] * 30 + [0.0] * 10)])
    figures = figures_with_ci([task0, task1], [[""] * 40, groups1], 1000)
    assert figures["plasticity"] == pytest.approx([0.2, 0.5])
    assert figures["plasticity_ci"][0] == pytest.approx([0.2, 0.2])
    assert figures["plasticity_ci"][1] == pytest.approx([0.5, 0.5])
    assert figures_with_ci([task0[:2]], [[""] * 40], 10)["plasticity"] == pytest.approx([0.2])


def test_paired_difference_is_zero_for_identical_methods_and_found_for_a_real_one():
    rng = np.random.default_rng(1)
    groups = [[""] * 30, ["harmful"] * 20 + ["benign"] * 10]
    seeds = [[(rng.random((3, 30)) < 0.5).astype(float), (rng.random((3, 30)) < 0.5).astype(float)] for _ in range(3)]
    same = paired_difference(seeds, seeds, groups, 1000)
    for key in ("AP", "BWT", "LA"):
        assert same[key] == (0.0, [0.0, 0.0], [0.0, 0.0, 0.0])
    better = [[np.vstack([s[:-1], np.minimum(1, s[-1:] + 1.0)]) if j == 0 else s for j, s in enumerate(run)]
              for run in seeds]  # task 0 right on every sample after the last stage
    difference, (lo, hi), per_seed = paired_difference(better, seeds, groups, 1000)["AP"]
    assert difference > 0 and lo > 0  # the interval excludes 0
    alone = [paired_difference([b], [s], groups, 10)["AP"][0] for b, s in zip(better, seeds)]  # each seed alone
    assert per_seed == pytest.approx(alone) and difference == pytest.approx(np.mean(per_seed))
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(seeds[:2], seeds, groups, 1000)


def test_plasticity_is_each_tasks_gain_in_its_own_stage():
    # two tasks of 4 samples; rows: base, after stage 1, after stage 2
    t1 = [[0, 0, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]  # gains 0.75 in its stage, then falls (not plasticity)
    t2 = [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]  # base 0.25, R[1][1] = 1: gain 0.75; R[0][1] is transfer
    groups = [[0] * 4, [0] * 4]
    seeds = [[t1, t2], [t1, [[0, 0, 0, 0], t2[1], [1, 1, 0, 0]]]]  # seed 2: t2 base 0, R[1][1] 0.5: gain 0.5
    gain, resampled = Bootstrap(groups, 200, seeds=2).plasticity(seeds)
    assert gain == pytest.approx([0.75, 0.625])
    assert resampled.shape == (200, 2) and np.all(resampled[:, 0] >= 0)
    lo, hi = np.percentile(resampled[:, 1], [2.5, 97.5])
    assert lo <= 0.625 <= hi and lo < hi  # the seeds differ: the interval has width
    multitask = [[[0, 0, 0, 0], [1, 1, 1, 0]], [[1, 0, 0, 0], [1, 1, 0, 0]]]  # one stage for two tasks
    assert Bootstrap(groups, 10).plasticity([multitask]) is None


def test_json_ready_writes_non_finite_figures_as_null():
    import json

    from utils_data import json_ready

    figures = {"drift": [float("nan"), 0.5], "loss": np.float64("inf"), "nested": {"ci": (float("-inf"), 1.0)}, "n": 3}
    ready = json_ready(figures)
    assert ready == {"drift": [None, 0.5], "loss": None, "nested": {"ci": [None, 1.0]}, "n": 3}
    assert json.loads(json.dumps(ready, allow_nan=False)) == ready  # strict JSON
    assert json_ready(float("nan")) is None  # a bare NaN too


def subset_rows() -> dict:
    """Two tasks, four samples each; the row after stage 0 scored a subset (positions 0 and 2) of each."""
    full = dict(sample_groups=[""] * 4, sample_nll=[1.0] * 4, sample_tokens=[1] * 4, sample_format=[1] * 4)
    return {(-1, "a"): dict(full, sample_scores=[0, 0, 0, 0]), (-1, "b"): dict(full, sample_scores=[0, 0, 0, 0]),
            (0, "a"): dict(full, sample_scores=[1, 1], sample_positions=[0, 2], sample_nll=[1.0, 1.0],
                           sample_tokens=[1, 1], sample_format=[1, 1]),
            (0, "b"): dict(full, sample_scores=[1, 0], sample_positions=[0, 2], sample_nll=[1.0, 1.0],
                           sample_tokens=[1, 1], sample_format=[1, 1]),
            (1, "a"): dict(full, sample_scores=[0, 0, 1, 0], sample_nll=[1.0, 9.0, 1.0, 9.0],
                           sample_format=[1, 0, 1, 0]),
            (1, "b"): dict(full, sample_scores=[1, 1, 1, 1])}


def test_a_subset_row_is_scattered_to_its_positions_and_scored_on_them():
    """config.early_eval_samples: R[0][a] is the mean of the two samples it scored (1.0), not of four with the
    skipped ones as 0 (0.5); BWT and forgetting compare it with the final row on those same two samples (0.5, not
    0.25 over all four: paired), while AP reads the final row whole."""
    from cl_metrics import run_samples

    scores, groups = run_samples(subset_rows(), ["a", "b"], 2)
    assert np.isnan(scores[0][1][1]) and np.isnan(scores[0][1][3]) and scores[0][1][2] == 1
    figures = Bootstrap(groups, 200).figures([scores])
    assert figures["BWT"][0] == pytest.approx(0.5 - 1.0)
    assert figures["forgetting"][0] == pytest.approx(1.0 - 0.5)
    assert figures["AP"][0] == pytest.approx((0.25 + 1.0) / 2)
    assert figures["LA"][0] == pytest.approx((1.0 + 1.0) / 2)  # R[0][a] = 1 on its subset; R[1][b] = 1
    assert np.isfinite(interval(figures["BWT"][1])).all()  # resamples that drew no subset sample are left out


def test_drift_compares_only_the_samples_both_rows_scored():
    """Samples 1 and 3 (nll 9, format 0 in the final row) were not scored in a's own stage: the drift leaves them
    out, so a's eval loss and format held (0 change) on the samples the two rows share."""
    from cl_metrics import recovery_samples

    inputs = recovery_samples(subset_rows(), {}, ["a", "b"], 2)
    drift = Bootstrap(inputs["groups"], 200).drift([inputs["nll"]], [inputs["tokens"]], [inputs["formats"]])
    assert drift["delta_loss"][0][0] == pytest.approx(0.0) and drift["delta_format"][0][0] == pytest.approx(0.0)
    assert np.isfinite(interval(drift["delta_loss"][1][:, 0])).all()
