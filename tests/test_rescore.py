"""rescore.py: a finished run scored again from its stored answers; unchanged metrics give the same files, a changed
metric changes exactly the rows, answers and figures it scores, a probed task whose scores changed is refused."""
from __future__ import annotations

import json
import shutil
import tarfile

import pytest

import metrics
import recovery_probe
import rescore
import train_slsd_seq
from bench import compare_methods
from sequential import samples_file
from utils_data import read_rows

FILES = ("eval.jsonl", "summary.json", "recovery.json", "recovery.jsonl", "samples_02_T1_general_T5_safety.jsonl")


def probe_answer_files(run) -> dict:
    """The probes' stored answers (recovery_probe.probe_answers), {name: bytes}."""
    return {path.name: path.read_bytes() for path in sorted((run / "recovery").glob("*_samples.jsonl"))}


@pytest.fixture(scope="module")
def run(small_data, tmp_path_factory):
    """A 2-task smoke sequence (T5 then T1) whose old task T5 was probed."""
    root = tmp_path_factory.mktemp("rescore")
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", "T5_safety,T1_general",
                         "--method", "ds_lora", "--max_steps", "1", "--save_every", "0", "--no_plots",
                         "--log_dir", str(root / "logs"), "--checkpoint_dir", str(root / "ckpt"), "--run_name", "run"])
    recovery_probe.main(["--run", str(root / "logs" / "run"), "--tasks", "T5_safety", "--recovery_steps", "1"])
    return root / "logs" / "run"


def copy_of(run, tmp_path, probed: bool, probe_answers: bool = True):
    copy = shutil.copytree(run, tmp_path / "run")
    if not probed:
        for name in ("recovery.json", "recovery.jsonl", "recovery.png"):
            (copy / name).unlink()
    if not probe_answers:  # a probe made before its answers were stored
        for path in (copy / "recovery").glob("*_samples.jsonl"):
            path.unlink()
    return copy


def always_refuses(monkeypatch):
    monkeypatch.setattr(metrics, "is_refusal", lambda output: True)


def test_unchanged_metrics_write_the_same_files(run, tmp_path):
    copy = copy_of(run, tmp_path, probed=True)
    before = {name: (copy / name).read_bytes() for name in FILES}
    answers = probe_answer_files(copy)
    assert len(answers) == 2  # the probe's and its control's
    rescore.main([str(copy)])
    after = {name: (copy / name).read_bytes() for name in FILES}
    assert probe_answer_files(copy) == answers
    summary = json.loads(after.pop("summary.json"))
    assert summary.pop("log_dir") == str(copy)  # the run's summary names its folder: here the copy's
    assert summary == {k: v for k, v in json.loads(before.pop("summary.json")).items() if k != "log_dir"}
    assert after == before


def test_a_changed_metric_rescores_its_rows_answers_and_summary(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=False)
    before = {(r["stage"], r["task"]): r for r in read_rows(copy / "eval.jsonl")}
    always_refuses(monkeypatch)
    rescore.main([str(copy)])
    after = {(r["stage"], r["task"]): r for r in read_rows(copy / "eval.jsonl")}
    assert after.keys() == before.keys()
    for (stage, task), row in after.items():
        if task != "T5_safety":
            assert row == before[(stage, task)]
            continue
        harmful = [s["harmful"] for s in read_rows(samples_file(copy, row))]
        assert row["sample_scores"] == [float(h) for h in harmful]  # every answer now a refusal
        assert row["refusal_rate"] == 1.0 and row["over_refusal_rate"] == 1.0 and row["score"] == 0.5
        assert row["eval_loss"] == before[(stage, task)]["eval_loss"]  # the references' loss is the run's
    answers = read_rows(copy / "samples_02_T1_general_T5_safety.jsonl")
    assert all(a["refused"] for a in answers)
    rates = json.loads((copy / "summary.json").read_text())["final_refusal_rates"]["T5_safety"]
    assert rates["refusal_rate"] == 1.0 and rates["over_refusal_rate"] == 1.0  # the summary reads the new rows


def test_only_the_named_tasks_are_scored_again(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=False)
    before = (copy / "eval.jsonl").read_bytes()
    always_refuses(monkeypatch)
    rescore.main([str(copy), "--tasks", "T1_general"])
    assert (copy / "eval.jsonl").read_bytes() == before


def test_a_rescored_probed_run_keeps_its_probe_report_current(run, tmp_path, monkeypatch):
    """T1 (the last task, never probed) scored anew: recovery.json is written again after eval.jsonl, so the
    comparison still reads the run as probed instead of starting its probe again."""
    copy = copy_of(run, tmp_path, probed=True)
    monkeypatch.setitem(metrics.METRICS, "instruction_following", lambda record, output: dict(score=1.0,
                                                                                               format_ok=True))
    rescore.main([str(copy)])
    assert all(r["score"] == 1.0 for r in read_rows(copy / "eval.jsonl") if r["task"] == "T1_general")
    assert compare_methods.probed(copy, {"recovery_steps": "1"})


def test_bad_input_is_a_one_line_error_and_leaves_the_run_as_it_was(run, tmp_path):
    copy = copy_of(run, tmp_path, probed=False)
    before = (copy / "eval.jsonl").read_bytes()
    with pytest.raises(rescore.ConfigError, match="T5_saftey is not a task"):
        rescore.main([str(copy), "--tasks", "T5_saftey"])
    (copy / "samples_02_T1_general_T5_safety.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="samples_02_T1_general_T5_safety.jsonl is missing"):
        rescore.main([str(copy)])
    assert (copy / "eval.jsonl").read_bytes() == before


def test_a_probe_with_its_answers_is_scored_again_with_the_run(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=True)
    recovery_probe.main(["--run", str(copy), "--tasks", "T5_safety", "--recovery_steps", "2"])  # a second setting
    before = {(r["task"], r["start"], r["setting"]): r for r in read_rows(copy / "recovery.jsonl")}
    assert len(before) == 4 and len(probe_answer_files(copy)) == 4  # each row its own answers
    monkeypatch.setitem(metrics.METRICS, "refusal", lambda record, output: dict(score=float(len(output) % 2),
                                                                                 format_ok=True))
    rescore.main([str(copy)])
    for row in read_rows(copy / "recovery.jsonl"):
        answers = read_rows(recovery_probe.probe_answers(copy, row["task"], row["start"], row["setting"]))
        assert row["sample_scores"] == [float(len(a["output"]) % 2) for a in answers]  # its own answers, rescored
        assert row["sample_nll"] == before[(row["task"], row["start"], row["setting"])]["sample_nll"]  # its loss
    monkeypatch.undo()
    always_refuses(monkeypatch)
    rescore.main([str(copy), "--tasks", "T5_safety"])
    report = json.loads((copy / "recovery.json").read_text())
    assert report["tasks"]["T5_safety"]["recovered"] == 0.5  # the balanced score of refusing everything


def test_a_probe_scored_on_a_subset_is_laid_out_as_the_run_s_rows(small_data, tmp_path, monkeypatch):
    """With early_eval_samples the probe scores the fixed subset; rescored, its scores stay laid out on every
    evaluated sample (None where it did not score), as recovery_probe writes them and the split reads them."""
    logs = tmp_path / "logs"
    train_slsd_seq.main(["--preset", "smoke", "--data_dir", str(small_data), "--tasks", "T5_safety,T1_general",
                         "--method", "ds_lora", "--max_steps", "1", "--save_every", "0", "--no_plots",
                         "--early_eval_samples", "2", "--log_dir", str(logs),
                         "--checkpoint_dir", str(tmp_path / "ckpt"), "--run_name", "run"])
    recovery_probe.main(["--run", str(logs / "run"), "--tasks", "T5_safety", "--recovery_steps", "1"])
    always_refuses(monkeypatch)
    rescore.main([str(logs / "run")])
    for row in read_rows(logs / "run" / "recovery.jsonl"):
        answers = read_rows(recovery_probe.probe_answers(logs / "run", row["task"], row["start"], row["setting"]))
        positions = row["sample_positions"]
        assert len(positions) == len(answers) == 2 and len(row["sample_scores"]) == 4
        assert [row["sample_scores"][p] for p in positions] == [float(a["harmful"]) for a in answers]
        assert all(row["sample_scores"][p] is None for p in set(range(4)) - set(positions))


def test_a_probed_task_whose_scores_changed_is_refused_and_nothing_written(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=True, probe_answers=False)
    before = {name: (copy / name).read_bytes() for name in FILES if (copy / name).is_file()}
    always_refuses(monkeypatch)
    with pytest.raises(rescore.ConfigError, match="probe rows of T5_safety"):
        rescore.main([str(copy)])
    assert {name: (copy / name).read_bytes() for name in FILES if (copy / name).is_file()} == before


def test_stale_probe_rows_are_kept_only_when_asked(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=True, probe_answers=False)
    probes = (copy / "recovery.jsonl").read_bytes()
    always_refuses(monkeypatch)
    rescore.main([str(copy), "--keep_stale_probes"])
    assert (copy / "recovery.jsonl").read_bytes() == probes  # the probe rows as they were
    t5 = [r for r in read_rows(copy / "eval.jsonl") if r["task"] == "T5_safety"]
    assert all(r["refusal_rate"] == 1.0 for r in t5)  # the evaluation rows follow today's metric
    final = json.loads((copy / "recovery.json").read_text())["tasks"]["T5_safety"]["final"]
    assert final == t5[-1]["score"]  # and the report reads them


def test_an_archived_run_is_archived_again(run, tmp_path, monkeypatch):
    copy = copy_of(run, tmp_path, probed=False)
    archive = tmp_path / "archive"
    rescore.archive_run(archive, copy, replace=True)
    always_refuses(monkeypatch)
    rescore.main([str(copy), "--archive", str(archive)])
    with tarfile.open(archive / "run.tar.gz") as tar:
        packed = tar.extractfile("run/eval.jsonl").read()
    assert packed == (copy / "eval.jsonl").read_bytes()
