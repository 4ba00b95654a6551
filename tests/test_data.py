"""utils_data: assistant-only masking, malformed input errors, encodings, truncation accounting, batching; the
scripts' one-line errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from tests.conftest import FIXTURES
from utils_data import (IGNORE_INDEX, DataFormatError, SFTDataset, collate, make_loader, read_jsonl, read_rows,
                        record_to_messages, tokenize_messages)

ROOT = Path(__file__).resolve().parents[1]


def supervised_text(tokenizer, feature) -> str:
    return tokenizer.decode([t for t, l in zip(feature["input_ids"], feature["labels"]) if l != IGNORE_INDEX])


def supervised_runs(feature) -> int:
    """Number of contiguous supervised stretches."""
    flags = [l != IGNORE_INDEX for l in feature["labels"]]
    return sum(1 for i, f in enumerate(flags) if f and (i == 0 or not flags[i - 1]))


def test_alpaca_masks_exactly_the_answer_and_its_end_of_turn(tokenizer):
    record = {"instruction": "Add the numbers.", "input": "17 and 25", "output": "17 + 25 = 42.", "system": "Be brief."}
    messages = record_to_messages(record)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Add the numbers.\n\n17 and 25"
    feature = tokenize_messages(tokenizer, messages, max_len=512)
    assert supervised_text(tokenizer, feature) == "17 + 25 = 42." + tokenizer.eos_token
    assert supervised_runs(feature) == 1
    assert feature["labels"][-2] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # then the template's newline
    assert feature["labels"][-1] == IGNORE_INDEX
    supervised = [t for t, l in zip(feature["input_ids"], feature["labels"]) if l != IGNORE_INDEX]
    assert supervised == [l for l in feature["labels"] if l != IGNORE_INDEX]  # labels are the token ids themselves


def test_multi_turn_chat_supervises_every_assistant_turn_only(tokenizer):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}, {"role": "user", "content": "And times 3?"},
                {"role": "assistant", "content": "12"}]
    feature = tokenize_messages(tokenizer, messages, max_len=512)
    eot = tokenizer.eos_token
    assert supervised_text(tokenizer, feature) == f"4{eot}12{eot}"
    assert supervised_runs(feature) == 2
    unsupervised = tokenizer.decode([t for t, l in zip(feature["input_ids"], feature["labels"]) if l == IGNORE_INDEX])
    assert "2+2?" in unsupervised and "And times 3?" in unsupervised and "You are terse." in unsupervised


def test_fallback_template_when_the_tokenizer_has_none(tokenizer):
    original = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        messages = [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"},
                    {"role": "user", "content": "Again."}, {"role": "assistant", "content": "Hi again!"}]
        feature = tokenize_messages(tokenizer, messages, max_len=512)
    finally:
        tokenizer.chat_template = original
    assert "### User:" in tokenizer.decode(feature["input_ids"])
    assert supervised_text(tokenizer, feature) == f"Hi!{tokenizer.eos_token}Hi again!{tokenizer.eos_token}"


@pytest.mark.parametrize("line, reason", [
    ('{"instruction": "x", "output": ', "invalid JSON"),
    ('{"instruction": "x"}', "missing field 'output'"),
    ('{"instruction": "x", "output": 3}', "field 'output' must be a string, got int"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role must be one of"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant turn"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "must follow a user turn"),
    ('[1, 2]', "expected a JSON object, got list"),
])
def test_malformed_line_names_file_line_and_problem(tmp_path, line, reason):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "ok", "output": "fine"})
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(DataFormatError) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:3: ")
    assert reason in str(err.value)
    records, problems = read_jsonl(path, skip_bad_lines=True)
    assert len(records) == 2 and len(problems) == 1 and problems[0].startswith(f"{path}:3: ")


def test_fixture_files_read_in_both_shapes():
    alpaca, problems = read_jsonl(FIXTURES / "alpaca.jsonl")
    chat, _ = read_jsonl(FIXTURES / "chat.jsonl")
    assert len(alpaca) == 12 and not problems and len(chat) == 4
    assert sum(m["role"] == "assistant" for m in chat[0]["messages"]) == 2


def test_truncation_counts_truncated_and_drops_samples_without_targets(tokenizer):
    long_prompt = {"instruction": "word " * 200, "output": "short answer"}
    long_answer = {"instruction": "Write a lot.", "output": "many words " * 100}
    normal = {"instruction": "Hi", "output": "Hello"}
    records = [dict(r, messages=record_to_messages(r)) for r in (long_prompt, long_answer, normal)]
    dataset = SFTDataset(records, tokenizer, max_len=64, name="mixed")
    assert dataset.report.dropped_no_target == 1 and dataset.report.truncated == 1 and len(dataset) == 2
    assert all(len(f["input_ids"]) <= 64 for f in dataset.features)
    assert "1 truncated, 1 dropped" in dataset.report.summary()
    with pytest.raises(DataFormatError, match="no usable sample"):
        SFTDataset(records[:1], tokenizer, max_len=64, name="only-long")


def test_collate_pads_dynamically_with_ignored_labels():
    batch = collate([dict(input_ids=[5, 6, 7], labels=[-100, 6, 7]), dict(input_ids=[8], labels=[8])], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("group_by_length", [False, True])
def test_loader_visits_every_sample_once_per_epoch_in_a_seeded_order(tokenizer, group_by_length):
    dataset = SFTDataset.from_file(FIXTURES / "alpaca.jsonl", tokenizer, max_len=128)

    def order(seed):
        loader = make_loader(dataset, 4, tokenizer.pad_token_id, shuffle=True, seed=seed, group_by_length=group_by_length)
        return [tuple(row[m.bool()].tolist()) for b in loader for row, m in zip(b["input_ids"], b["attention_mask"])]

    first = order(1)
    assert sorted(first) == sorted(tuple(f["input_ids"]) for f in dataset.features)
    assert order(1) == first
    if group_by_length:  # sorted mega-batches: never more padding than a plain shuffle
        def padding(grouped):
            loader = make_loader(dataset, 4, tokenizer.pad_token_id, shuffle=True, seed=1, group_by_length=grouped)
            return sum(int((1 - b["attention_mask"]).sum()) for b in loader)

        assert padding(True) <= padding(False)


# ---- encodings and the scripts' one-line errors --------------------------------------------------------------------
GOOD_LINE = json.dumps({"instruction": "Say hi.", "output": "Hi!"})


def test_a_file_opening_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + f"{GOOD_LINE}\n{GOOD_LINE}\n".encode())
    records, problems = read_jsonl(path)
    assert len(records) == 2 and not problems and records[0]["output"] == "Hi!"


def test_bytes_that_are_not_utf8_name_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(f"{GOOD_LINE}\n".encode() + '{"instruction": "café", "output": "x"}\n'.encode("latin-1")
                     + f"{GOOD_LINE}\n".encode())
    with pytest.raises(DataFormatError) as err:
        read_jsonl(path)
    assert str(err.value) == f"{path}:2: not valid UTF-8"
    records, problems = read_jsonl(path, skip_bad_lines=True)
    assert len(records) == 2 and problems == [f"{path}:2: not valid UTF-8"]


def test_a_broken_results_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "train_loss.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:2: invalid JSON"):
        read_rows(path)


def test_cli_run_turns_an_input_error_into_one_line_and_keeps_bugs_loud(capsys):
    def bad_data():
        raise DataFormatError("data.jsonl:3: invalid JSON\n(see above)")

    with pytest.raises(SystemExit) as exit_:
        cli.run(bad_data)
    assert exit_.value.code == 2
    expected = f"{Path(sys.argv[0]).name}: error: data.jsonl:3: invalid JSON (see above)"
    assert capsys.readouterr().err.splitlines() == [expected]
    with pytest.raises(ZeroDivisionError):  # a bug is not an input error: its traceback stays
        cli.run(lambda: 1 / 0)


def run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("script", ["train_single_task.py", "plot_loss.py"])
def test_scripts_report_a_bad_file_in_one_line_on_stderr(tmp_path, script):
    """Run as a user would: a training file with a Latin-1 byte, a results log cut off mid-line."""
    if script == "train_single_task.py":
        data = tmp_path / "train.jsonl"
        data.write_bytes(f"{GOOD_LINE}\n".encode() + '{"instruction": "café", "output": "x"}\n'.encode("latin-1"))
        done = run_script(script, "--task", str(data), "--preset", "smoke", "--log_dir", str(tmp_path / "logs"),
                          "--checkpoint_dir", str(tmp_path / "ckpt"))
        expected = f"{data}:2: not valid UTF-8"
    else:
        (tmp_path / "train_loss.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": \n')
        done = run_script(script, str(tmp_path))
        expected = f"{tmp_path / 'train_loss.jsonl'}:2: invalid JSON"
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"{script}: error: {expected}")
