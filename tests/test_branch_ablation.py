"""bench/branch_ablation.py pairs each sample of a run's last evaluation with the same sample scored without a branch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import branch_ablation  # noqa: E402

TASKS = ["T1_general", "T2_math"]


def write_run(logs: Path, run: str, ended: dict, without: dict, groups: dict) -> None:
    """A run whose last stage (1) scored ``ended`` {task: per-sample scores} (T2 only on its samples 0 and 2 the stage
    before: a subset row the pairing must not read), and its ablation that scored ``without``."""
    (logs / run).mkdir(parents=True)
    rows = [dict(stage=0, task="T2_math", sample_scores=[1.0, 1.0], sample_positions=[0, 2], sample_groups=groups["T2_math"],
                 eval_loss=9.0)]
    rows += [dict(stage=1, task=t, sample_scores=ended[t], sample_groups=groups[t], eval_loss=1.0) for t in TASKS]
    (logs / run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (logs / f"{run}_drop_slow").mkdir()
    tasks = {t: dict(sample_scores=without[t], sample_groups=groups[t], eval_loss=1.5) for t in TASKS}
    (logs / f"{run}_drop_slow" / "summary.json").write_text(json.dumps(dict(tasks=tasks)))


def test_delta_is_without_minus_ended_sample_by_sample(tmp_path):
    """Seed a: T1 gains 2 of 4 samples without the branch, T2 loses 1 of 4; seed b: nothing changes. The seed-mean
    Δ is +0.25 / −0.125, the old tasks' Δ is T1's (T2 is the last task), the loss rose 0.5 on every task."""
    groups = {t: [""] * 4 for t in TASKS}
    write_run(tmp_path, "a", {"T1_general": [0, 0, 1, 0], "T2_math": [1, 1, 0, 0]},
              {"T1_general": [1, 1, 1, 0], "T2_math": [1, 0, 0, 0]}, groups)
    write_run(tmp_path, "b", {"T1_general": [0, 1, 0, 1], "T2_math": [0, 0, 1, 1]},
              {"T1_general": [0, 1, 0, 1], "T2_math": [0, 0, 1, 1]}, groups)
    report = branch_ablation.group_report(["a", "b"], "slow", logs=tmp_path)["per_task"]
    assert report["T1_general"]["delta"] == pytest.approx(0.25)
    assert report["T1_general"]["delta_per_seed"] == pytest.approx([0.5, 0.0])
    assert report["T2_math"]["delta"] == pytest.approx(-0.125)
    assert report["old_tasks"]["delta"] == pytest.approx(0.25)
    lo, hi = report["T1_general"]["delta_ci"]
    assert lo <= 0.25 <= hi and lo < hi
    assert report["T2_math"]["delta_loss_per_seed"] == pytest.approx([0.5, 0.5])


def test_other_samples_are_refused(tmp_path):
    """The ablation's samples must be the last evaluation's: another grouping (another subset) stops the pairing."""
    write_run(tmp_path, "a", {t: [0, 1] for t in TASKS}, {t: [1, 1] for t in TASKS}, {t: ["", ""] for t in TASKS})
    summary = tmp_path / "a_drop_slow" / "summary.json"
    saved = json.loads(summary.read_text())
    saved["tasks"]["T1_general"]["sample_groups"] = ["harmful", "benign"]
    summary.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="other samples"):
        branch_ablation.group_report(["a"], "slow", logs=tmp_path)
