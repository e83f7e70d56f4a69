"""Pretrain a tiny base model for a task, and measure how diverse and how good it is.

The base model of the demo cannot be downloaded, so it is made here: a tiny Llama with a
character-level tokenizer, trained (next-token loss on the completion tokens only) on prompts of
the task's train split paired with noisy demonstrations from the task's habit prior. The result is
cached under ``out_dir`` by a hash of every argument and the task's version, written atomically
(temporary directory, then rename) so a crashed or concurrent run never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl_div.data import PromptRecord
from rl_div.metrics.passk import pass_at_k
from rl_div.models.loading import build_char_tokenizer, format_prompt, load_policy, make_tiny_llama, save_policy
from rl_div.run.checkpoint import build_dir_atomic
from rl_div.tasks import get_task
from rl_div.tasks.base import Split, Task

META_FILE = "bootstrap.json"
_FORMAT = 1  # bump when this module changes what a given set of arguments produces


def bootstrap_key(task: Task, args: dict[str, Any]) -> str:
    """A short stable hash of the arguments, the task's name and version, and this module's format."""
    blob = json.dumps({"task": task.name, "version": task.version, "format": _FORMAT, **args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def bootstrap_base_model(
    task_name: str,
    out_dir: str | os.PathLike[str],
    *,
    steps: int = 300,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup_steps: int = 20,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 256,
    torch_threads: int | None = 2,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Train (or find cached) a tiny base model for ``task_name``; return its directory.

    The directory is ``out_dir/<task>-<hash of the arguments>`` and holds a ``save_pretrained``
    model (safetensors) and tokenizer, loadable with :func:`rl_div.models.loading.load_policy`, plus
    ``bootstrap.json`` (arguments and training log). Deterministic given ``seed``.
    ``torch_threads`` caps torch's intra-op threads while training (restored afterwards).
    """
    task = get_task(task_name)
    model_kwargs = {
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
    }
    args = {
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "warmup_steps": warmup_steps,
        **model_kwargs,
    }
    root = Path(out_dir)
    final = root / f"{task.name}-{bootstrap_key(task, args)}"
    if (final / META_FILE).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    say(f"bootstrap: training a tiny base model for {task.name!r} ({steps} steps) -> {final}")

    previous_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        t0 = time.perf_counter()
        model, tokenizer, history = _train(task, args, model_kwargs, say)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous_threads)

    meta = {
        "task": task.name,
        "task_version": task.version,
        "args": args,
        "train_seconds": round(wall, 2),
        "final_loss": history[-1][1] if history else None,
        "loss_history": history,
    }

    def fill(tmp: Path) -> None:
        save_policy(model, tokenizer, tmp)
        # The meta file is written last: its presence is what marks a finished cache entry.
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))

    build_dir_atomic(final, fill, META_FILE)
    say(f"bootstrap: done in {wall:.1f}s, final loss {meta['final_loss']}")
    return final


def _train(
    task: Task, args: dict[str, Any], model_kwargs: dict[str, int], say: Callable[[str], None]
) -> tuple[torch.nn.Module, Any, list[tuple[int, float]]]:
    tokenizer = build_char_tokenizer(task.alphabet)
    model = make_tiny_llama(tokenizer, seed=args["seed"], **model_kwargs)
    model.train()
    rng = random.Random(args["seed"])
    # Successive shuffles of the train split (every prompt appears when the split is smaller).
    train_records = task.make_prompts("train", 2048, seed=args["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=args["lr"], weight_decay=0.0, betas=(0.9, 0.98))
    steps, warmup = args["steps"], max(1, args["warmup_steps"])

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    history: list[tuple[int, float]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args["seed"])
        for step in range(steps):
            batch = [rng.choice(train_records) for _ in range(args["batch_size"])]
            demos = [task.sample_demonstration(r, rng) for r in batch]
            input_ids, attention_mask, labels = _supervised_batch(tokenizer, batch, demos)
            loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if step % 50 == 0 or step == steps - 1:
                value = loss.item()
                history.append((step, round(value, 4)))
                say(f"bootstrap: step {step:4d} loss {value:.4f}")
    model.eval()
    return model, tokenizer, history


def _supervised_batch(
    tokenizer: Any, records: list[PromptRecord], completions: list[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``<bos> prompt completion <eos>`` rows; labels are -100 except on the
    completion and its eos, so the model learns to answer, not to write prompts. The prompt is
    encoded exactly as a rollout encodes it (format_prompt, then the tokenizer's specials)."""
    rows, targets = [], []
    for rec, comp in zip(records, completions, strict=True):
        p = tokenizer(format_prompt(tokenizer, rec.prompt))["input_ids"]
        c = tokenizer(comp, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p + c)
        targets.append([-100] * len(p) + c)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, : len(t)] = torch.tensor(t)
        mask[i, : len(r)] = 1
    return ids, mask, labels


# ----- measurement -----------------------------------------------------------------------------------


@torch.no_grad()
def sample_completions(
    model: Any,
    tokenizer: Any,
    records: list[PromptRecord],
    n_samples: int,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    rows_per_call: int = 2048,
) -> list[list[str]]:
    """``n_samples`` completions per record from plain ancestral sampling (temperature, no top-k or
    top-p truncation), decoded without special tokens. Returns one list per record."""
    texts = [format_prompt(tokenizer, r.prompt) for r in records for _ in range(n_samples)]
    out: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in range(0, len(texts), rows_per_call):
            enc = tokenizer(texts[s : s + rows_per_call], return_tensors="pt", padding=True)
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
            out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return [out[i * n_samples : (i + 1) * n_samples] for i in range(len(records))]


def score_samples(task: Task, records: list[PromptRecord], samples: list[list[str]]) -> dict[str, Any]:
    """pass@k (k = 1, 2, 4, ..., n), format validity, distinct correct answers per prompt, and the
    fraction of prompts whose correct answers are a minority of the samples (room for RL)."""
    n = len(samples[0])
    ks = [2**i for i in range(int(math.log2(n)) + 1)]
    passk = {k: 0.0 for k in ks}
    valid = distinct = minority = 0.0
    for rec, comps in zip(records, samples, strict=True):
        correct = [task.verify(c, rec) == 1.0 for c in comps]
        answers = [task.extract(c) for c in comps]
        c = sum(correct)
        for k in ks:
            passk[k] += float(pass_at_k(n, c, k))
        valid += sum(a is not None for a in answers) / n
        distinct += len({a for a, ok in zip(answers, correct, strict=True) if ok})
        minority += c < n / 2
    m = len(records)
    return {
        "n_prompts": m,
        "n_samples": n,
        "pass_at_k": {k: v / m for k, v in passk.items()},
        "validity": valid / m,
        "distinct_correct": distinct / m,
        "minority_fraction": minority / m,
    }


def measure(
    path_or_model: str | os.PathLike[str] | tuple[Any, Any],
    task_name: str,
    *,
    n_prompts: int = 32,
    n_samples: int = 64,
    seed: int = 0,
    split: Split = "eval",
) -> dict[str, Any]:
    """Sample a (base) model on held-out prompts and score it; adds ``generate_seconds``."""
    task = get_task(task_name)
    model, tokenizer = path_or_model if isinstance(path_or_model, tuple) else load_policy(path_or_model)
    records = task.make_prompts(split, n_prompts, seed=seed)
    t0 = time.perf_counter()
    samples = sample_completions(model, tokenizer, records, n_samples, max_new_tokens=task.max_new_tokens, seed=seed)
    result = score_samples(task, records, samples)
    result["generate_seconds"] = round(time.perf_counter() - t0, 2)
    return result
