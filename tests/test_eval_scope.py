"""eval_scope needed: the base row scores every task, stage l only tasks i <= l + 1 (all that AP / LA / BWT / FWT /
forgetting read); the figures equal those of eval_scope all, the summary, its text and the plots show the gaps."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import sequential
import train_slsd_seq
from cl_metrics import FIGURES
from configs.base_config import build_config
from plot_loss import plot_runs

TASKS = ["T2_math", "T1_general", "T3_code"]
NEEDED = {(-1, 0), (-1, 1), (-1, 2), (0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)}  # not (0, 2)


def run(folder, data, name: str, scope: str) -> dict:
    return train_slsd_seq.main(["--preset", "smoke", "--tasks", ",".join(TASKS), "--max_steps", "2",
                                "--max_seq_len", "128", "--max_eval_samples", "2", "--no_plots", "--eval_scope", scope,
                                "--data_dir", str(data), "--log_dir", str(folder / "logs"),
                                "--checkpoint_dir", str(folder / "ckpt"), "--run_name", name])


def cells(folder, name: str) -> list[tuple[int, int]]:
    """The (stage, task index) of every eval.jsonl row, in file order."""
    rows = [json.loads(line) for line in (folder / "logs" / name / "eval.jsonl").read_text().splitlines()]
    return [(r["stage"], TASKS.index(r["task"])) for r in rows]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data):
    """The same config run with eval_scope needed and all (same seed)."""
    folder = tmp_path_factory.mktemp("scope")
    return folder, run(folder, small_data, "needed", "needed"), run(folder, small_data, "all", "all")


def test_needed_scores_only_the_cells_the_figures_read(runs):
    folder, needed, every = runs
    assert sorted(cells(folder, "needed")) == sorted(NEEDED)  # each cell once
    assert len(cells(folder, "all")) == 4 * len(TASKS)
    for key in ("R", "R_ci", "loss_matrix", "format_matrix", "cutoff_matrix"):
        gaps = [(s, t) for s, row in enumerate(needed[key]) for t, value in enumerate(row) if value is None]
        assert gaps == [(0, 2)], key
    for key in ("R", "loss_matrix"):  # the smoke model scores 0 everywhere: its eval loss tells the weights apart
        assert needed[key][0][:2] == every[key][0][:2] and needed[key][1:] == every[key][1:], key
    assert (TASKS[0], TASKS[2]) not in {(c["after"], c["task"]) for c in needed["mostly_cut_off"]}


def test_needed_figures_and_weights_equal_those_of_every_cell(runs):
    """Skipping evaluations changes neither the training (evaluation draws no training randomness) nor a figure."""
    folder, needed, every = runs
    adapters = [load_file(str(folder / "ckpt" / name / "stage_2_T3_code" / "adapters.safetensors"))
                for name in ("needed", "all")]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.equal(adapters[0][k], adapters[1][k]) for k in adapters[0])
    for key in FIGURES:
        assert math.isfinite(needed[key]) and needed[key] == every[key], key
        assert needed[f"{key}_ci"] == every[f"{key}_ci"], key
    assert needed["final_scores"] == every["final_scores"]


def test_summary_text_and_plots_show_the_gap(runs):
    folder, needed, _ = runs
    after_first = next(line for line in sequential.format_summary(needed).splitlines() if line.startswith(TASKS[0]))
    assert after_first.split()[-1] == "–"  # a cell eval_scope needed does not score
    written = plot_runs([folder / "logs" / "needed", folder / "logs" / "all"])
    names = {path.name for path in written}
    assert {"eval_by_task.png", "score_matrix.png", "comparison.png"} <= names
    assert all(path.stat().st_size > 1000 for path in written)


def test_resume_scores_the_missing_needed_cells_only(runs, small_data):
    """A run stopped inside stage 0's evaluation (its rows from (0, 1) on lost) resumes: trains nothing, keeps the
    rows it has, adds the needed ones and never (0, 2). Resumes the fixture's needed run in place (same rows after)."""
    folder, needed, _ = runs
    log = folder / "logs" / "needed"
    trained = (log / "train_loss.jsonl").read_text()
    lines = (log / "eval.jsonl").read_text().splitlines(keepends=True)
    head = [(-1, 0), (-1, 1), (-1, 2), (0, 0)]
    assert cells(folder, "needed")[:len(head)] == head
    (log / "eval.jsonl").write_text("".join(lines[:len(head)]))
    resumed = run(folder, small_data, "needed", "needed")
    assert cells(folder, "needed")[:len(head)] == head
    assert sorted(cells(folder, "needed")) == sorted(NEEDED)  # each cell once
    assert (log / "train_loss.jsonl").read_text() == trained
    assert resumed["R"] == needed["R"] and all(resumed[k] == needed[k] for k in FIGURES)


@pytest.mark.parametrize("scope, stages, expected", [
    ("needed", [["a"], ["b"], ["c"], ["d"]],
     [["a", "b", "c", "d"], ["a", "b"], ["a", "b", "c"], ["a", "b", "c", "d"], ["a", "b", "c", "d"]]),
    ("needed", [["a", "b", "c"]], [["a", "b", "c"], ["a", "b", "c"]]),  # multi-task: one stage holds every task
    ("all", [["a"], ["b"], ["c"]], [["a", "b", "c"]] * 4),
])
def test_eval_tasks_per_stage(scope, stages, expected):
    config = build_config("smoke", overrides=dict(tasks=expected[0], eval_scope=scope))
    sequence = SimpleNamespace(config=config, stages=stages)
    assert [sequential.Sequence.eval_tasks(sequence, stage) for stage in range(-1, len(stages))] == expected
