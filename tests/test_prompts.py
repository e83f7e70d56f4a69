"""Prompt datasets: JSONL/Parquet/HF-on-disk loading, malformed rows skipped and counted, and the
resumable prompt stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl_div.config import ConfigError, DataConfig
from rl_div.data import PromptRecord
from rl_div.train.prompts import PromptStream, load_prompts, load_splits

ROWS = [
    {"question": "What is 1+1?", "answer": "It is 2.\n#### 2"},
    {"question": "What is 2+3?", "answer": "#### 5"},
    {"question": "", "answer": "#### 1"},  # empty prompt
    {"answer": "#### 4"},  # missing prompt
    {"question": "q", "answer": "no marker"},  # regex does not match
    ["not", "an", "object"],
]


def gsm8k_cfg(path: Path, source: str, eval_path: Path | None = None) -> DataConfig:
    return DataConfig(source=source, path=str(path), answer_regex=r"####\s*(.+)", num_train_prompts=100,
                      num_eval_prompts=1, eval_path=str(eval_path) if eval_path else None)


def test_jsonl_skips_and_counts_malformed_rows(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n{not json\n")
    got = load_prompts(gsm8k_cfg(path, "jsonl", eval_path=path), "train", seed=0)
    assert [(r.prompt, r.answer) for r in got.records] == [("What is 1+1?", "2"), ("What is 2+3?", "5")]
    assert got.skipped_rows == 5  # four bad rows + one line that is not JSON
    assert got.records[0].meta["extractor"] == "math"


def test_a_non_utf8_line_is_skipped_and_counted(tmp_path: Path) -> None:
    """Issue 8 item 8: one Latin-1 line among good rows raised UnicodeDecodeError."""
    path = tmp_path / "train.jsonl"
    good = [json.dumps(r).encode() for r in ROWS[:2]]
    latin1 = '{"question": "Caf\xe9 costs?", "answer": "#### 3"}'.encode("latin-1")
    path.write_bytes(b"\n".join([good[0], latin1, good[1], b"\xff\xfe\x00garbage"]) + b"\n")
    got = load_prompts(gsm8k_cfg(path, "jsonl", eval_path=path), "train", seed=0)
    assert [(r.prompt, r.answer) for r in got.records] == [("What is 1+1?", "2"), ("What is 2+3?", "5")]
    assert got.skipped_rows == 2


def test_without_eval_path_the_first_rows_are_held_out(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS[:2]) + "\n")
    train = load_prompts(gsm8k_cfg(path, "jsonl"), "train", seed=0).records
    held_out = load_prompts(gsm8k_cfg(path, "jsonl"), "eval", seed=0).records
    assert [r.answer for r in held_out] == ["2"] and [r.answer for r in train] == ["5"]


def test_parquet_and_hf_disk(tmp_path: Path) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = [r for r in ROWS[:2]]
    pq.write_table(pa.Table.from_pylist(good), tmp_path / "t.parquet")
    got = load_prompts(gsm8k_cfg(tmp_path / "t.parquet", "parquet", eval_path=tmp_path / "t.parquet"), "train", 0)
    assert [r.answer for r in got.records] == ["2", "5"]
    datasets.Dataset.from_list(good).save_to_disk(str(tmp_path / "hf"))
    got = load_prompts(gsm8k_cfg(tmp_path / "hf", "hf"), "train", seed=0)
    assert [r.answer for r in got.records] == ["5"]  # one split on disk: the first row is held out


QA = [{"question": f"What is {i}+1?", "answer": f"#### {i + 1}"} for i in range(6)]


def test_single_split_hf_dataset_is_held_out_like_a_file(tmp_path: Path) -> None:
    """save_to_disk of one split returns every row whatever split is asked for: without a hold-out,
    every evaluation prompt was also trained on."""
    import datasets

    datasets.Dataset.from_list(QA).save_to_disk(str(tmp_path / "hf"))
    cfg = gsm8k_cfg(tmp_path / "hf", "hf").model_copy(update={"num_eval_prompts": 2})
    train, held_out = load_splits(cfg, seed=0)
    assert [r.prompt for r in held_out.records] == ["What is 0+1?", "What is 1+1?"]
    assert [r.prompt for r in train.records] == [f"What is {i}+1?" for i in range(2, 6)]


def test_hf_dataset_dict_on_disk_reads_the_named_splits(tmp_path: Path) -> None:
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(QA[2:]), "test": datasets.Dataset.from_list(QA[:2])}
                         ).save_to_disk(str(tmp_path / "hf"))
    cfg = gsm8k_cfg(tmp_path / "hf", "hf").model_copy(update={"num_eval_prompts": 2})
    train, held_out = load_splits(cfg, seed=0)
    assert [r.answer for r in held_out.records] == ["1", "2"]
    assert [r.answer for r in train.records] == ["3", "4", "5", "6"]
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_prompts(cfg.model_copy(update={"eval_split": "validation"}), "eval", 0)


def test_overlapping_eval_prompts_are_refused_unless_allowed(tmp_path: Path) -> None:
    train_path, eval_path = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_path.write_text("\n".join(json.dumps(r) for r in QA[1:]) + "\n")
    eval_path.write_text("\n".join(json.dumps(r) for r in QA[:3]) + "\n")  # rows 1, 2 are trained on
    cfg = gsm8k_cfg(train_path, "jsonl", eval_path=eval_path).model_copy(update={"num_eval_prompts": 3})
    with pytest.raises(ConfigError, match="2 of the 3 evaluation prompts are also training prompts"):
        load_splits(cfg, seed=0)
    train, held_out = load_splits(cfg.model_copy(update={"allow_eval_overlap": True}), seed=0)
    assert len(held_out.records) == 3 and len(train.records) == 5


def test_cli_refuses_an_overlapping_config_before_work_starts(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from rl_div.cli import main

    ray_starts = []
    monkeypatch.setattr("rl_div.cluster.actors.init_ray", lambda cfg: ray_starts.append(cfg))

    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in QA) + "\n")
    (tmp_path / "cfg.yaml").write_text("{}\n")
    args = ["train", str(tmp_path / "cfg.yaml"), "data.source=jsonl", f"data.path={path}", f"data.eval_path={path}",
            "data.answer_regex=####\\s*(.+)", "model.path=bootstrap",
            f"bootstrap.cache_dir={tmp_path / 'cache'}", f"run.output_dir={tmp_path / 'run'}"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "evaluation prompts are also training prompts" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # refused before the base model is bootstrapped
    assert ray_starts == []  # and before Ray starts
    import ray

    assert not ray.is_initialized()  # the refused run left no Ray behind in this process


def test_all_rows_bad_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"x": 1}) + "\n")
    with pytest.raises(ValueError, match="no usable train prompts"):
        load_prompts(gsm8k_cfg(path, "jsonl"), "train", seed=0)


def test_stream_is_seeded_epoch_complete_and_resumable() -> None:
    records = [PromptRecord(str(i), str(i)) for i in range(7)]
    stream = PromptStream(records, seed=3)
    first_epoch = stream.next_batch(7)
    assert sorted(r.prompt for r in first_epoch) == [str(i) for i in range(7)]
    a = PromptStream(records, seed=3)
    a.next_batch(5)
    saved = a.state()
    expected = [r.prompt for r in a.next_batch(6)]
    b = PromptStream(records, seed=3)
    b.load_state(saved)
    assert [r.prompt for r in b.next_batch(6)] == expected
    assert [r.prompt for r in PromptStream(records, seed=4).next_batch(7)] != [r.prompt for r in first_epoch]
