"""bench/compare_methods.py: methods × seeds side by side, aggregated over seeds, finished runs reused."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import compare_methods  # noqa: E402


def test_two_methods_two_seeds_two_at_a_time(small_data, tmp_path):
    logs, results = tmp_path / "logs", tmp_path / "results"
    argv = ["--preset", "smoke", "--methods", "seq_lora,ds_lora", "--seeds", "1,2", "--jobs", "2", "--name", "t",
            "--results_dir", str(results), "--tasks", "T2_math,T1_general", "--max_steps", "2",
            "--max_eval_samples", "2", "--data_dir", str(small_data), "--log_dir", str(logs),
            "--checkpoint_dir", str(tmp_path / "ckpt")]
    result = compare_methods.main(argv)

    table = json.loads((results / "t.json").read_text())["table"]
    assert set(table) == {"seq_lora", "ds_lora"} and set(result["AP"]) == set(table)
    for method, row in table.items():
        runs = [json.loads((logs / f"cmp_t_{method}_s{seed}" / "summary.json").read_text()) for seed in (1, 2)]
        assert [r["method"] for r in runs] == [method, method] and row["seeds"] == 2
        aps = [r["AP"] for r in runs]
        assert row["AP"] == [statistics.fmean(aps), statistics.stdev(aps)]
        assert (logs / "cmp_t_outputs" / f"cmp_t_{method}_s1.log").stat().st_size > 0  # --jobs 2: output per run
    markdown = (results / "t.md").read_text()
    assert "| seq_lora |" in markdown and "| ds_lora |" in markdown
    assert "--jobs 2" in markdown and "2 seed(s) (1, 2)" in markdown
    assert (results / "t_comparison.png").stat().st_size > 0

    evaluated = {run: (run / "eval.jsonl").read_text() for run in logs.glob("cmp_t_*_s*")}
    assert compare_methods.main(argv)["AP"] == result["AP"]  # a second call reuses the finished runs
    assert {run: (run / "eval.jsonl").read_text() for run in evaluated} == evaluated
