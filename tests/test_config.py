"""configs/base_config: presets, files, overrides and their one-line errors."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from configs.base_config import PRESETS, ConfigError, build_config, parse_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_presets_and_precedence(tmp_path):
    default = build_config()
    assert (default.lora_r_slow, default.lora_dropout, default.lr_slow, default.lr_fast) == (8, 0.05, 1e-5, 5e-5)
    paper = build_config("paper")
    assert paper.frozen_layers == 16 and paper.model_name == "meta-llama/Llama-2-7b-hf"
    smoke = build_config("smoke")
    assert smoke.tiny_random_model and smoke.max_steps == PRESETS["smoke"]["max_steps"]
    file = tmp_path / "c.yaml"
    file.write_text("lr_fast: 2.0e-4\nbatch_size: 8\ntasks: [T2_math, T3_code]\n")
    config = build_config("smoke", str(file), parse_overrides(["--batch_size", "3", "--group_by_length"]))
    assert config.lr_fast == 2e-4 and config.tasks == ["T2_math", "T3_code"]
    assert config.batch_size == 3 and config.group_by_length is True  # the command line wins over the file
    assert config.tiny_random_model  # the preset is kept under the file


def test_list_and_bool_overrides():
    config = build_config(overrides=parse_overrides(["--tasks=T1_general,T5_safety", "--use_slsd", "false"]))
    assert config.tasks == ["T1_general", "T5_safety"] and config.use_slsd is False


def test_task_budgets_from_the_command_line_and_a_file(tmp_path):
    config = build_config(overrides=parse_overrides(["--task_max_steps", "T2_math:120, T3_code:24"]))
    assert config.task_max_steps == {"T2_math": 120, "T3_code": 24}
    assert (config.task_steps("T2_math"), config.task_steps("T1_general")) == (120, config.max_steps)
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"task_max_steps": {"T2_math": 60}}))
    assert build_config(config_file=str(file)).task_max_steps == {"T2_math": 60}


@pytest.mark.parametrize("overrides, message", [
    ({"task_max_steps": "T2_math"}, "config field 'task_max_steps' expects KEY:VALUE,KEY:VALUE, got 'T2_math'"),
    ({"task_max_steps": "T2_math:many"}, "config field 'task_max_steps' expects KEY:VALUE,KEY:VALUE, got "
                                         "'T2_math:many'"),
    ({"task_max_steps": "T2_math:0"}, "config field 'task_max_steps' must give each task >= 1 step, got "
                                      "{'T2_math': 0}"),
    ({"task_max_steps": "T2_math:5", "max_steps": "0"}, "config field 'task_max_steps' needs max_steps > 0 (a "
                                                        "budget in steps), got {'T2_math': 5}"),
])
def test_bad_task_budgets_raise_one_line_errors(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=overrides)
    assert str(err.value) == message


def test_a_run_saved_before_a_later_field_existed_is_the_same_run(tmp_path):
    """LATER_FIELDS at their default leave a config's digest (run names, probe settings) and its comparison with an
    archived config.json as they were before the field existed; set, they make another run."""
    import dataclasses

    from configs.base_config import config_digest, save_config
    from sequential import config_changes

    config, path = build_config("smoke"), tmp_path / "config.json"
    save_config(config, path)
    archived = json.loads(path.read_text())
    del archived["task_max_steps"]
    path.write_text(json.dumps(archived))
    assert config_changes(path, config) == {}
    before = {k: v for k, v in dataclasses.asdict(config).items() if k != "task_max_steps"}
    assert config_digest(config) == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:12]
    budget = build_config("smoke", overrides=dict(task_max_steps="T2_math:9"))
    assert config_changes(path, budget) == {"task_max_steps": ("(absent)", {"T2_math": 9})}
    assert config_digest(budget) != config_digest(config)


def test_an_empty_task_budget_clears_the_study_presets_and_names_its_earlier_runs(tmp_path):
    """The `study` preset gives T2 120 steps; `--task_max_steps ""` is the budget its runs had before (no per-task
    budgets), so the earlier budget's archived runs stay the same runs and their tables rebuild (README, Results)."""
    from configs.base_config import save_config
    from sequential import config_changes

    assert build_config("study").task_max_steps == {"T2_math": 120}
    assert build_config("study").task_steps("T2_math") == 120 and build_config("study").task_steps("T3_code") == 12
    earlier = build_config("study", overrides=parse_overrides(["--task_max_steps", ""]))
    assert earlier.task_max_steps == {} and earlier.task_steps("T2_math") == earlier.max_steps
    path = tmp_path / "config.json"
    save_config(earlier, path)
    archived = json.loads(path.read_text())
    del archived["task_max_steps"]  # saved before the field existed, as the earlier study's runs were
    path.write_text(json.dumps(archived))
    assert config_changes(path, earlier) == {}
    assert config_changes(path, build_config("study")) == {"task_max_steps": ("(absent)", {"T2_math": 120})}


@pytest.mark.parametrize("overrides, message", [
    ({"lr_slw": "1"}, "unknown config field 'lr_slw' in the command line (did you mean 'lr_slow'?)"),
    ({"lr_slow": "fast"}, "config field 'lr_slow' expects float, got 'fast'"),
    ({"batch_size": "2.5"}, "config field 'batch_size' expects int, got '2.5'"),
    ({"use_slsd": "maybe"}, "config field 'use_slsd' expects bool, got 'maybe'"),
    ({"lora_dropout": "1.5"}, "config field 'lora_dropout' must be in [0, 1), got 1.5"),
    ({"fast_mode": "medium"}, "config field 'fast_mode' must be shared, reset or per_task, got 'medium'"),
])
def test_bad_values_raise_one_line_errors_naming_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(overrides=overrides)
    assert str(err.value) == message


def test_bad_config_file_and_preset(tmp_path):
    file = tmp_path / "c.json"
    file.write_text(json.dumps({"batch_size": "many"}))
    with pytest.raises(ConfigError, match="config field 'batch_size' expects int, got 'many'"):
        build_config(config_file=str(file))
    file.write_text(json.dumps({"epochz": 1}))
    with pytest.raises(ConfigError, match=f"unknown config field 'epochz' in {file}"):
        build_config(config_file=str(file))
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_config("huge")
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=str(tmp_path / "missing.yaml"))


def test_script_prints_one_line_error_and_exits_2():
    result = subprocess.run([sys.executable, "train_single_task.py", "--task", "x", "--lr_fast", "quick"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "train_single_task.py: error: config field 'lr_fast' expects float, got 'quick'"


def test_config_json_is_never_seen_half_written(tmp_path):
    """The other processes of a distributed run read config.json (sequential.prepare_run) while the main process
    writes it: every read, however it interleaves with the writes, sees the whole file or none."""
    import threading

    from configs.base_config import save_config
    from sequential import config_changes

    config, path, done = build_config("smoke"), tmp_path / "run" / "config.json", threading.Event()

    def write() -> None:
        for _ in range(400):
            save_config(config, path)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not done.is_set():
        assert config_changes(path, config) == {}  # a partial file raises JSONDecodeError or reads as a change
        reads += 1
    writer.join()
    assert reads > 0 and not list(path.parent.glob("*.partial"))
