"""Issue 30 item 1: chat-format prompts (lists of {role, content} messages) were stringified into the
Python repr of the list and wrapped as one user turn. They are read from JSONL, Parquet and HF datasets,
rendered with the tokenizer's chat template and its generation prompt; any other non-string prompt
type refuses the dataset in one line before anything starts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rl_div.config import ConfigError, DataConfig
from rl_div.data import PromptRecord
from rl_div.models.loading import load_tokenizer
from rl_div.rollout.base import templated_prompt_ids
from rl_div.train.prompts import load_prompts

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "chat_prompts.jsonl"
SYSTEM = {"role": "system", "content": "Answer with a number."}
CHAT_ROWS = [
    {"prompt": [SYSTEM, {"role": "user", "content": "What is 2+3?"}], "answer": "5"},
    {"prompt": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "And 4+4?"}], "answer": "8"},
    {"prompt": "What is 7+1?", "answer": "8"},  # plain strings still work beside conversations
    {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "2"}], "answer": "1"},  # ends
    {"prompt": [{"role": "robot", "content": "x"}], "answer": "1"},  # unknown role
    {"prompt": [{"content": "no role"}], "answer": "1"},
    {"prompt": [], "answer": "1"},
]


def chat_cfg(path: Path, source: str) -> DataConfig:
    return DataConfig(source=source, path=str(path), eval_path=str(path), prompt_field="prompt",
                      answer_field="answer", num_train_prompts=100, num_eval_prompts=100)


def check_records(records: list[PromptRecord]) -> None:
    assert [r.answer for r in records] == ["5", "8", "8"]
    first, second, plain = records
    assert first.messages == (SYSTEM, {"role": "user", "content": "What is 2+3?"})
    assert first.prompt == "system: Answer with a number.\nuser: What is 2+3?"
    assert [m["role"] for m in second.messages or ()] == ["user", "assistant", "user"]
    assert plain.messages is None and plain.prompt == "What is 7+1?"


def test_jsonl_parquet_and_hf_conversations_are_read_as_messages(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in CHAT_ROWS))
    got = load_prompts(chat_cfg(jsonl, "jsonl"), "train", seed=0)
    check_records(got.records)
    assert got.skipped_rows == 4  # ends with an assistant turn, unknown role, no role, empty list

    conversations = [r for r in CHAT_ROWS[:2]]  # Parquet/Arrow: one type per column (list<struct>)
    pq.write_table(pa.Table.from_pylist(conversations), tmp_path / "chat.parquet")
    got = load_prompts(chat_cfg(tmp_path / "chat.parquet", "parquet"), "train", seed=0)
    assert [r.messages for r in got.records] == [tuple(r["prompt"]) for r in conversations]
    datasets.Dataset.from_list(conversations).save_to_disk(str(tmp_path / "hf"))
    cfg = chat_cfg(tmp_path / "hf", "hf").model_copy(update={"eval_path": None, "num_eval_prompts": 1})
    got = load_prompts(cfg, "train", seed=0)  # one split on disk: the first row is held out
    assert [r.messages for r in got.records] == [tuple(conversations[1]["prompt"])]


@pytest.mark.parametrize(("value", "kind"), [(7, "int"), ({"role": "user", "content": "x"}, "dict"), (2.5, "float")])
def test_another_prompt_type_is_refused_naming_it(tmp_path: Path, value: object, kind: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "fine", "answer": "1"}) + "\n" + json.dumps({"prompt": value, "answer": "1"}))
    with pytest.raises(ConfigError, match=f"field 'prompt' holds a {kind}"):
        load_prompts(chat_cfg(path, "jsonl"), "train", seed=0)


def test_a_conversation_is_rendered_with_the_chat_template(tiny_qwen_dir: Path) -> None:
    """Qwen's template over the turns, the assistant turn opened; data.prompt_template fills the last
    user turn. Expected text written out by hand from Qwen2's template."""
    tok = load_tokenizer(tiny_qwen_dir)
    record = PromptRecord(prompt="", answer="8", messages=(
        SYSTEM, {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
        {"role": "user", "content": "And 4+4?"}))
    ids = templated_prompt_ids(tok, record, "{prompt} Think.", None)
    assert tok.decode(ids) == ("<|im_start|>system\nAnswer with a number.<|im_end|>\n<|im_start|>user\n1+1?<|im_end|>\n"
                               "<|im_start|>assistant\n2<|im_end|>\n<|im_start|>user\nAnd 4+4? Think.<|im_end|>\n"
                               "<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="model.use_chat_template is false"):
        templated_prompt_ids(tok, record, "{prompt}", False)


def rl_div(*args: str, cwd: Path = REPO, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl_div.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


def test_cli_refuses_a_number_prompt_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": "1"}) + "\n" for i in range(3))
                    + json.dumps({"prompt": 12, "answer": "1"}) + "\n")
    done = rl_div("train", "configs/demo.yaml", "data.source=jsonl", f"data.path={data}", "data.prompt_field=prompt",
                  "data.num_eval_prompts=1", f"run.output_dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "rl-div: data: field 'prompt' holds a int ('12'); a prompt is a string or a list of {role, content} "
        "messages (see docs/data.md)"]
    assert not (tmp_path / "run").exists()


def test_cli_refuses_conversations_for_a_tokenizer_without_chat_template(tmp_path: Path,
                                                                        bootstrapped_prime_gap: Path) -> None:
    done = rl_div("train", "docs/examples/chat.yaml", f"model.path={bootstrapped_prime_gap}",
                  f"run.output_dir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "chat-format prompts need a tokenizer with a chat template" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_the_example_chat_config_trains_through_the_cli(tmp_path: Path, tiny_qwen_dir: Path) -> None:
    """docs/examples/chat.yaml as a user runs it (shortened), from the repository root."""
    out = tmp_path / "run"
    done = rl_div("train", "docs/examples/chat.yaml", f"bootstrap.cache_dir={tiny_qwen_dir.parent}",
                  f"run.output_dir={out}", "train.steps=1", "rollout.group_size=2", "rollout.max_new_tokens=4",
                  "eval.n=2", "data.num_eval_prompts=2", "tracking.progress=false", "tracking.tensorboard=false",
                  "cluster.num_cpus=2", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    final = json.loads((out / "eval" / "step_000001.json").read_text())
    rows = [json.loads(line) for line in EXAMPLE.read_text().splitlines()][:2]
    shown = ["\n".join(f"{m['role']}: {m['content']}" for m in r["prompt"]) for r in rows]
    assert sorted(p["prompt"] for p in final["problems"]) == sorted(shown)  # the held-out conversations
    assert (out / "report" / "report.html").exists()
