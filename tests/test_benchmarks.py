"""Benchmarks by name: the built-in sets read from the shared folder with their gold formats, malformed
rows skipped and counted with their line numbers, user benchmarks from YAML, the hub code path (on a
local folder: no network in tests), and the field's prompt styles rendered through the real Qwen
tokenizer's chat template."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from rl_div.benchmarks import (
    BENCHMARKS,
    PROMPT_INSTRUCTION,
    BenchmarkRow,
    BenchmarkSet,
    BenchmarkSpec,
    HubSource,
    SamplingDefaults,
    benchmark_records,
    load_benchmark,
    load_user_benchmarks,
)
from rl_div.benchmarks.builtin import competition_row
from rl_div.config import load_config
from rl_div.data import PromptRecord
from rl_div.rollout.base import templated_prompt_ids

REPO = Path(__file__).resolve().parent.parent


def shared_data() -> Path | None:
    """The shared data folder: $RL_DIV_SHARED_DATA, else ../shared/data beside the clone (or its parent)."""
    candidates = [os.environ.get("RL_DIV_SHARED_DATA"), REPO.parent / "shared" / "data",
                  REPO.parent.parent / "shared" / "data"]
    return next((Path(c) for c in candidates if c and (Path(c) / "benchmarks").is_dir()), None)


DATA = shared_data()
needs_data = pytest.mark.skipif(DATA is None, reason="benchmark data not found: set RL_DIV_SHARED_DATA or put "
                                "../shared/data (benchmarks/, gsm8k/) beside the clone; it is not part of a clone")
# rows per set, from /work/shared/data/benchmarks/README.md and the GSM8K README
ROWS = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva_math": 272, "olympiadbench": 675,
        "gsm8k": 1319}


def test_every_standard_set_is_registered() -> None:
    assert set(ROWS) <= set(BENCHMARKS.names())


@needs_data
@pytest.mark.parametrize("name", sorted(ROWS))
def test_each_set_loads_every_row_from_the_root(name: str) -> None:
    bench = load_benchmark(name, DATA / "benchmarks")
    assert (len(bench.rows), bench.skipped) == (ROWS[name], [])
    assert all(r.problem and r.golds for r in bench.rows)
    assert bench.sampling.n >= (64 if name in ("aime24", "aime25", "amc23") else 16)


@needs_data
def test_gold_formats_per_set() -> None:
    root = DATA / "benchmarks"
    first = {name: load_benchmark(name, root, limit=1).rows[0] for name in ROWS}
    raw = {name: json.loads((root / name / "test.jsonl").open().readline()) for name in ROWS if name != "gsm8k"}
    assert raw["amc23"]["answer"] == 27.0 and first["amc23"].golds == ("27",)  # a float written as a number
    assert first["aime24"].golds == (raw["aime24"]["answer"],)
    assert first["math500"].golds == (raw["math500"]["answer"],)
    assert first["minerva_math"].golds == ("1.6",)  # the last \boxed{} of its solution (read by hand)
    assert first["olympiadbench"].golds == ("2",) and raw["olympiadbench"]["final_answer"] == ["2"]
    assert first["gsm8k"].golds == ("18",)  # "#### 18"
    olympiad = load_benchmark("olympiadbench", root).rows
    several = next(r for r in olympiad if r.golds == ("69, 84",))
    assert several.meta["is_multiple_answer"]  # "$69$,$84$": one answer of two values, dollars dropped
    assert next(r for r in olympiad if r.meta["unit"] == "km").golds == ("\\frac{41}{12}",)


def test_malformed_rows_are_counted_skips_with_line_numbers(tmp_path: Path, caplog) -> None:
    lines = ['{"problem": "1+1?", "answer": "2"}', "{not json", "", '{"problem": "2+2?"}', "[1, 2]",
             '{"problem": "  ", "answer": "3"}', '{"problem": "3+3?", "answer": 6.0}',
             '{"problem": "x", "answer": true}']
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "test.jsonl").write_text("\n".join(lines) + "\n")
    spec = BenchmarkSpec("mine", competition_row)
    with caplog.at_level("WARNING", logger="rl_div"):
        bench = load_benchmark(spec, tmp_path)
    assert [(r.problem, r.golds, r.line) for r in bench.rows] == [("1+1?", ("2",), 1), ("3+3?", ("6",), 7)]
    assert [n for n, _ in bench.skipped] == [2, 4, 5, 6, 8]  # line 3 is blank: not a row
    assert "not UTF-8 JSON" in bench.skipped[0][1] and "'answer'" in bench.skipped[1][1]
    assert "expected an object" in bench.skipped[2][1] and "boolean" in bench.skipped[4][1]
    assert "skipping line 2 of" in caplog.text and "skipped 5 malformed rows of 7" in caplog.text


def test_missing_folder_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"aime24.*aime24/test.jsonl.*benchmarks.root.*HuggingFaceH4"):
        load_benchmark("aime24", tmp_path)


def test_hub_code_path_reads_a_local_folder_with_datasets(tmp_path: Path) -> None:
    folder = tmp_path / "hub_copy"
    folder.mkdir()
    rows = [{"question": "What is 2+3?", "answer": 5}, {"question": "What is 7-4?", "answer": "3"}]
    (folder / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    spec = BenchmarkSpec("hubbed", competition_row, hub=HubSource(str(folder), split="test"))
    with pytest.raises(FileNotFoundError):
        load_benchmark(spec, tmp_path / "nowhere")  # no local file and hub off: never a download
    bench = load_benchmark(spec, tmp_path / "nowhere", hub=True)
    got = [(r.problem, r.golds, r.line) for r in bench.rows]
    assert got == [("What is 2+3?", ("5",), 1), ("What is 7-4?", ("3",), 2)]
    assert bench.source == f"hub:{folder}"


def test_user_benchmark_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "quiz.jsonl").write_text(
        '{"q": "Name 1/2 as a decimal", "a": "#### 0.5"}\n{"q": "Roots of x^2=4", "a": ["#### 2", "#### -2"]}\n'
        '{"q": "no gold", "a": "none"}\n')
    yaml_file = tmp_path / "benchmarks.yaml"
    yaml_file.write_text("benchmarks:\n  - name: quiz\n    path: data/quiz.jsonl\n    problem_field: q\n"
                         "    answer_field: a\n    answer_regex: '#### (.*)'\n    n: 32\n")
    [spec] = load_user_benchmarks(yaml_file)
    bench = load_benchmark("quiz")
    assert [r.golds for r in bench.rows] == [("0.5",), ("2", "-2")]
    assert bench.skipped == [(3, "answer does not match answer_regex '#### (.*)'")]
    assert spec.sampling.n == 32 and bench.sampling.temperature == 0.6
    yaml_file.write_text("- name: bad\n  path: x.jsonl\n  problem_feild: q\n  answer_field: a\n")
    expected = r"entry 0: unknown keys \['problem_feild'\], missing keys \['problem_field'\]"
    with pytest.raises(ValueError, match=expected):
        load_user_benchmarks(yaml_file)


def test_benchmarks_section_of_the_config() -> None:
    cfg = load_config(None, ["benchmarks.root=/data/b", "benchmarks.prompt_style=qwen_math",
                             "benchmarks.sampling={aime24: {n: 256}}"])
    assert cfg.benchmarks.root == "/data/b" and cfg.benchmarks.sampling["aime24"].n == 256
    assert cfg.benchmarks.instruction == PROMPT_INSTRUCTION
    with pytest.raises(ValueError, match="n"):
        load_config(None, ["benchmarks.sampling={aime24: {n: 0}}"])


def _record(style: str, chat: bool | None = None) -> PromptRecord:
    bench = BenchmarkSet("one", [BenchmarkRow("What is 6*7?", ("42",), 1)], [], "inline", SamplingDefaults())
    return benchmark_records(bench, style, chat=chat)[0]


def test_prompt_styles_through_the_qwen_chat_template(tiny_qwen_dir: Path) -> None:
    from rl_div.models.loading import load_tokenizer

    tok = load_tokenizer(tiny_qwen_dir)
    text = "What is 6*7?\nPlease reason step by step, and put your final answer within \\boxed{}."

    def rendered(record: PromptRecord) -> str:  # the run's own template must be ignored for a benchmark record
        return tok.decode(templated_prompt_ids(tok, record, "IGNORED {prompt}", False))

    boxed = _record("boxed")
    assert boxed.meta["golds"] == ["42"] and boxed.meta["verifier"] == "benchmark_verify" and boxed.uid == "one:1"
    assert rendered(boxed).endswith(f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
    assert rendered(_record("plain")) == text
    assert rendered(_record("boxed", chat=False)) == text
    qwen = rendered(_record("qwen_math"))
    assert qwen == ("<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}."
                    "<|im_end|>\n<|im_start|>user\nWhat is 6*7?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("override", "message"), [
    ("benchmarks.prompt_style=qwen_maths", "benchmarks.prompt_style: unknown benchmark prompt style 'qwen_maths'; "
     "did you mean 'qwen_math'?"),
    ("benchmarks.sampling={aime2024: {n: 8}}", "benchmarks.sampling: unknown benchmark 'aime2024'; did you mean"),
    ("benchmarks.extractor=boxd", "benchmarks.extractor: unknown answer extractor 'boxd'; did you mean 'boxed'?"),
    ("benchmarks.user_files=[/nonexistent/b.yaml]", "benchmarks.user_files[0]: "),
])
def test_benchmark_names_are_checked_before_any_work(override: str, message: str) -> None:
    from rl_div.config import ConfigError
    from rl_div.config.checks import check_registry_names

    with pytest.raises(ConfigError, match=re.escape(message)):
        check_registry_names(load_config(None, [override]))


def test_guard_watches_the_configured_benchmark() -> None:
    """guard.benchmark feeds that benchmark's metrics and problems to the collapse guard: its pass@4
    falling below the base model's lower bound fires the passk rule while the held-out split is fine."""
    from rl_div.config import ConfigError
    from rl_div.config.checks import check_registry_names
    from rl_div.train.benchmark_eval import guard_view
    from rl_div.train.guard import CollapseGuard

    overrides = ["guard.enabled=true", "guard.rules=[passk]", "eval.benchmarks=[aime24]", "guard.benchmark=aime24"]
    cfg = load_config(None, overrides)
    held_out = ({"pass@1": 0.5, "pass@4": 0.9}, [{"n": 4, "c": 2}] * 20)
    base = ({"pass@1": 0.5, "pass@4": 0.9}, [{"n": 4, "c": 2}] * 20)  # each problem: pass@4 = 1
    collapsed = ({"pass@1": 0.0, "pass@4": 0.0}, [{"n": 4, "c": 0}] * 20)
    assert guard_view(cfg, held_out, {"aime24": base}) is base
    assert guard_view(load_config(None, overrides[:3]), held_out, {"aime24": base}) is held_out
    guard = CollapseGuard(cfg)
    guard.observe_eval(0, *guard_view(cfg, held_out, {"aime24": base}))
    assert guard.observe_eval(2, *guard_view(cfg, held_out, {"aime24": collapsed}))["guard/fired_passk"] == 1.0
    with pytest.raises(ConfigError, match="guard.benchmark: 'math500' is not in eval.benchmarks"):
        check_registry_names(load_config(None, [*overrides[:3], "guard.benchmark=math500"]))
