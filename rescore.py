"""Score finished runs again with today's metrics, from the answers they wrote: nothing is generated again.

    python rescore.py logs/<run> [logs/<run> ...] [--tasks T5_safety] [--archive bench/runs]

A metric fix (metrics.py) changes what an answer scores, not the answer. Every evaluation of a run keeps its answers
in samples_<stage>_<label>_<task>.jsonl. So for each eval.jsonl row of the chosen tasks (default: all):

    each answer is scored again, metrics.score_sample(its record, read by id from the run's eval split), and the
    row's score fields become evaluation.summarise's (score and its interval, rates, per-sample lists);
    its eval loss, cut-off flags and sample positions stay the run's (they do not depend on the metric).

Then summary.json is rebuilt from the logs (sequential.summary_from_logs), and recovery.json from the probe rows
already stored (recovery_probe.write_report: nothing is trained). A probe row of a chosen task is scored again the
same way from its stored answers (recovery/<task>_<start>_<setting>_samples.jsonl). A probe made before answers were
stored cannot be: a run with such probe rows of a task whose scores changed is refused, and nothing of it is written:
delete those rows and run recovery_probe.py again (it needs the final checkpoint). ``--keep_stale_probes`` keeps
them instead, for a fix that can only raise scores (a pass the former metric missed): a probe's score is then a lower
bound, and so is its illusory part; the runs' evaluation rows, which every paired figure reads, all follow today's
metric. With ``--archive``, a rescored run archived there (compare_methods.py: <archive>/<run>.tar.gz) is archived
again. Prints one line per evaluation whose score changed.

Every check comes before the first write, so an error (an unfinished run, a missing answers file, answers that are
not the eval split's samples, a stale probe) leaves the run as it was, with one line. Rescoring a run under unchanged
metrics writes the same files (tests/test_rescore.py). T3's code is executed again, in the sandbox at the run's
isolation: give ``--tasks`` to leave the tasks whose metric did not change alone. Not rewritten: a run's own figures
(*.png, absent with --no_plots; plot_loss.py redraws them), and row fields a former metric wrote that today's no
longer does (they keep their old value).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import sandbox
from bench.compare_methods import archive_run
from cl_metrics import format_score, laid_out
from configs.base_config import PROBE_FIELDS, ConfigError, build_config, config_digest
from evaluation import SAMPLE_LISTS, summarise
from metrics import score_sample
from recovery_probe import STARTS, eval_rows, probe_answers, read_probes, write_report
from sequential import samples_file, summary_from_logs, write_summary
from utils_data import json_ready, read_rows, read_task, write_jsonl


def rescore_row(row: dict, samples: list[dict], records: dict[str, dict], resamples: int,
                where: str) -> tuple[dict, list[dict]]:
    """An eval.jsonl (or recovery.jsonl) row and its per-sample rows, scored again from the answers they hold;
    ``where`` names the row in errors."""
    missing = [s["id"] for s in samples if s["id"] not in records]
    if missing or len(samples) != row["samples"]:
        raise ConfigError(f"{where}: {len(samples)} stored answers for {row['samples']} samples"
                          + (f", sample {missing[0]} not in the run's eval split" if missing else ""))
    chosen = [records[s["id"]] for s in samples]
    scored = [dict(score_sample(r, s["output"]), cut_off=s["cut_off"]) for r, s in zip(chosen, samples)]
    fresh = {**row, **summarise(chosen, scored, resamples)}
    if fresh["sample_groups"] != row["sample_groups"]:
        raise ConfigError(f"{where}: the eval split's records are not those the run scored (the data changed)")
    fresh |= {key: fresh.pop(key) for key in SAMPLE_LISTS if key in fresh}  # the long lists last, as evaluation writes
    return fresh, [dict(id=s["id"], prompt=s["prompt"], output=s["output"], **r) for s, r in zip(samples, scored)]


def probe_config(run: Path):
    """The config the run's recovery report was probed with (its config under the report's probe fields)."""
    report = json.loads((run / "recovery.json").read_text())
    config = build_config(config_file=str(run / "config.json"), overrides={k: report[k] for k in PROBE_FIELDS})
    if config_digest(config) != report["setting"]:
        raise ConfigError(f"{run}/recovery.json: its probe setting cannot be rebuilt from config.json")
    return config


def eval_records(config, tasks: list[str]) -> dict[str, dict[str, dict]]:
    """Each task's eval split, {id: record}."""
    records = {t: read_task(t, config.eval_split, config.data_dir, config.skip_bad_lines)[0] for t in tasks}
    if any("id" not in r for rows in records.values() for r in rows):
        raise ConfigError("rescoring finds answers by their sample's id: a task's eval split has records without one")
    return {t: {r["id"]: r for r in rows} for t, rows in records.items()}


def rescored_rows(run: Path, config, records: dict) -> tuple[list[dict], dict[Path, list[dict]], set[str]]:
    """The run's eval.jsonl rows of the tasks in ``records`` (eval_records) scored again, their answers' rows by file,
    and the tasks whose scores or format changed (one line printed per evaluation whose answers scored differently)."""
    rows, answers, changed = [], {}, set()
    for row in read_rows(run / "eval.jsonl"):
        if row["task"] in records:
            path = samples_file(run, row, exists=True)
            fresh, answers[path] = rescore_row(row, read_rows(path), records[row["task"]], config.bootstrap_resamples,
                                               f"{row['task']} after {row['stage_name']}")
            flips = sum(a != b for a, b in zip(row["sample_scores"], fresh["sample_scores"]))
            if flips or fresh["sample_format"] != row["sample_format"]:
                changed.add(row["task"])
                print(f"{run.name}: {row['task']} after {row['stage_name']}: "
                      f"{format_score(row['score'], row['score_ci'])} -> {format_score(fresh['score'], fresh['score_ci'])}"
                      f" ({flips} of {len(row['sample_scores'])} answers scored differently)")
            row = fresh
        rows.append(row)
    return rows, answers, changed


def rescored_probes(run: Path, config, records: dict) -> tuple[list[dict], dict[Path, list[dict]], set[str]]:
    """The run's recovery.jsonl rows (none without the file) of the tasks in ``records`` scored again from their
    stored answers (recovery_probe.probe_answers), those answers' rows by file, and the tasks with a probe row whose
    answers were not stored (probes from before they were)."""
    rows, answers, unanswered = [], {}, set()
    for row in read_rows(run / "recovery.jsonl"):
        path = probe_answers(run, row["task"], row["start"], row["setting"])
        if row["task"] in records and path.is_file():
            where = f"{row['task']}'s probe from the {row['start']}"
            fresh, answers[path] = rescore_row(row, read_rows(path), records[row["task"]], config.bootstrap_resamples,
                                               where)
            if fresh["score"] != row["score"]:
                print(f"{run.name}: {where}: {format_score(row['score'], row['score_ci'])} -> "
                      f"{format_score(fresh['score'], fresh['score_ci'])}")
            # laid out as the run's rows, as recovery_probe.probe_row writes it
            row = dict(fresh, sample_scores=laid_out(fresh["sample_scores"], row.get("sample_positions"),
                                                     len(row["sample_scores"])))
        elif row["task"] in records:
            unanswered.add(row["task"])
        rows.append(row)
    return rows, answers, unanswered


def rescore_run(run: Path, tasks: list[str] | None, archive: Path | None, keep_stale_probes: bool = False) -> None:
    """Score the run's evaluations of ``tasks`` (None: all) again and rewrite its logs; every check first, so an
    error leaves the run as it was. ``keep_stale_probes``: probe rows of a task whose scores changed are kept (and
    named) instead of refused."""
    config = build_config(config_file=str(run / "config.json"))
    unknown = sorted(set(tasks or []) - set(config.tasks))
    if unknown:
        raise ConfigError(f"--tasks: {', '.join(unknown)} is not a task of {run} ({', '.join(config.tasks)})")
    sandbox.configure(config.sandbox_isolation)  # T3's code runs as the run ran it
    summary_from_logs(run)  # a run that has not finished raises here, before anything is written
    probe = probe_config(run) if (run / "recovery.json").is_file() else None
    chosen = tasks or config.tasks
    records = eval_records(config, chosen)
    rows, answers, changed = rescored_rows(run, config, records)
    probes = run / "recovery.jsonl"
    probe_rows, probe_answered, unanswered = rescored_probes(run, config, records)
    stale = changed & unanswered
    if stale and not keep_stale_probes:
        raise ConfigError(f"{probes} holds probe rows of {', '.join(sorted(stale))}, whose scores changed, without "
                          "their answers (probed before answers were stored); delete those rows and run "
                          "recovery_probe.py again (or --keep_stale_probes where the fix can only raise scores)")
    if stale:
        print(f"{run.name}: kept the probe rows of {', '.join(sorted(stale))}, scored under the former metric")
    for path, samples in (answers | probe_answered).items():
        write_jsonl(path, samples)
    if probe_answered:
        write_jsonl(probes, [json_ready(r) for r in probe_rows], ensure_ascii=True)  # as recovery_probe writes
    write_jsonl(run / "eval.jsonl", [json_ready(r) for r in rows], ensure_ascii=True)  # as evaluate_all writes
    write_summary(run, summary_from_logs(run))
    if probe:  # after eval.jsonl: a report older than the evaluations reads as not probed (compare_methods.probed)
        setting = config_digest(probe)
        write_report(run, probe, eval_rows(run, probe.tasks), *(read_probes(run, setting, s) for s in STARTS))
    if archive and (archive / f"{run.name}.tar.gz").is_file():
        archive_run(archive, run, replace=True)
    print(f"{run.name}: scored {len(answers)} evaluation(s) of {', '.join(chosen)} again; changed: "
          f"{', '.join(sorted(changed)) or 'none'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (logs/<run>)")
    parser.add_argument("--tasks", default="", help="comma-separated tasks to score again (default: all)")
    parser.add_argument("--archive", default="", help="archive folder (bench/runs): re-archive the runs kept there")
    parser.add_argument("--keep_stale_probes", action="store_true", help="keep the probe rows of tasks whose scores "
                        "changed (valid where the fix only raises scores: the probes' figures become lower bounds)")
    args = parser.parse_args(argv)
    for run in map(Path, args.runs):
        if not (run / "eval.jsonl").is_file():
            raise FileNotFoundError(f"{run} holds no evaluated run (no eval.jsonl)")
        rescore_run(run, args.tasks.split(",") if args.tasks else None, Path(args.archive) if args.archive else None,
                    args.keep_stale_probes)


if __name__ == "__main__":
    from cli import run as run_cli

    run_cli(main)
