"""bench/compare_methods.py: methods × seeds side by side, aggregated over seeds with intervals, paired differences
from ds_lora_slsd, finished runs reused; plot_loss.py's per-stage smoothing."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare_methods  # noqa: E402
from cl_metrics import FIGURES  # noqa: E402
from configs.base_config import build_config  # noqa: E402
from plot_loss import smooth, smooth_by_stage  # noqa: E402
from sequential import summary_from_logs  # noqa: E402
from utils_data import read_rows  # noqa: E402


def test_the_comparison_plot_draws_each_figure_s_mean_over_the_seeds_with_the_table_s_interval(tmp_path):
    row = dict(seeds=2, **{k: [0.25 + i / 10, 0.07] for i, k in enumerate(FIGURES)},
               **{f"{k}_ci": [0.1 + i / 10, 0.4 + i / 10] for i, k in enumerate(FIGURES)},
               final_scores={"T1_general": [0.5, 0.1], "T2_math": [0.0, 0.0]},
               final_ci={"T1_general": [0.3, 0.7], "T2_math": [0.0, 0.0]})
    rows = compare_methods.comparison_rows({"a": row, "b": dict(row, AP=[None, None], AP_ci=None)})
    assert rows["a"] == dict(**{k: row[k][0] for k in FIGURES}, **{f"{k}_ci": row[f"{k}_ci"] for k in FIGURES},
                             final_scores={"T1_general": 0.5, "T2_math": 0.0}, final_ci=row["final_ci"])
    assert rows["b"]["AP"] is None and rows["b"]["AP_ci"] is None  # a figure a method lacks (multitask's BWT)
    path = tmp_path / "c.png"
    assert compare_methods.plot_comparison(rows, [path], title="t") == [path] and path.stat().st_size > 0


def test_two_methods_two_seeds_two_at_a_time(small_data, tmp_path, monkeypatch, capsys):
    logs, results = tmp_path / "logs", tmp_path / "results"
    # a variant (DS-LoRA + SLSD with one field changed) as the reference: its field reaches its runs
    argv = ["--preset", "smoke", "--methods", "seq_lora", "--variant", "kd2:kd_lambda=2", "--reference", "kd2",
            "--seeds", "1,2", "--jobs", "2", "--name", "t",
            "--results_dir", str(results), "--tasks", "T2_math,T1_general", "--max_steps", "2",
            "--task_max_steps", "T1_general:3", "--max_eval_samples", "2", "--data_dir", str(small_data),
            "--log_dir", str(logs),
            "--checkpoint_dir", str(tmp_path / "ckpt"), "--archive_dir", str(tmp_path / "archive")]
    drawn = []  # what the comparison plot is given: the table's means over the seeds, not one seed's runs
    plot = compare_methods.plot_comparison
    monkeypatch.setattr(compare_methods, "plot_comparison", lambda rows, *a, **k: drawn.append(rows) or plot(rows, *a, **k))
    result = compare_methods.main(argv)

    saved = json.loads((results / "t.json").read_text())
    assert drawn == [compare_methods.comparison_rows(saved["table"])]
    table = saved["table"]
    assert set(table) == {"seq_lora", "kd2"} and set(result["AP"]) == set(table) == set(result["LA"])
    for label, row in table.items():
        runs = [json.loads((logs / f"cmp_t_{label}_s{seed}" / "summary.json").read_text()) for seed in (1, 2)]
        method = "ds_lora_slsd" if label == "kd2" else label
        assert [r["method"] for r in runs] == [method, method] and row["seeds"] == 2
        config = json.loads((logs / f"cmp_t_{label}_s1" / "config.json").read_text())
        assert config["kd_lambda"] == (2.0 if label == "kd2" else 0.5)
        aps = [r["AP"] for r in runs]
        assert row["AP"] == [statistics.fmean(aps), statistics.stdev(aps)]
        for key in ("AP", "LA", "BWT"):
            lo, hi = row[f"{key}_ci"]
            assert lo <= row[key][0] + 1e-12 and row[key][0] - 1e-12 <= hi
        assert (logs / "cmp_t_outputs" / f"cmp_t_{label}_s1.log").stat().st_size > 0  # --jobs 2: output per run
    assert set(saved["paired_differences"]) == {"seq_lora"} and saved["reference"] == "kd2"
    assert set(saved["paired_differences"]["seq_lora"]) == {"AP", "BWT", "LA", "forgetting", "illusory", "real",
                                                            "loss_BWT"}
    assert saved["paired_differences"]["seq_lora"]["illusory"] is not None  # both probed: the split is paired
    assert saved["steps_per_task"] == {"T2_math": 2, "T1_general": 3}  # what the runs trained, from their config
    assert saved["paired_differences"]["seq_lora"]["loss_BWT"] is not None  # both trained in stages: loss read
    markdown = (results / "t.md").read_text()
    assert "| seq_lora |" in markdown and "| kd2 |" in markdown and "Paired differences from `kd2`" in markdown
    assert (results / "t_paired.png").stat().st_size > 0
    assert "--jobs 2" in markdown and "2 seed(s) (1, 2)" in markdown
    assert "Optimizer steps per stage (the runs' config): T2_math 2, T1_general 3." in markdown
    assert (results / "t_comparison.png").stat().st_size > 0

    evaluated = {run: (run / "eval.jsonl").read_text() for run in logs.glob("cmp_t_*_s*")}
    started = []  # a second call reuses the finished runs and their probes without starting a process
    monkeypatch.setattr(compare_methods.subprocess, "run", lambda command, **_: started.append(command))
    assert compare_methods.main(argv)["AP"] == result["AP"] and started == []
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated

    # each finished run's folder is archived; where logs/ lacks it (a new machine), the archive is unpacked and the
    # run reused as it was, without starting a process
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == sorted(f"{r.name}.tar.gz" for r in evaluated)
    shutil.rmtree(logs / "cmp_t_seq_lora_s1")
    assert compare_methods.main(argv)["AP"] == result["AP"] and started == []
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated

    # a run is archived as soon as it is trained, before its probe: a probe cut short (the session's end) leaves
    # the run kept, to be probed next time
    run = logs / "cmp_t_seq_lora_s1"
    report = (run / "recovery.json").read_text()
    (tmp_path / "archive" / f"{run.name}.tar.gz").unlink()
    (run / "recovery.json").unlink()
    monkeypatch.setattr(compare_methods.subprocess, "run", lambda command, **_: subprocess.CompletedProcess(
        command, int(command[1].endswith("recovery_probe.py"))))
    with pytest.raises(RuntimeError, match="recovery probe failed"):
        compare_methods.main(argv)
    assert (tmp_path / "archive" / f"{run.name}.tar.gz").is_file()
    (run / "recovery.json").write_text(report)
    monkeypatch.setattr(compare_methods.subprocess, "run", lambda command, **_: started.append(command))

    # --runs_of: another results name over the same run folders reuses them (nothing re-evaluated, no new folder)
    other = [a if a != "t" else "t2" for a in argv[:argv.index("--name") + 2]] + argv[argv.index("--name") + 2:]
    assert compare_methods.main([*other, "--runs_of", "t"])["AP"] == result["AP"]
    assert (results / "t2.json").is_file() and not list(logs.glob("cmp_t2_*"))
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated and started == []

    # a finished run of another config (here one more step) stops the comparison before any run, naming the field;
    # --redo_changed redoes it
    changed = [a if a != "2" or argv[i - 1] != "--max_steps" else "3" for i, a in enumerate(argv)]
    with pytest.raises(SystemExit):
        compare_methods.main(changed)
    assert "max_steps 2 -> 3" in capsys.readouterr().err and started == []
    summaries = {run: (run / "summary.json").read_text() for run in evaluated}
    for run in summaries:  # unfinished runs of another config are redone without asking: no stop
        (run / "summary.json").unlink()
    with pytest.raises(AttributeError):  # the stub started a run (it returns no exit code)
        compare_methods.main([*changed, "--jobs", "1"])
    assert started and "max_steps 2 -> 3" not in capsys.readouterr().err
    started.clear()
    for run, text in summaries.items():
        (run / "summary.json").write_text(text)
    monkeypatch.setattr(compare_methods.subprocess, "run",
                        lambda command, **_: started.append(command) or subprocess.CompletedProcess(command, 1))
    with pytest.raises(RuntimeError, match="failed"):  # the (stubbed) run process was started to redo it
        compare_methods.main([*changed, "--redo_changed"])
    assert started and all(command[command.index("--max_steps") + 1] == "3" for command in started)
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated

    # reused only as it is: another config, another probe setting or an evaluation after the summary is not
    run = logs / "cmp_t_seq_lora_s1"
    config = build_config(config_file=str(run / "config.json"))
    assert compare_methods.finished(run, config) and compare_methods.probed(run, {})
    assert not compare_methods.finished(run, dataclasses.replace(config, max_steps=3))
    assert not compare_methods.probed(run, dict(recovery_steps="3"))
    kept = {name: (run / name).read_text() for name in ("recovery.json", "recovery.jsonl") if (run / name).is_file()}
    report = json.loads(kept["recovery.json"])
    report["tasks"][next(iter(report["tasks"]))]["drop"] = 0.5  # a task that fell ...
    (run / "recovery.json").write_text(json.dumps(report))
    (run / "recovery.jsonl").write_text("")  # ... without its probe row: probed again
    assert not compare_methods.probed(run, {})
    (run / "recovery.jsonl").unlink()
    for name, text in kept.items():
        (run / name).write_text(text)
    later = max((run / name).stat().st_mtime for name in ("summary.json", "recovery.json")) + 1
    os.utime(run / "eval.jsonl", (later, later))
    assert not compare_methods.finished(run, config) and not compare_methods.probed(run, {})
    for name in ("summary.json", "recovery.json"):
        os.utime(run / name, (later, later))

    # a finished run's summary rebuilds from its logs; --stages 1 runs nothing and scores the sequence of the first
    # task alone (AP = R[0][0], no BWT), rebuilt from the same logs
    for run in evaluated:
        assert json.loads(json.dumps(summary_from_logs(run))) == json.loads((run / "summary.json").read_text())
    monkeypatch.setattr(compare_methods, "run_entries", lambda *a, **k: pytest.fail("--stages must run nothing"))
    cut = compare_methods.main([*argv, "--stages", "1"])
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated
    table = json.loads((results / "t.json").read_text())["table"]
    for label in table:
        full = [json.loads((logs / f"cmp_t_{label}_s{seed}" / "summary.json").read_text()) for seed in (1, 2)]
        assert cut["AP"][label] == pytest.approx(statistics.fmean(r["R"][0][0] for r in full))
        assert set(table[label]["final_scores"]) == {"T2_math"} and table[label]["BWT"] == [None, None]
        gain = statistics.fmean(r["R"][0][0] - r["base_scores"][0] for r in full)
        assert table[label]["plasticity"]["T2_math"][0] == pytest.approx(gain)
    assert "Cut short: every figure is that of the runs' first 1 stages (T2_math)" in (results / "t.md").read_text()
    assert "interval over the test samples and" in (results / "t.md").read_text()
    configs = {run: (run / "config.json").read_text() for run in evaluated}  # runs scored on the validation split:
    for run, text in configs.items():  # the tables say whose samples their intervals are over
        (run / "config.json").write_text(json.dumps(dict(json.loads(text), eval_split="val")))
    compare_methods.main([*argv, "--stages", "1"])
    validation = (results / "t.md").read_text()
    assert "test samples" not in validation and validation.count("over the validation samples") == 2
    assert "on the same validation samples" in validation
    for run, text in configs.items():
        (run / "config.json").write_text(text)
    other = tmp_path / "other_samples"  # as many samples, the same strata (T2 has none), other ids: not paired
    shutil.copytree(logs / "cmp_t_seq_lora_s2", other)
    for answers in other.glob("samples_*_T2_math.jsonl"):
        answers.write_text("".join(json.dumps(dict(r, id=f"other-{r['id']}")) + "\n" for r in read_rows(answers)))
    pair = {"a": [logs / "cmp_t_seq_lora_s1"], "b": [other]}
    with pytest.raises(ValueError, match="evaluated other test samples than the first run"):
        compare_methods.method_scores(pair, {k: [summary_from_logs(run) for run in v] for k, v in pair.items()})
    unfinished = tmp_path / "unfinished"  # a run stopped before its first stage was scored
    shutil.copytree(logs / "cmp_t_seq_lora_s1", unfinished)
    base_rows = [line for line in (unfinished / "eval.jsonl").read_text().splitlines() if '"stage": -1' in line]
    (unfinished / "eval.jsonl").write_text("\n".join(base_rows) + "\n")
    with pytest.raises(FileNotFoundError, match="its first 1 stage\\(s\\) need .*: no stage 0 T2_math"):
        summary_from_logs(unfinished, 1)
    rows = [json.loads(line) for line in (logs / "cmp_t_seq_lora_s1" / "eval.jsonl").read_text().splitlines()]
    (unfinished / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows  # a middle row lost
                                                   if (r["stage"], r["task"]) != (0, "T2_math")))
    with pytest.raises(FileNotFoundError, match="its first 2 stage\\(s\\) need .*: no stage 0 T2_math"):
        summary_from_logs(unfinished)  # its LA, BWT and forgetting read R[0][0]: not NaN figures
    for beyond in (0, 3):  # a sequence of two stages has no first 0 or 3
        with pytest.raises(ValueError, match=f"has 2 stage\\(s\\) for 2 tasks: no sequence of its first {beyond}"):
            summary_from_logs(logs / "cmp_t_seq_lora_s1", beyond)


def test_variants_parse_into_labelled_configs():
    assert compare_methods.parse_variant("lam0.1:kd_lambda=0.1,kd_every=2") == (
        "lam0.1", dict(method="ds_lora_slsd", kd_lambda="0.1", kd_every="2"))
    assert compare_methods.parse_variant("plain:method=ds_lora")[1] == dict(method="ds_lora")
    assert compare_methods.parse_variant("t2:task_max_steps=T2_math:120,T3_code:24,kd_every=2")[1] == dict(
        method="ds_lora_slsd", task_max_steps="T2_math:120,T3_code:24", kd_every="2")  # a value with commas
    for bad in ("nolabel", ":kd_lambda=1", "x:kd_lambda"):
        with pytest.raises(ValueError, match="LABEL:field=value"):
            compare_methods.parse_variant(bad)


def test_a_reference_or_label_that_does_not_fit_stops_before_any_run(tmp_path, capsys):
    base = ["--preset", "smoke", "--log_dir", str(tmp_path / "logs"), "--results_dir", str(tmp_path / "results")]
    for bad, message in ((["--methods", "seq_lora", "--reference", "ewc"], "--reference ewc is not among"),
                         (["--methods", "seq_lora", "--variant", "seq_lora:kd_lambda=1", "--reference", "seq_lora"],
                          "label is already taken"),
                         # a method's name labels that method's runs: a variant under it would replace them
                         (["--methods", "seq_lora", "--variant", "ewc:kd_lambda=1", "--reference", "seq_lora"],
                          "--variant ewc: the label is already taken")):
        with pytest.raises(SystemExit):
            compare_methods.main(base + bad)
        assert message in capsys.readouterr().err
    assert not (tmp_path / "logs").exists()


def test_paired_difference_of_identical_methods_is_zero_and_unmarked():
    rng = np.random.default_rng(0)
    groups = [[""] * 12, ["harmful"] * 8 + ["benign"] * 4]
    runs = [[(rng.random((3, 12)) < 0.5).astype(float), (rng.random((3, 12)) < 0.5).astype(float)] for _ in range(2)]
    differences = compare_methods.paired_differences({"ds_lora_slsd": runs, "seq_lora": runs}, groups, 500)
    assert set(differences) == {"seq_lora"}
    for key in ("AP", "BWT", "LA", "forgetting"):
        assert differences["seq_lora"][key] == dict(difference=0.0, ci=[0.0, 0.0], per_seed=[0.0, 0.0],
                                                    seed_ci=[0.0, 0.0], excludes_zero=False)
    assert compare_methods.difference_cell(differences["seq_lora"]["AP"]) == "+0.000 [+0.00, +0.00]"
    assert compare_methods.difference_cell(dict(difference=0.2, ci=[0.1, 0.3], excludes_zero=True)).startswith("**")
    assert compare_methods.paired_differences({"seq_lora": runs}, groups, 500) == {}  # no reference: no table


def test_paired_loss_bwt_is_the_extra_rise_of_the_old_tasks_loss():
    """Two tasks, base + two stages, 10 supervised tokens a sample. The method's loss on task a's references rises
    by 0.5 nats/token from a's own stage to the last; the reference's holds. Δloss_BWT = +0.5 (one old task), the
    interval above 0; a method against an identical copy of itself: 0; a one-stage method (multi-task): none."""
    rng = np.random.default_rng(1)
    groups = [[""] * 8, [""] * 8]
    scores = [[(rng.random((3, 8)) < 0.5).astype(float) for _ in range(2)]]
    nll = [10 + rng.random((3, 8)) for _ in range(2)]
    held = dict(nll=nll, tokens=[np.full((3, 8), 10.0)] * 2, formats=[np.ones((3, 8))] * 2)
    rose = dict(held, nll=[nll[0] + np.array([[0.0], [0.0], [5.0]]), nll[1]])  # task a, last row: +5 nats / 10 tokens
    differences = compare_methods.paired_differences(
        {"ds_lora": scores, "seq_lora": scores, "copy": scores, "multitask": scores}, groups, 300, "ds_lora",
        {"ds_lora": [held], "seq_lora": [rose], "copy": [held], "multitask": None})
    assert differences["seq_lora"]["loss_BWT"]["difference"] == pytest.approx(0.5)
    assert differences["seq_lora"]["loss_BWT"]["excludes_zero"] and differences["seq_lora"]["loss_BWT"]["ci"][0] > 0.4
    assert differences["seq_lora"]["loss_BWT"]["per_seed"] == [pytest.approx(0.5)]  # one seed: no t interval
    assert differences["seq_lora"]["loss_BWT"]["seed_ci"] is None
    assert differences["copy"]["loss_BWT"] == dict(difference=0.0, ci=[0.0, 0.0], excludes_zero=False,
                                                   per_seed=[0.0], seed_ci=None)
    assert differences["multitask"]["loss_BWT"] is None and differences["multitask"]["AP"] is not None
    reversed_pair = compare_methods.paired_differences({"ds_lora": scores, "seq_lora": scores}, groups, 300,
                                                       "seq_lora", {"ds_lora": [held], "seq_lora": [rose]})
    assert reversed_pair["ds_lora"]["loss_BWT"]["difference"] == pytest.approx(-0.5)
    against_multitask = compare_methods.paired_differences({"multitask": scores, "seq_lora": scores}, groups, 300,
                                                           "multitask", {"multitask": None, "seq_lora": [rose]})
    assert against_multitask["seq_lora"]["loss_BWT"] is None  # no loss BWT on the reference's side: none to pair
    assert compare_methods.difference_cell(differences["seq_lora"]["loss_BWT"], 3).count(".500") == 3


def test_paired_split_of_forgetting_tells_brought_back_from_lost():
    """Two tasks, base + two stages; task a is learned in its stage (0 -> 1 on all 10 samples). The reference loses
    it after the next stage on 6 of the 10 and its probe brings back 3 of those (illusory 0.3, real 0.3); the method
    loses all 10 and its probe brings back all of them on seed 1, 8 on seed 2 (illusory 1.0 / 0.8, real 0 / 0.2).
    Δforgetting +0.4 = Δillusory +0.6 + Δreal -0.2 (per seed +0.7, +0.5 and -0.3, -0.1). The bootstrap interval of
    Δillusory lies above 0 but the t interval over two seeds reaches 0: not bold. A copy of the reference is 0 on
    every draw (the same draws for both sides); no probe on one side: none."""
    groups = [[""] * 10, [""] * 10]
    later = np.array([[0.0] * 10, [0.0] * 10, [1.0] * 10])  # task b, learned in the last stage

    def run(lost: int, brought_back: int) -> dict:
        a = np.array([[0.0] * 10, [1.0] * 10, [0.0] * lost + [1.0] * (10 - lost)])
        recovered = np.array([1.0] * brought_back + [0.0] * (lost - brought_back) + [1.0] * (10 - lost))
        return dict(scores=[a, later], recovered=[recovered, later[2]])
    recoveries = {"ref": [run(6, 3), run(6, 3)], "back": [run(10, 10), run(10, 8)], "copy": [run(6, 3), run(6, 3)],
                  "unprobed": None}
    scores = {label: [r["scores"] for r in runs or recoveries["ref"]] for label, runs in recoveries.items()}
    differences = compare_methods.paired_differences(scores, groups, 300, "ref", recoveries=recoveries)
    back = differences["back"]
    assert back["forgetting"]["difference"] == pytest.approx(0.4)
    assert back["illusory"]["difference"] == pytest.approx(0.6) and back["real"]["difference"] == pytest.approx(-0.2)
    assert back["illusory"]["per_seed"] == [pytest.approx(0.7), pytest.approx(0.5)]
    assert back["real"]["per_seed"] == [pytest.approx(-0.3), pytest.approx(-0.1)]
    assert back["illusory"]["ci"][0] > 0 and back["illusory"]["seed_ci"][0] < 0 < back["illusory"]["seed_ci"][1]
    assert not back["illusory"]["excludes_zero"]  # bold only where both intervals exclude 0
    assert differences["copy"]["illusory"] == dict(difference=0.0, ci=[0.0, 0.0], per_seed=[0.0, 0.0],
                                                   seed_ci=[0.0, 0.0], excludes_zero=False)
    assert differences["copy"]["real"]["ci"] == [0.0, 0.0]
    assert differences["unprobed"]["illusory"] is None and differences["unprobed"]["real"] is None
    text = "\n".join(compare_methods.difference_lines(differences, "ref"))
    assert "| Δillusory | Δreal |" in text and "+0.600 [" in text and "+0.70, +0.50 [" in text


def test_loss_bwt_is_bold_only_where_the_seeds_agree():
    """Two seeds. Where the method's old-task loss rises 0.5 more on one seed and 0.1 on the other, the bootstrap over
    samples excludes 0 but the t interval over two seeds (+0.3 ± 12.7 × 0.2) does not: not marked. Where both seeds
    rise alike (0.5, 0.5) both intervals exclude 0: marked."""
    rng = np.random.default_rng(2)
    groups = [[""] * 8, [""] * 8]
    scores = [[(rng.random((3, 8)) < 0.5).astype(float) for _ in range(2)] for _ in range(2)]
    nll = [10 + rng.random((3, 8)) for _ in range(2)]
    held = dict(nll=nll, tokens=[np.full((3, 8), 10.0)] * 2, formats=[np.ones((3, 8))] * 2)

    def rose(nats):
        return dict(held, nll=[nll[0] + np.array([[0.0], [0.0], [nats]]), nll[1]])
    differences = compare_methods.paired_differences(
        {"ref": scores, "apart": scores, "alike": scores}, groups, 300, "ref",
        {"ref": [held, held], "apart": [rose(5.0), rose(1.0)], "alike": [rose(5.0), rose(5.0)]})
    apart, alike = differences["apart"]["loss_BWT"], differences["alike"]["loss_BWT"]
    assert apart["per_seed"] == [pytest.approx(0.5), pytest.approx(0.1)] and apart["ci"][0] > 0
    assert apart["seed_ci"][0] < 0 < apart["seed_ci"][1] and not apart["excludes_zero"]
    assert alike["excludes_zero"] and alike["seed_ci"] == [pytest.approx(0.5), pytest.approx(0.5)]
    assert compare_methods.seed_cell(apart, 3).startswith("+0.500, +0.100 [-")


def test_a_score_difference_is_bold_only_where_the_seeds_agree():
    """Two seeds, task 0 scored again after the last stage. A method right on every sample of it on both seeds is
    ahead on every seed alike: marked. One right on all 20 on seed 1 and on 4 of them on seed 2 is ahead by the
    bootstrap, but its t interval over the two seeds reaches 0: not marked."""
    rng = np.random.default_rng(3)
    groups = [[""] * 20, [""] * 20]
    ref = [[np.zeros((3, 20)), (rng.random((3, 20)) < 0.5).astype(float)] for _ in range(2)]

    def right_on(run, samples):
        last = run[0].copy()
        last[2, :samples] = 1.0
        return [last, run[1]]
    differences = compare_methods.paired_differences(
        {"ref": ref, "alike": [right_on(r, 20) for r in ref], "apart": [right_on(ref[0], 20), right_on(ref[1], 4)]},
        groups, 500, "ref")
    alike, apart = differences["alike"]["AP"], differences["apart"]["AP"]
    assert alike["per_seed"] == [pytest.approx(0.5), pytest.approx(0.5)] and alike["excludes_zero"]
    assert apart["per_seed"] == [pytest.approx(0.5), pytest.approx(0.1)] and apart["ci"][0] > 0
    assert apart["seed_ci"][0] < 0 and not apart["excludes_zero"]
    assert not compare_methods.difference_cell(apart).startswith("**")
    assert compare_methods.seeded_entry(0.3, [0.1, 0.5], [0.3])["excludes_zero"]  # one seed: the bootstrap decides
    assert not compare_methods.seeded_entry(0.3, [-0.1, 0.5], [0.3, 0.3])["excludes_zero"]
    assert not compare_methods.seeded_entry(0.3, [0.1, 0.5], [0.3, float("nan")])["excludes_zero"]  # NaN: unknown
    text = "\n".join(compare_methods.difference_lines(differences, "ref"))
    assert "+0.50, +0.10 [-" in text and "Per seed" in text  # the per-seed table, with the t interval


def test_method_losses_none_without_an_old_task():
    """Multi-task (one stage for two tasks) and a one-task sequence have no old task: no loss BWT, and no run's
    rows are read for it (the paths do not exist)."""
    summaries = {"multitask": [dict(stage_names=["all"], tasks=["a", "b"])],
                 "one_task": [dict(stage_names=["a"], tasks=["a"])]}
    runs = {name: [Path("/nonexistent") / name] for name in summaries}
    assert compare_methods.method_losses(runs, summaries) == {"multitask": None, "one_task": None}


def test_smoothed_loss_restarts_at_each_stage():
    rows = [dict(stage_step=s, loss=loss) for s, loss in [(1, 4.0), (2, 3.0), (3, 2.0), (1, 9.0), (2, 8.0)]]
    smoothed = smooth_by_stage(rows)
    assert smoothed[:3] == smooth([4.0, 3.0, 2.0])
    assert smoothed[3] == pytest.approx(9.0) and smoothed[3:] == smooth([9.0, 8.0])  # not dragged by stage 1's loss
    assert smooth_by_stage([dict(loss=1.0), dict(loss=3.0)]) == smooth([1.0, 3.0])  # no stage_step: one curve


def test_a_multitask_run_has_no_first_stages(tmp_path):
    from configs.base_config import build_config, save_config

    save_config(build_config("smoke", overrides=dict(method="multitask", tasks="T2_math,T1_general")),
                tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"\(multitask\) has 1 stage\(s\) for 2 tasks: no sequence of its first 1"):
        summary_from_logs(tmp_path, 1)


def test_quick_fields_are_command_line_strings_of_two_tasks_at_16_samples():
    """--quick's fields become train_slsd_seq.py arguments: every value a string (an int broke the command line
    once), and the config they give is demo's on T1 -> T2 at 16 samples per task."""
    run, fields = compare_methods.run_fields({"seq_lora": {"method": "seq_lora"}}, "seq_lora", "42", "quick",
                                             dict(compare_methods.QUICK))
    assert all(isinstance(v, str) for v in fields.values())
    config = build_config("demo", overrides=fields)
    assert config.tasks == ["T1_general", "T2_math"] and config.max_eval_samples == 16 and config.method == "seq_lora"
    assert config.run_name == run == "cmp_quick_seq_lora_s42"
