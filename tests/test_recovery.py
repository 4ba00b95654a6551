"""Illusory vs real forgetting: cl_metrics' split and drift on hand-made runs, recovery_probe.py on a smoke sequence
(the probe trains the task's own weights from the final checkpoint, afresh for every task, resumably), and the
comparison's pooled figures."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import recovery_probe
import train_slsd_seq
from cl_metrics import (Bootstrap, continual_metrics, figures_with_ci, format_drift_only, forgetting_split,
                        recovery_report)
from configs.base_config import ConfigError, build_config
from evaluation import select_samples
from methods import make_method
from models.loading import load_model, load_tokenizer
from utils_data import read_rows, read_task

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare_methods  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# ---- the split on hand-made runs -----------------------------------------------------------------------------------
# Five tasks, four samples each; rows: base, after each of the 5 stages, then after the task's recovery probe.
SAMPLES = {
    # best 0.75 (stage 1), final 0.25: drop 0.5; the probe brings back 1.0 (gain 0.75): illusory 0.5 (clipped), real 0
    "overshoot": [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]],
    # best 0.5, final 0: drop 0.5; nothing comes back: illusory 0, real 0.5 (stage 0, before its own, does not count)
    "lost": [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    # best 0.75, final 0.25: drop 0.5; back to 0.5: illusory 0.25, real 0.25
    "partial": [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],
    # T5-like groups (harmful, harmful, benign, benign: the mean of group means); its own stage 0.5, final 0.75: it
    # rose (drop −0.25); the probe's gain of 0.25 is no recovery: illusory 0, real −0.25
    "rose": [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
    "last": [[0, 0, 0, 0]] * 5 + [[1, 1, 0, 0]] * 2,
}
GROUPS = [[""] * 4, [""] * 4, [""] * 4, ["harmful", "harmful", "benign", "benign"], [""] * 4]
EXPECTED = dict(illusory=[0.5, 0.0, 0.25, 0.0], real=[0.0, 0.5, 0.25, -0.25])
# The same probe from the base model (scores 0 everywhere): it teaches overshoot 0.5 (of its gain 0.75: 0.25 is
# beyond the control), partial 0.25 (its whole gain: nothing beyond), lost nothing (nothing came back either)
CONTROL = [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
EXPECTED_CONTROLLED = [0.25, 0.0, 0.0, 0.0]


def hand_run() -> tuple[list, list]:
    """(scores of every evaluation per task, scores after each task's probe)."""
    rows = [np.asarray(s, dtype=float) for s in SAMPLES.values()]
    return [r[:-1] for r in rows], [r[-1] for r in rows]


def test_illusory_plus_real_is_the_forgetting_figure_task_by_task():
    scores, recovered = hand_run()
    bootstrap = Bootstrap(GROUPS, 300)
    point, _ = bootstrap.matrix(scores)
    split = forgetting_split(point[1:], bootstrap.matrix([r[None] for r in recovered])[0][0])
    assert split["illusory"].tolist() == EXPECTED["illusory"] and split["real"].tolist() == EXPECTED["real"]
    forgetting = continual_metrics(point[1:], point[0])["forgetting"]
    assert forgetting == pytest.approx((0.5 + 0.5 + 0.5 - 0.25) / 4)
    # every resample too: the split is recomputed on the draws that resample the forgetting figure
    pooled = bootstrap.recovery([scores], [recovered])
    figures = bootstrap.figures([scores])
    assert pooled["forgetting"][0] == pytest.approx(forgetting)
    np.testing.assert_allclose(pooled["forgetting_illusory"][1] + pooled["forgetting_real"][1],
                               figures["forgetting"][1], atol=1e-12)
    assert np.ptp(figures["forgetting"][1]) > 0  # the draws do vary
    data = dict(scores=scores, groups=GROUPS, recovered=recovered, nll=[np.ones_like(s) for s in scores],
                tokens=[np.ones_like(s) for s in scores], formats=[np.ones_like(s) for s in scores])
    report = recovery_report([data], list(SAMPLES), 300)
    assert report["forgetting_illusory"] + report["forgetting_real"] == pytest.approx(report["forgetting"])
    assert report["forgetting_illusory"] == pytest.approx(0.75 / 4) and report["forgetting_real"] == pytest.approx(0.5 / 4)
    assert report["forgetting_ci"] == figures_with_ci(scores, GROUPS, 300)["forgetting_ci"]  # the same draws
    assert list(report["tasks"]) == ["overshoot", "lost", "partial", "rose"]  # the last task cannot be forgotten
    assert [report["tasks"][t]["illusory"] for t in report["tasks"]] == EXPECTED["illusory"]
    assert report["forgetting_illusory_controlled"] is None  # no control rows: no controlled reading


def test_the_control_takes_off_what_the_probe_teaches_from_scratch():
    scores, recovered = hand_run()
    control = [np.asarray(c, dtype=float) for c in CONTROL]
    bootstrap = Bootstrap(GROUPS, 300)
    point, _ = bootstrap.matrix(scores)
    probe_rows = [bootstrap.matrix([r[None] for r in rows])[0][0] for rows in (recovered, control)]
    split = forgetting_split(point[1:], probe_rows[0], point[0], probe_rows[1])
    assert split["taught"].tolist() == [0.5, 0.0, 0.25, 1.0] and split["illusory_controlled"].tolist() == \
        EXPECTED_CONTROLLED
    assert (split["illusory_controlled"] <= split["illusory"]).all()
    worse = forgetting_split(point[1:], probe_rows[0], point[0] + 0.5, probe_rows[1])  # the probe hurt the base
    assert worse["illusory_controlled"].tolist() == EXPECTED["illusory"]  # a harmful control adds nothing
    data = dict(scores=scores, groups=GROUPS, recovered=recovered, control=control,
                **{key: [np.ones_like(s) for s in scores] for key in ("nll", "tokens", "formats")})
    report = recovery_report([data], list(SAMPLES), 300)
    assert report["forgetting_illusory_controlled"] == pytest.approx(0.25 / 4)
    lo, hi = report["forgetting_illusory_controlled_ci"]
    assert 0 <= lo <= 0.25 / 4 <= hi <= report["forgetting_illusory_ci"][1]
    assert [report["tasks"][t]["illusory_controlled"] for t in report["tasks"]] == EXPECTED_CONTROLLED


def test_format_drift_only_needs_a_fallen_format_and_a_held_loss():
    # Four tasks, two samples each with 1 and 9 supervised tokens; rows: base, then each of the 4 stages.
    tokens = np.array([[1.0, 9.0]] * 5)
    steady = tokens * 2  # a per-token loss of 2 in every row
    rising = np.vstack([tokens[:4], [[3.0, 18.0]]])  # 1 per token, then (3 + 18) / 10 = 2.1 after the last stage
    fell, held = np.vstack([np.ones((4, 2)), np.zeros((1, 2))]), np.ones((5, 2))
    zeros = [np.zeros((5, 2))] * 4
    data = dict(scores=zeros, groups=[[""] * 2] * 4, recovered=[np.zeros(2)] * 4, nll=[steady, rising, steady, steady],
                tokens=[tokens] * 4, formats=[fell, fell, held, held])
    report = recovery_report([data], ["a", "b", "c", "last"], 200)["tasks"]
    # token-weighted as eval_loss: 2.1 − 1 = 1.1 (a mean of per-sample losses would give (3 + 2) / 2 − 1 = 1.5)
    assert [report[t]["delta_loss"] for t in "abc"] == pytest.approx([0.0, 1.1, 0.0])
    assert [report[t]["delta_format"] for t in "abc"] == [-1.0, -1.0, 0.0]
    assert [report[t]["format_drift_only"] for t in "abc"] == [True, False, False]  # b: the loss rose too
    assert not format_drift_only([-0.1, 0.3], [-1.0, -0.5])  # reaching 0 is not enough: a rise of 0.3 is not excluded
    assert not format_drift_only([-0.01, 1.5], [-1.0, -0.5])
    assert format_drift_only([0.001, 0.01], [-1.0, -0.5])  # risen, but less than the tolerance
    assert format_drift_only([-0.3, -0.1], [-1.0, -0.5])  # the loss fell
    assert not format_drift_only([0.05, 0.3], [-1.0, -0.5])  # the loss rose: the knowledge moved too
    assert not format_drift_only([-0.1, 0.1], [-0.5, 0.1])  # the format may not have fallen


# ---- the probe on a smoke sequence ---------------------------------------------------------------------------------
# recovery_lr_scale 100: the smoke preset's own rates (lr_slow 1e-3, lr_fast 5e-3), so two steps visibly train
PROBE_SCALE = dict(recovery_lr_scale="100")
PROBE = ["--tasks", "T2_math,T5_safety", "--recovery_steps", "2", "--recovery_lr_scale", "100"]


@pytest.fixture(scope="module")
def probed_run(small_data, tmp_path_factory):
    """A 3-task smoke sequence with a fast branch per task (each task is scored with slow + its own branch) and the
    probe of both old tasks: (log folder, final checkpoint, the probe's report)."""
    root = tmp_path_factory.mktemp("recovery")
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", "T2_math,T5_safety,T1_general",
                         "--method", "ds_lora", "--fast_mode", "per_task", "--max_steps", "2", "--save_every", "0",
                         "--max_eval_samples", "4", "--no_plots", "--log_dir", str(root / "logs"),
                         "--checkpoint_dir", str(root / "ckpt"), "--run_name", "run"])
    report = recovery_probe.main(["--run", str(root / "logs" / "run"), *PROBE])
    return root / "logs" / "run", root / "ckpt" / "run" / "stage_2_T1_general", report


def test_probe_trains_the_tasks_own_weights_from_the_final_checkpoint(probed_run, tmp_path):
    logs, checkpoint, _ = probed_run
    config = build_config("smoke", str(logs / "config.json"))
    method = make_method(load_model(config), load_tokenizer(config), config, torch.device("cpu"), None)
    records = select_samples(read_task("T2_math", config.eval_split, config.data_dir)[0], config.max_eval_samples,
                             config.eval_subset_seed)
    final = next(r for r in read_rows(logs / "eval.jsonl") if (r["stage"], r["task"]) == (2, "T2_math"))
    untouched = recovery_probe.probe_task(method, "T2_math", 0, checkpoint, records, None, 0,
                                          tmp_path / "loss.jsonl")[0]
    assert untouched["sample_scores"] == final["sample_scores"]  # no step: the run's own final evaluation
    assert untouched["sample_nll"] == pytest.approx(final["sample_nll"], rel=1e-6)
    probed = recovery_probe.probe_task(method, "T2_math", 0, checkpoint, records, None, 2,
                                       tmp_path / "loss.jsonl")[0]
    assert probed["eval_loss"] != pytest.approx(final["eval_loss"], rel=1e-4)
    saved, now = load_file(checkpoint / "adapters.safetensors"), method.dslora.adapter_state()
    moved = {key.split(".")[-2] for key in saved if not torch.equal(saved[key], now[key])}  # slow, or a fast name
    assert moved == {"slow", "T2_math"}  # T2's own fast branch, not the active one of the last stage (T1's)
    row = read_rows(logs / "recovery.jsonl")[0]
    assert (row["task"], row["start"]) == ("T2_math", "final")
    assert row["sample_nll"] == pytest.approx(probed["sample_nll"], rel=1e-6)
    answers = read_rows(recovery_probe.probe_answers(logs, "T2_math", "final", row["setting"]))  # for rescore.py
    assert [a["id"] for a in answers] == [r["id"] for r in records]
    assert [a["score"] for a in answers] == row["sample_scores"]


def test_the_control_probe_starts_from_the_base_model(probed_run, tmp_path):
    logs, checkpoint, report = probed_run
    config = build_config("smoke", str(logs / "config.json"), overrides=PROBE_SCALE)
    records = select_samples(read_task("T2_math", config.eval_split, config.data_dir)[0], config.max_eval_samples,
                             config.eval_subset_seed)
    base = next(r for r in read_rows(logs / "eval.jsonl") if (r["stage"], r["task"]) == (-1, "T2_math"))
    untouched = recovery_probe.probe_task(recovery_probe.fresh_method(config), "T2_math", 0, None, records, None, 0,
                                          tmp_path / "loss.jsonl")[0]
    assert untouched["sample_nll"] == pytest.approx(base["sample_nll"], rel=1e-5)  # no step: the base row
    controls = [r for r in read_rows(logs / "recovery.jsonl") if r["start"] == "base"]
    assert [(r["task"], r["checkpoint"]) for r in controls] == [("T2_math", "base"), ("T5_safety", "base")]
    assert controls[0]["eval_loss"] != pytest.approx(base["eval_loss"], rel=1e-4)  # its steps did train
    # the row main() wrote is the probe of a freshly built method (not of the weights an earlier probe left)
    again = recovery_probe.probe_task(recovery_probe.fresh_method(config), "T2_math", 0, None, records, None, 2,
                                      tmp_path / "loss.jsonl")[0]
    assert controls[0]["sample_nll"] == pytest.approx(again["sample_nll"], rel=1e-6)
    for task, entry in report["tasks"].items():
        assert entry["control"] == pytest.approx(next(r for r in controls if r["task"] == task)["score"])


def test_each_probe_starts_afresh_and_resume_skips_done_tasks(probed_run, tmp_path, monkeypatch):
    logs, _, report = probed_run
    copy = tmp_path / "logs" / "run"  # the same run name: the same checkpoint
    shutil.copytree(logs, copy)
    first = read_rows(copy / "recovery.jsonl")
    assert [(r["task"], r["start"]) for r in first] == [("T2_math", "final"), ("T2_math", "base"),
                                                         ("T5_safety", "final"), ("T5_safety", "base")]
    probed, probe = [], recovery_probe.probe_task
    monkeypatch.setattr(recovery_probe, "probe_task", lambda method, task, index, start, *rest: probed.append(
        (task, "base" if start is None else "final")) or probe(method, task, index, start, *rest))
    argv = ["--run", str(copy), *PROBE]
    assert recovery_probe.main(argv) == report and probed == []  # all done: nothing is probed again
    (copy / "recovery.jsonl").write_text("".join(json.dumps(r) + "\n" for r in first[:2]))  # T5's probes lost
    recovery_probe.main(argv)
    assert probed == [("T5_safety", "final"), ("T5_safety", "base")]
    again = read_rows(copy / "recovery.jsonl")[2:]
    # T5 probed first in a fresh process equals T5 probed after T2's probe: each starts afresh
    for row, before in zip(again, first[2:]):
        assert row["sample_nll"] == pytest.approx(before["sample_nll"], rel=1e-6)
        assert row["sample_scores"] == before["sample_scores"]
    probed.clear()  # another probe strength is another probe setting: nothing of the first is reused
    recovery_probe.main([*argv, "--recovery_lr_scale", "30"])
    assert [task for task, _ in probed] == ["T2_math", "T2_math", "T5_safety", "T5_safety"]
    assert json.loads((copy / "recovery.json").read_text())["setting"] != read_rows(copy / "recovery.jsonl")[0]["setting"]


def test_the_probe_trains_at_the_default_rates_times_its_scale_whatever_the_run_trained_at(probed_run, tmp_path):
    """The run trained at the smoke preset's lr_slow 1e-3 / lr_fast 5e-3; a probe at recovery_lr_scale 30 trains
    both of its starts at 30 x the Config defaults (3e-4 / 1.5e-3), every step."""
    copy = tmp_path / "logs" / "run"
    shutil.copytree(probed_run[0], copy)
    (copy / "recovery.jsonl").unlink()
    recovery_probe.main(["--run", str(copy), "--tasks", "T2_math", "--recovery_steps", "2",
                         "--recovery_lr_scale", "30"])
    for start in recovery_probe.STARTS:
        rows = read_rows(copy / "recovery" / f"T2_math_{start}_train_loss.jsonl")
        rates = {key: value for row in rows for key, value in row.items() if key.startswith("lr_")}
        assert len(rows) == 2 and rates == {"lr_slow": pytest.approx(3e-4), "lr_fast": pytest.approx(1.5e-3)}
    # the probe rows and the report name the setting: steps, samples and the scale
    assert {row["recovery_lr_scale"] for row in read_rows(copy / "recovery.jsonl")} == {30.0}
    assert json.loads((copy / "recovery.json").read_text())["recovery_lr_scale"] == 30.0


def test_report_splits_the_runs_forgetting_and_the_comparison_pools_it(probed_run):
    logs, _, report = probed_run
    summary = json.loads((logs / "summary.json").read_text())
    assert json.loads((logs / "recovery.json").read_text()) == report
    assert report["forgetting"] == pytest.approx(summary["forgetting"])
    assert report["forgetting_ci"] == pytest.approx(summary["forgetting_ci"])  # the run's own draws
    assert report["forgetting_illusory"] + report["forgetting_real"] == pytest.approx(report["forgetting"])
    assert list(report["tasks"]) == ["T2_math", "T5_safety"] and all(e["probed"] for e in report["tasks"].values())
    assert (logs / "recovery.png").stat().st_size > 0
    inputs = compare_methods.recovery_inputs([logs, logs], [summary, summary])  # two seeds, the same run
    pooled = recovery_report(inputs, summary["tasks"], 200)
    for key in ("forgetting", "forgetting_illusory", "forgetting_real", "forgetting_illusory_controlled"):
        assert pooled[key] == pytest.approx(report[key])
    assert compare_methods.recovery_cells(pooled)[-1] == ", ".join(
        t for t, e in pooled["tasks"].items() if e["format_drift_only"]) or "none"
    assert compare_methods.recovery_cells(None) == ["–"] * 4


def test_with_a_subset_before_the_last_stage_the_probe_scores_that_subset(small_data, tmp_path):
    """early_eval_samples 2 of 4: the split reads each old task where all its evaluations scored, so the probe
    scores those 2 samples only; its row is laid out as the run's (null elsewhere) and the report's forgetting is
    the run's own figure."""
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", "T2_math,T5_safety,T1_general",
                         "--method", "seq_lora", "--max_steps", "2", "--save_every", "0", "--max_eval_samples", "4",
                         "--early_eval_samples", "2", "--no_plots", "--log_dir", str(tmp_path / "logs"),
                         "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", "run"])
    run = tmp_path / "logs" / "run"
    report = recovery_probe.main(["--run", str(run), *PROBE])
    subset = {r["task"]: r["sample_positions"] for r in read_rows(run / "eval.jsonl") if r["stage"] == 0}
    for row in read_rows(run / "recovery.jsonl"):
        assert row["sample_positions"] == subset[row["task"]] and len(row["sample_groups"]) == 2
        assert [i for i, v in enumerate(row["sample_scores"]) if v is not None] == subset[row["task"]]
    summary = json.loads((run / "summary.json").read_text())
    assert report["forgetting"] == pytest.approx(summary["forgetting"])
    assert report["forgetting_illusory"] + report["forgetting_real"] == pytest.approx(report["forgetting"])


def test_a_missing_run_or_checkpoint_is_a_one_line_error(probed_run, tmp_path):
    done = subprocess.run([sys.executable, "recovery_probe.py", "--run", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"recovery_probe.py: error: no run at {tmp_path / 'nowhere'}")
    lost = tmp_path / "lost"  # the run's logs under another name: no checkpoint of that name
    shutil.copytree(probed_run[0], lost)
    (lost / "recovery.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no final checkpoint"):
        recovery_probe.main(["--run", str(lost), *PROBE])


def test_a_probe_on_other_samples_than_the_run_s_is_refused_before_training(probed_run, small_data, tmp_path,
                                                                            monkeypatch):
    """Same count and strata (T2 has no groups), other samples: the guard compares the samples' ids."""
    other = tmp_path / "data"
    shutil.copytree(small_data, other)
    split = other / "T2_math" / "test.jsonl"
    split.write_text("".join(json.dumps(dict(r, id=f"other-{r['id']}")) + "\n" for r in read_rows(split)))
    run = tmp_path / "run"
    shutil.copytree(probed_run[0], run)
    (run / "recovery.jsonl").unlink()
    monkeypatch.setattr(recovery_probe, "train_stage", lambda *args, **kwargs: pytest.fail("the probe trained"))
    with pytest.raises(ConfigError, match="T2_math: the probe would evaluate other samples than the run"):
        recovery_probe.main(["--run", str(run), *PROBE, "--data_dir", str(other)])


def test_runs_that_differ_only_in_slsd_fields_share_one_control(probed_run, tmp_path, monkeypatch):
    """base_cache.CONTROL_FREE: ds_lora and ds_lora_slsd with another dose compute the same control (checked by
    computing both), so they share its key; so does a run trained at other rates (the probe trains at its own),
    not another probe strength. A second run reuses the stored control."""
    logs, _, _ = probed_run
    shared = str(tmp_path / "shared")
    plain = build_config("smoke", str(logs / "config.json"), overrides=dict(shared_base_dir=shared, **PROBE_SCALE))
    dosed = build_config("smoke", str(logs / "config.json"), overrides=dict(
        method="ds_lora_slsd", kd_lambda="2.0", probe_size="2", fast_mode="shared", max_steps="7",
        shared_base_dir=shared, **PROBE_SCALE))
    # a run trained at other rates: the probe trains at its own (probe_rates), so its control is the same
    faster = build_config("smoke", str(logs / "config.json"), overrides=dict(lr_slow="0.5", lr_fast="0.5",
                                                                             shared_base_dir=shared, **PROBE_SCALE))
    records = select_samples(read_task("T2_math", plain.eval_split, plain.data_dir)[0], plain.max_eval_samples,
                             plain.eval_subset_seed)
    controls = [recovery_probe.probe_task(recovery_probe.fresh_method(c), "T2_math", 0, None, records, None, 2,
                                          tmp_path / "loss.jsonl")[0] for c in (plain, dosed, faster)]
    assert controls[0]["sample_nll"] == controls[1]["sample_nll"] == controls[2]["sample_nll"]  # computed
    key = recovery_probe.control_of(plain, "T2_math", records, None)
    assert recovery_probe.control_of(dosed, "T2_math", records, None) == key
    assert recovery_probe.control_of(faster, "T2_math", records, None) == key
    stronger = dataclasses.replace(plain, recovery_lr_scale=300.0)  # another probe strength: another control
    assert recovery_probe.control_of(stronger, "T2_math", records, None) != key

    runs = []
    for name, extra in (("first", []), ("second", ["--kd_lambda", "3.0"])):
        copy = tmp_path / name / "run"  # the same run name: the same checkpoint
        shutil.copytree(logs, copy)
        (copy / "recovery.jsonl").unlink()
        runs.append((copy, [*PROBE, "--shared_base_dir", shared, *extra]))
    probed, probe = [], recovery_probe.probe_task
    monkeypatch.setattr(recovery_probe, "probe_task", lambda method, task, index, start, *rest: probed.append(
        (task, "base" if start is None else "final")) or probe(method, task, index, start, *rest))
    first = recovery_probe.main(["--run", str(runs[0][0]), *runs[0][1]])
    assert sorted(probed) == sorted([(t, s) for t in ("T2_math", "T5_safety") for s in ("final", "base")])
    assert len(list((tmp_path / "shared" / "controls").glob("*.json"))) == 2
    probed.clear()
    second = recovery_probe.main(["--run", str(runs[1][0]), *runs[1][1]])
    assert probed == [("T2_math", "final"), ("T5_safety", "final")]  # the controls were reused
    assert [second["tasks"][t]["control"] for t in second["tasks"]] == [first["tasks"][t]["control"]
                                                                         for t in first["tasks"]]
    settings = [read_rows(run / "recovery.jsonl")[0]["setting"] for run, _ in runs]
    for task in ("T2_math", "T5_safety"):  # a reused control's answers come with it
        assert read_rows(recovery_probe.probe_answers(runs[1][0], task, "base", settings[1])) == \
            read_rows(recovery_probe.probe_answers(runs[0][0], task, "base", settings[0]))
