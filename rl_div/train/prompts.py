"""Prompt datasets: built-in tasks, JSONL / Parquet files and HF datasets (GSM8K / MATH style), and
the deterministic prompt stream the trainer draws batches from.

The prompt field holds a string or a chat conversation: a list of ``{"role", "content"}`` messages
(system / user / assistant turns ending with a user turn), rendered with the tokenizer's chat template
and its generation prompt. A prompt field of any other type refuses the dataset (one line, before Ray).
A malformed row (not an object, missing or empty prompt/answer field, a message list that is not
well-formed, unmatched answer regex) is skipped with a logged warning and counted; it never stops a run.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_div.config import Config, ConfigError, DataConfig
from rl_div.data import PromptRecord

log = logging.getLogger("rl_div")


@dataclass
class PromptSet:
    records: list[PromptRecord]
    skipped_rows: int = 0  # malformed rows
    too_long: int = 0  # prompts leaving no room to answer within the model's context (leave_room_to_answer)


def records_from_rows(rows: Iterable[Any], cfg: DataConfig, source: str) -> PromptSet:
    """Turn raw rows into PromptRecords scored by math_verify; bad rows are skipped and counted."""
    pattern = re.compile(cfg.answer_regex) if cfg.answer_regex else None
    records: list[PromptRecord] = []
    skipped = 0
    for i, row in enumerate(rows):
        problem = _row_problem(row, cfg, pattern)
        if problem is not None:
            skipped += 1
            if skipped <= 5:
                log.warning("skipping row %d of %s: %s", i, source, problem)
            continue
        answer = str(row[cfg.answer_field])
        if pattern is not None:
            answer = pattern.search(answer).group(1).strip()  # type: ignore[union-attr]
        prompt, messages = prompt_fields(row[cfg.prompt_field])
        records.append(PromptRecord(prompt=prompt, answer=answer, uid=f"{source}:{i}", meta={"extractor": "math"},
                                    messages=messages))
    if skipped:
        log.warning("%s: skipped %d malformed rows of %d", source, skipped, skipped + len(records))
    return PromptSet(records, skipped)


def _row_problem(row: Any, cfg: DataConfig, pattern: re.Pattern[str] | None) -> str | None:
    """Why a row can't be used, or None if it can."""
    if not isinstance(row, dict):
        return f"expected an object, got {type(row).__name__}"
    if cfg.prompt_field in row and isinstance(row[cfg.prompt_field], (list, tuple)):
        problem = message_list_problem(row[cfg.prompt_field])
        if problem is not None:
            return f"field {cfg.prompt_field!r}: {problem}"
    elif cfg.prompt_field in row and row[cfg.prompt_field] is not None and not isinstance(row[cfg.prompt_field], str):
        kind = type(row[cfg.prompt_field]).__name__
        raise ConfigError(f"data: field {cfg.prompt_field!r} holds a {kind} ({str(row[cfg.prompt_field])[:60]!r}); "
                          "a prompt is a string or a list of {role, content} messages (see docs/data.md)")
    for key in (cfg.prompt_field, cfg.answer_field):
        if key not in row:
            return f"missing field {key!r} (has {sorted(row)})"
        if row[key] is None or not str(row[key]).strip():
            return f"empty field {key!r}"
    if pattern is not None and not pattern.search(str(row[cfg.answer_field])):
        return f"answer does not match answer_regex {cfg.answer_regex!r}"
    return None


CHAT_ROLES = ("system", "user", "assistant")


def message_list_problem(messages: Any) -> str | None:
    """Why a chat-format prompt is unusable, or None: it must be a non-empty list of
    ``{"role": system|user|assistant, "content": non-empty string}`` ending with a user turn (the
    model answers it; the chat template opens the assistant turn)."""
    if not messages:
        return "an empty message list"
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            return f"message {n} is not a {{role, content}} object"
        if message["role"] not in CHAT_ROLES:
            return f"message {n} has role {message['role']!r} (expected one of {', '.join(CHAT_ROLES)})"
        if not isinstance(message["content"], str) or not message["content"].strip():
            return f"message {n} has no text content"
    if messages[-1]["role"] != "user":
        return f"the last message is a {messages[-1]['role']} turn; a prompt ends with a user turn"
    return None


def prompt_fields(value: str | Iterable[dict[str, str]]) -> tuple[str, tuple[dict[str, str], ...] | None]:
    """A prompt field (a string, or a well-formed message list: see message_list_problem) as
    PromptRecord's ``prompt`` and ``messages``: a string as it is with no messages, a conversation as
    its 'role: content' text and its turns."""
    if isinstance(value, str):
        return value, None
    messages = tuple({"role": m["role"], "content": m["content"]} for m in value)
    return chat_text(messages), messages


def chat_text(messages: Iterable[dict[str, str]]) -> str:
    """A conversation as readable text, one 'role: content' line per turn (logs, overlap checks)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def check_chat_rendering(records: Iterable[PromptRecord], model_path: str, cfg: Config) -> None:
    """Refuse (ConfigError) chat-format prompts the policy's tokenizer cannot render: no chat template,
    or model.use_chat_template=false. Loads the tokenizer only when some prompt is a conversation."""
    first = next((r for r in records if r.messages is not None), None)
    if first is None:
        return
    from rl_div.models.loading import format_chat, load_tokenizer

    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.model.trust_remote_code)
    try:
        format_chat(tokenizer, first.messages or (), cfg.model.use_chat_template)
    except ValueError as err:
        raise ConfigError(f"data: {err} (set model.path to a chat model, or give plain-string prompts)") from None


def read_jsonl(path: Path) -> tuple[list[Any], int]:
    """Rows of a JSONL file; lines that are not UTF-8 JSON are counted as bad, not fatal."""
    rows, bad = [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                rows.append(json.loads(raw.decode("utf-8")))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                bad += 1
                if bad <= 5:
                    log.warning("skipping line %d of %s: not UTF-8 JSON (%s)", n, path, err)
    return rows, bad


def load_prompts(cfg: DataConfig, split: str, seed: int) -> PromptSet:
    """Prompts for split 'train' or 'eval' from the configured source."""
    if cfg.source == "task":
        from rl_div.tasks import TASKS

        task = TASKS[cfg.task]
        n = cfg.num_train_prompts if split == "train" else cfg.num_eval_prompts
        return PromptSet(task.make_prompts(split, n, seed))
    path = cfg.path if split == "train" else (cfg.eval_path or cfg.path)
    if path is None:
        raise ValueError(f"data.source={cfg.source!r} needs data.path")
    limit = cfg.num_train_prompts if split == "train" else cfg.num_eval_prompts
    bad = 0
    if cfg.source == "jsonl":
        rows, bad = read_jsonl(Path(path))
    elif cfg.source == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = _hf_rows(cfg, path, split)
    prompt_set = records_from_rows(rows, cfg, f"{Path(path).name}[{split}]")
    prompt_set.skipped_rows += bad
    if shares_rows(cfg):
        # One file for both: the first num_eval_prompts rows are held out and never trained on.
        held_out = cfg.num_eval_prompts
        prompt_set.records = prompt_set.records[:held_out] if split == "eval" else prompt_set.records[held_out:]
    prompt_set.records = prompt_set.records[:limit]
    if not prompt_set.records:
        raise ValueError(f"no usable {split} prompts in {path} ({prompt_set.skipped_rows} rows skipped; "
                         "without data.eval_path the first data.num_eval_prompts rows are held out)")
    return prompt_set


def _hf_rows(cfg: DataConfig, path: str, split: str) -> list[Any]:
    """Rows of an HF dataset: a hub name (users with network), a ``save_to_disk`` folder of one
    dataset (every row, whatever the split), or one of several splits (DatasetDict) saved to disk."""
    import datasets

    hf_split = cfg.split if split == "train" else cfg.eval_split
    folder = Path(path)
    if folder.is_dir() and (folder / "dataset_info.json").exists():
        return list(datasets.load_from_disk(path))
    if folder.is_dir() and (folder / "dataset_dict.json").exists():
        splits = datasets.load_from_disk(path)
        if hf_split not in splits:
            raise ValueError(f"{path} has no split {hf_split!r} (has splits {sorted(splits)}; "
                             "set data.split / data.eval_split)")
        return list(splits[hf_split])
    return list(datasets.load_dataset(path, cfg.hf_config, split=hf_split))


def shares_rows(cfg: DataConfig) -> bool:
    """Whether training and evaluation read the same rows, so that the first num_eval_prompts rows
    must be held out: one file without data.eval_path, an HF dataset saved as a single split, or
    one HF split named for both."""
    if cfg.source == "task" or cfg.eval_path is not None:
        return False
    if cfg.source != "hf":
        return True
    assert cfg.path is not None
    folder = Path(cfg.path)
    single = folder.is_dir() and (folder / "dataset_info.json").exists()
    return single or cfg.split == cfg.eval_split


def load_splits(cfg: DataConfig, seed: int) -> tuple[PromptSet, PromptSet]:
    """Training prompts (drawn with ``seed``) and evaluation prompts (data.eval_seed); refuses a
    configuration whose evaluation prompts also appear in training, by prompt text, unless
    data.allow_eval_overlap is set (then the overlap is logged)."""
    train, held_out = load_prompts(cfg, "train", seed), load_prompts(cfg, "eval", cfg.eval_seed)
    trained_on = {r.prompt for r in train.records}
    shared = sorted({r.prompt for r in held_out.records if r.prompt in trained_on})
    if shared:
        what = (f"{len(shared)} of the {len(held_out.records)} evaluation prompts are also training prompts "
                f"(e.g. {shared[0][:80]!r})")
        if not cfg.allow_eval_overlap:
            raise ConfigError(f"data: {what}; held-out numbers would be inflated. Use disjoint data.path / "
                              "data.eval_path (or HF splits), or set data.allow_eval_overlap=true to accept it")
        log.warning("data.allow_eval_overlap: %s", what)
    return train, held_out


def model_context(model_path: str, trust_remote_code: bool) -> int | None:
    """The model's context length in tokens (its config's max_position_embeddings or the like), or None
    when the config names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    config = getattr(config, "text_config", None) or config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def leave_room_to_answer(prompt_set: PromptSet, prompt_tokens: Callable[[PromptRecord], int], max_new_tokens: int,
                         context: int | None, split: str) -> PromptSet:
    """Skip (log and count, in prompt_set.too_long) every prompt whose templated tokens
    (prompt_tokens(record)) leave fewer than max_new_tokens of the model's context: sampling it would
    overrun the context (or try to allocate its attention for a megabyte prompt). ValueError when no
    prompt is left."""
    if context is None:
        return prompt_set
    limit = context - max_new_tokens
    kept, lengths = [], []
    for record in prompt_set.records:
        n = prompt_tokens(record)
        if n <= limit:
            kept.append(record)
        else:
            lengths.append(n)
    if lengths:
        log.warning("%s prompts: skipped %d of %d whose templated prompt has over %d tokens, leaving no room for "
                    "rollout.max_new_tokens=%d within the model's context of %d tokens", split, len(lengths),
                    len(prompt_set.records), limit, max_new_tokens, context)
    if not kept:
        raise ConfigError(f"no {split} prompt fits: each has over {limit} tokens, leaving no room for "
                         f"rollout.max_new_tokens={max_new_tokens} within the model's context of {context} tokens")
    return PromptSet(kept, prompt_set.skipped_rows, prompt_set.too_long + len(lengths))


def prompts_that_fit(cfg: Config, tokenizer: Any, model_path: str, prompt_set: PromptSet, split: str) -> PromptSet:
    """leave_room_to_answer with the policy's tokenizer, template and context (the trainer's call)."""
    from rl_div.rollout.base import templated_prompt_ids

    def prompt_tokens(record: PromptRecord) -> int:
        return len(templated_prompt_ids(tokenizer, record, cfg.data.prompt_template, cfg.model.use_chat_template))

    context = model_context(model_path, cfg.model.trust_remote_code)
    return leave_room_to_answer(prompt_set, prompt_tokens, cfg.rollout.max_new_tokens, context, split)


class PromptStream:
    """Batches of prompts in a seeded order, reshuffled each epoch.

    The position (epoch, index) is all the state there is, so a resumed run continues exactly where
    the saved one stopped.
    """

    def __init__(self, records: list[PromptRecord], seed: int) -> None:
        if not records:
            raise ValueError("no prompts")
        self.records = records
        self.seed = seed
        self.epoch = 0
        self.index = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.records)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next_batch(self, size: int) -> list[PromptRecord]:
        batch = []
        while len(batch) < size:
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._epoch_order(self.epoch)
            batch.append(self.records[self._order[self.index]])
            self.index += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._epoch_order(self.epoch)
