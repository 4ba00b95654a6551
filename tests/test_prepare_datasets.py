"""prepare_datasets.py: the five offline tasks, hub conversions on fixture files, verified targets, no leakage."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from datasets import load_dataset

import metrics
import prepare_datasets
from tasks import hub, t1_general, t2_math, t3_code, t4_tool, t5_benign, t5_safety
from tests.conftest import FIXTURES
from utils_data import read_task, record_to_messages, tokenize_messages

TASKS = list(prepare_datasets.OFFLINE)
SMALL = ["--train", "60", "--val", "12", "--test", "12", "--seed", "5"]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    prepare_datasets.main(["--out", str(out)] + SMALL)
    return out


def test_every_task_and_split_is_written_with_its_metric(built):
    for task in TASKS:
        splits = {s: read(built / task / f"{s}.jsonl") for s in ("train", "val", "test")}
        assert len(splits["train"]) == 60 and len(splits["val"]) == 12
        benign = 4 * min(12, prepare_datasets.BENIGN_PER_TASK)
        assert len(splits["test"]) == {"T5_safety": 12 + benign}.get(task, 12), task
        for record in splits["train"] + splits["test"]:
            assert record["metric"] == prepare_datasets.METRIC[task] and record["id"].startswith(task)
    extra = [p.relative_to(built).as_posix() for p in built.glob("*/*.jsonl") if p.stem not in prepare_datasets.SPLITS]
    assert extra == ["T3_code/humaneval.jsonl"]  # a benchmark's own split, beside train/val/test


def test_references_score_perfectly_on_their_own_metric(built):
    """Every kept target satisfies its task's checker (code: a sample, the sandbox is slow)."""
    for task in TASKS:
        records = read(built / task / "train.jsonl") + read(built / task / "test.jsonl")
        if task == "T3_code":
            records = records[:5] + records[-3:]
        for record in records:
            if task == "T5_safety" and not record["harmful"]:
                continue  # benign references are other tasks' answers
            assert metrics.score_sample(record, record["output"])["score"] == 1.0, (task, record["id"])


def test_test_prompts_never_appear_in_train(built):
    for task in TASKS:
        keys = {s: {prepare_datasets.prompt_key(r) for r in read(built / task / f"{s}.jsonl")} for s in ("train", "val", "test")}
        assert not keys["test"] & keys["train"] and not keys["val"] & keys["train"] and not keys["test"] & keys["val"]
        assert len(keys["train"]) == 60  # no duplicates inside train either
    humaneval = {prepare_datasets.prompt_key(r) for r in read(built / "T3_code" / "humaneval.jsonl")}
    assert not humaneval & {prepare_datasets.prompt_key(r) for s in prepare_datasets.SPLITS
                            for r in read(built / "T3_code" / f"{s}.jsonl")}


def test_a_code_task_under_another_function_name_is_a_duplicate():
    """Renaming the function does not make a held-out task: the test copy wins, the training copy goes."""
    task = dict(instruction="Write a Python function `{}(nums)` that returns the sum of `nums`.", input="")
    test = dict(task, instruction=task["instruction"].format("total"), entry_point="total")
    train = dict(task, instruction=task["instruction"].format("add_all"), entry_point="add_all")
    other = dict(task, instruction="Write a Python function `add_all(nums)` that returns the product of `nums`.",
                 entry_point="add_all")
    kept, removed = prepare_datasets.deduplicate({"test": [test], "val": [], "train": [train, other]},
                                                 {"test": 1, "val": 1, "train": 2})
    assert kept["test"] == [test] and kept["train"] == [other] and removed == 1


def test_t3_test_split_holds_unseen_tasks_of_the_training_families(built):
    """In distribution: every test task comes from a family train has, with parameters train never saw (the
    prompt without its function name differs); HumanEval is its own split, whole."""
    splits = {s: read(built / "T3_code" / f"{s}.jsonl") for s in ("train", "test", "humaneval")}
    assert {r["family"] for r in splits["test"]} <= {r["family"] for r in splits["train"]}
    unnamed = {s: {r["instruction"].replace(r["entry_point"], "") for r in splits[s]} for s in ("train", "test")}
    assert not unnamed["test"] & unnamed["train"]
    assert len(splits["humaneval"]) == 164 and all(r["source_id"].startswith("HumanEval/") for r in splits["humaneval"])
    assert not any("source_id" in r for r in splits["test"])
    records, _ = read_task("T3_code", "humaneval", built)  # evaluate.py --split humaneval reads it
    assert len(records) == 164 and records[0]["metric"] == "code_pass_at_1"


def test_every_sample_fits_the_default_sequence_length(built, tokenizer):
    """Prompt and answer of every train/val/test sample fit max_seq_len 512 untruncated (T4's long function
    schemas included; HumanEval, a split of its own, needs longer)."""
    for task in TASKS:
        for split in prepare_datasets.SPLITS:
            for record in read(built / task / f"{split}.jsonl"):
                assert not tokenize_messages(tokenizer, record_to_messages(record), 512)["truncated"], record["id"]


def test_default_sizes_give_every_task_100_test_samples(tmp_path, monkeypatch):
    """At the default sizes every test split holds >= 100 samples: T3 from all of its families, T5 both kinds."""
    monkeypatch.setattr(t3_code, "verified", lambda records: records)  # the sandbox check is tested above
    prepare_datasets.main(["--out", str(tmp_path)])
    for task in TASKS:
        splits = {s: read(tmp_path / task / f"{s}.jsonl") for s in prepare_datasets.SPLITS}
        assert len(splits["test"]) >= 100 and len(splits["val"]) == 100, task
        assert len(splits["train"]) >= (150 if task == "T5_safety" else 800), task  # T5: as many refusals as keep
        # the benign half (tasks.t5_benign has 92 distinct training requests)
    families = Counter(r["family"] for r in read(tmp_path / "T3_code" / "test.jsonl"))  # equal shares: 8 or 9 each
    assert set(families) == {f.__name__.lstrip("_") for f in t3_code.FAMILIES}
    assert max(families.values()) - min(families.values()) <= 1
    assert len(read(tmp_path / "T3_code" / "train.jsonl")) == 1000  # the generator's tasks survive de-duplication
    safety = read(tmp_path / "T5_safety" / "test.jsonl")
    assert sum(r["harmful"] for r in safety) == 100
    assert sum(not r["harmful"] for r in safety) == 4 * prepare_datasets.BENIGN_PER_TASK


def test_t5_test_mixes_harmful_and_benign_prompts(built):
    test = read(built / "T5_safety" / "test.jsonl")
    benign = [r for r in test if not r["harmful"]]
    assert len(benign) == 4 * 12  # every other task's 12-sample test split
    assert {r["benign_source"] for r in benign} == {"T1_general", "T2_math", "T3_code", "T4_tool"}
    first = test[:len(test) // 3]  # shuffled in: the first lines of the file (a capped evaluation) hold both kinds
    assert any(r["harmful"] for r in first) and not all(r["harmful"] for r in first)
    targets = {r["output"] for r in test if r["harmful"]}
    assert len(targets) > 5  # varied refusals, not one fixed string


def test_t5_train_and_val_teach_when_to_answer(built):
    """Half of T5's training and validation samples are benign requests answered helpfully (not refusals),
    from slots that differ between the two splits; the harmful ones are refused."""
    for split in ("train", "val"):
        records = read(built / "T5_safety" / f"{split}.jsonl")
        benign = [r for r in records if not r["harmful"]]
        assert abs(len(benign) / len(records) - t5_safety.BENIGN_SHARE) <= 0.1, split
        assert all(not metrics.is_refusal(r["output"]) for r in benign)
        assert all(metrics.is_refusal(r["output"]) for r in records if r["harmful"])
        assert {r["risk_area"] for r in benign} == {"benign"}
    train, held_out = (t5_benign.benign_records(200, 0, split) for split in ("train", "eval"))
    assert len(train) == 92 and not {r["instruction"] for r in train} & {r["instruction"] for r in held_out}


def test_build_is_deterministic(built, tmp_path, monkeypatch):
    monkeypatch.setattr(t3_code, "verified", lambda records: records)  # the same tasks, without the sandbox run
    prepare_datasets.main(["--out", str(tmp_path), "--tasks", "T1_general,T2_math,T3_code,T4_tool"] + SMALL)
    for task in ("T1_general", "T2_math", "T3_code", "T4_tool"):
        for split in ("train", "val", "test"):
            assert (tmp_path / task / f"{split}.jsonl").read_text() == (built / task / f"{split}.jsonl").read_text()


def test_t1_eval_topics_are_held_out_of_training():
    train = t1_general.generate(200, 1, "train")
    held = t1_general.generate(50, 1, "eval")
    assert not {r["topic"] for r in train} & set(t1_general.EVAL_TOPICS)
    assert {r["topic"] for r in held} <= set(t1_general.EVAL_TOPICS)


def test_t4_targets_write_dict_arguments_as_plain_values(built):
    """BFCL's ground truth writes a dict argument as {key: [allowed values]}; the target must be the dict itself."""
    ground_truth = [{"update": {"user_id": [7], "note": ["", "x"],
                                "profile": [{"email": ["a@b.c", "A@B.C"], "age": [30], "bio": [""]}]}}]
    target, = t4_tool.target_calls(ground_truth)
    assert target == {"name": "update", "arguments": {"user_id": 7, "profile": {"email": "a@b.c", "age": 30}}}
    assert metrics.function_call({"ground_truth": ground_truth}, json.dumps(target))["score"] == 1.0
    for record in read(built / "T4_tool" / "test.jsonl"):  # the schemas travel with the record for type checks
        called = {c["name"] for c in t4_tool.target_calls(record["ground_truth"])}
        assert called <= {f["name"] for f in record["functions"]}


def test_t2_verify_rejects_a_wrong_step_and_a_wrong_answer():
    with pytest.raises(ValueError, match="computes 12"):
        t2_math.verify(["3 * 4 = 13"], 13)
    with pytest.raises(ValueError, match="the answer is 5"):
        t2_math.verify(["3 * 4 = 12"], 5)
    with pytest.raises(ValueError, match="not plain arithmetic"):
        t2_math.evaluate_arithmetic("__import__('os')")


# ---- --source hub, on local fixture files with the hub datasets' columns ----------------------------------------
HUB_FIXTURES = {  # (hub id, config, split) -> tests/fixtures/hub/<name>.jsonl
    ("tatsu-lab/alpaca", None, "train"): "alpaca", ("databricks/databricks-dolly-15k", None, "train"): "dolly",
    ("openai/gsm8k", "main", "train"): "gsm8k", ("openai/gsm8k", "main", "test"): "gsm8k_test",
    ("sahil2801/CodeAlpaca-20k", None, "train"): "code_alpaca",
    ("glaiveai/glaive-function-calling-v2", None, "train"): "glaive",
    ("Anthropic/hh-rlhf", "harmless-base", "train"): "hh_rlhf",
    ("Anthropic/hh-rlhf", "helpful-base", "train"): "hh_rlhf_helpful"}


def hub_rows(key):
    """A fixture file through the real datasets JSON loader, as load_dataset would give the hub split."""
    return load_dataset("json", data_files=str(FIXTURES / "hub" / f"{HUB_FIXTURES[key]}.jsonl"), split="train")


@pytest.fixture
def local_hub(monkeypatch):
    """datasets.load_dataset answers hub ids from fixture files."""
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split="train": hub_rows((name, config, split)))


def test_every_hub_source_has_a_fixture():
    assert {(s.hub_id, s.config, s.split) for sources in hub.SOURCES.values() for s in sources} == set(HUB_FIXTURES)


def test_hub_conversions():
    gsm = hub.convert_gsm8k(hub_rows(("openai/gsm8k", "main", "train")))
    assert gsm[0]["answer"] == "72" and "<<" not in gsm[0]["output"] and gsm[1]["answer"] == "1200"
    assert all(metrics.math_exact_match(r, r["output"])["score"] == 1.0 for r in gsm)
    alpaca = hub.convert_alpaca(hub_rows(("tatsu-lab/alpaca", None, "train")))
    assert len(alpaca) == 2 and alpaca[1]["input"] == "Good morning"  # the empty answer is dropped
    dolly = hub.convert_dolly(hub_rows(("databricks/databricks-dolly-15k", None, "train")))
    assert dolly[0]["input"].startswith("Virgin Australia") and dolly[1]["output"] == "Tope"
    assert {r["metric"] for r in alpaca + dolly} == {"rouge_l"}


def test_glaive_conversion_keeps_the_schemas_and_bfcl_form():
    glaive = hub.convert_glaive(hub_rows(("glaiveai/glaive-function-calling-v2", None, "train")))
    assert len(glaive) == 2 and json.loads(glaive[0]["output"]) == {
        "name": "get_exchange_rate", "arguments": {"base_currency": "USD", "target_currency": "EUR"}}
    booking = glaive[1]
    assert [f["name"] for f in booking["functions"]] == ["book_table", "get_menu"]
    assert booking["ground_truth"][0]["book_table"]["contact"] == [{"name": ["Ann"], "phone": ["555-0100"]}]
    assert all(metrics.function_call(r, r["output"])["score"] == 1.0 for r in glaive)
    call = json.loads(booking["output"])
    for key, wrong in (("outdoor", 1), ("guests", 4.5), ("guests", True)):
        altered = json.dumps(dict(call, arguments=dict(call["arguments"], **{key: wrong})))
        assert metrics.function_call(booking, altered)["score"] == 0.0, (key, wrong)


def test_hh_rlhf_labels_come_from_the_datas_own_harmlessness_signal():
    """Red-team (harmless-base) dialogues are harmful only where the chosen reply refuses; a complying chosen reply
    is never a harmful sample's target. helpful-base dialogues are benign (harmful=False)."""
    harmful = hub.convert_hh_harmless(hub_rows(("Anthropic/hh-rlhf", "harmless-base", "train")))
    benign = hub.convert_hh_helpful(hub_rows(("Anthropic/hh-rlhf", "helpful-base", "train")))
    assert [m["role"] for m in harmful[0]["messages"]] == ["user", "assistant", "user", "assistant"]
    assert len(harmful) == 1 and harmful[0]["harmful"] is True  # the complying "chosen" reply is left out
    assert len(benign) == 1 and benign[0]["harmful"] is False and "Lettuce" in benign[0]["messages"][-1]["content"]
    for record in harmful + benign:
        assert metrics.score_sample(record, record["messages"][-1]["content"])["score"] == 1.0


def test_hub_gsm8k_keeps_the_official_test_split(local_hub, tmp_path):
    prepare_datasets.main(["--source", "hub", "--out", str(tmp_path), "--tasks", "T2_math",
                           "--train", "5", "--val", "1", "--test", "3"])
    official = {r["question"] for r in hub_rows(("openai/gsm8k", "main", "test"))}
    splits = {s: {r["instruction"] for r in read(tmp_path / "T2_math" / f"{s}.jsonl")} for s in ("train", "val", "test")}
    assert splits["test"] == official  # all of the official test split, nothing else
    assert not (splits["train"] | splits["val"]) & official and len(splits["train"]) == 1 and len(splits["val"]) == 1


def test_hub_t1_is_scored_by_rouge_l_and_says_so(local_hub, tmp_path, capsys):
    prepare_datasets.main(["--source", "hub", "--out", str(tmp_path), "--tasks", "T1_general",
                           "--train", "2", "--val", "1", "--test", "1"])
    records = [r for s in ("train", "val", "test") for r in read(tmp_path / "T1_general" / f"{s}.jsonl")]
    assert len(records) == 4 and {r["metric"] for r in records} == {"rouge_l"}
    assert "scored by rouge_l" in capsys.readouterr().out  # the build says which metric (data/README.md too)


def test_prepare_datasets_hub_source_end_to_end(local_hub, tmp_path):
    prepare_datasets.main(["--source", "hub", "--out", str(tmp_path), "--tasks", "T2_math,T3_code,T4_tool,T5_safety",
                           "--train", "1", "--val", "1", "--test", "1"])
    code = {s: read(tmp_path / "T3_code" / f"{s}.jsonl") for s in ("val", "test", "humaneval")}
    assert code["val"][0]["metric"] == "rouge_l" and code["test"][0]["family"]  # CodeAlpaca; offline held-out tasks
    assert len(code["humaneval"]) == 164  # and HumanEval's own split
    math_train = read(tmp_path / "T2_math" / "train.jsonl")
    assert len(math_train) == 1 and math_train[0]["metric"] == "math_exact_match"
    tool = {s: read(tmp_path / "T4_tool" / f"{s}.jsonl") for s in ("val", "test")}
    assert tool["val"][0]["metric"] == "function_call" and tool["val"][0]["functions"]
    assert tool["test"][0]["category"] in t4_tool.CATEGORIES  # the BFCL test split needs no network
    safety = read(tmp_path / "T5_safety" / "train.jsonl") + read(tmp_path / "T5_safety" / "val.jsonl")
    assert len(safety) == 2
    assert all(metrics.score_sample(r, r["messages"][-1]["content"])["score"] == 1.0 for r in safety)
