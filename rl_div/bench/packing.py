"""``rl-div bench --sections packing``: the learner's update with train.packing against the padded
(trimmed) forward, on GSM8K-like response lengths.

The tiny Qwen-shaped model (rl_div.models.tiny_qwen: Qwen2 with grouped-query attention, tied
embeddings and Qwen's 151,936-entry vocabulary) is updated by two Learners built from the same
weights, one per variant, on one scored batch: 1 prompt of 40-160 tokens x 8 samples (the 151k-way
head makes each CPU update tens of seconds), responses drawn uniformly from 20 to 512 tokens, one
micro-batch of the 8 rows (padded to its longest row without packing). Rounds are interleaved
(padded, packed, padded, ...), each timing one ``Learner.update`` and sampling the peak RSS above the
round's start (rl_div.bench.common); min/median/max over rounds. Times are the timing thread's CPU
seconds (torch runs one thread: the work done, which a shared machine's load changes far less than
the wall clock; wall seconds are reported too). "At equal results": both variants'
log-probs / entropies of the batch and the first update's loss and gradient norm are reported with
their largest differences. The decoder alone (forward + backward of the hidden states, where packing
saves the padding) is timed per attention layout (padded; packed into sequences as long as the
longest row, the CPU default; every row in one sequence), to show which layout is fastest on CPU and
where the update's time goes: the chunked LM head costs the same both ways (it runs on the real
response tokens only in either), and at width 64 with a 151k vocabulary it is most of the update.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import torch

from rl_div.bench.common import peak_rss_delta, table
from rl_div.learner.packing import Packing

VARIANTS = ("padded", "packed")
# the decoder alone, per attention layout: padded rows; packed into sequences as long as the longest
# row (the CPU default: sdpa with a block-diagonal mask); every row in one sequence (varlen's layout,
# which a dense mask pays for with the square of the micro-batch's tokens)
DECODER_LAYOUTS = {"padded": None, "packed": Packing(None), "packed_one_sequence": Packing(0)}


def gsm8k_like_scored_batch(vocab: int, prompts: int = 2, group: int = 8, seed: int = 0) -> Any:
    """A RolloutBatch of prompts x group rows: left-padded prompts of 40-160 real tokens, responses of
    20-512 (uniform), random token ids, signed advantages, behaviour log-probs 0."""
    from rl_div.data import PromptRecord, RolloutBatch

    rows = prompts * group
    g = torch.Generator().manual_seed(seed)
    p_real = torch.randint(40, 161, (prompts,), generator=g).repeat_interleave(group)
    t_real = torch.randint(20, 513, (rows,), generator=g)
    p_len, t_len = int(p_real.max()), int(t_real.max())
    prompt_mask = (torch.arange(p_len)[None, :] >= (p_len - p_real)[:, None]).long()
    response_mask = (torch.arange(t_len)[None, :] < t_real[:, None]).long()
    batch = RolloutBatch(
        prompt_ids=torch.randint(4, vocab, (rows, p_len), generator=g) * prompt_mask, prompt_mask=prompt_mask,
        response_ids=torch.randint(4, vocab, (rows, t_len), generator=g) * response_mask,
        response_mask=response_mask, behavior_logprobs=torch.zeros(rows, t_len),
        group_index=torch.arange(rows) // group, truncated=torch.zeros(rows, dtype=torch.bool),
        prompts=[PromptRecord("p", "a")] * rows, response_texts=[""] * rows)
    batch.advantages = torch.linspace(-1.0, 1.0, rows)
    return batch


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def bench_packing(rounds: int = 3, prompts: int = 1, micro: int = 8) -> dict[str, Any]:
    from rl_div.config import load_config
    from rl_div.learner.single import Learner
    from rl_div.models.tiny_qwen import tiny_qwen_model

    with tempfile.TemporaryDirectory() as tmp:
        path = str(tiny_qwen_model(os.path.expanduser("~/.cache/rl_div/bootstrap")))
        base = [f"model.path={path}", f"run.output_dir={tmp}", "run.torch_threads=1", "algo=grpo",
                f"train.micro_batch_size={micro}", "train.lr=1e-5", "rollout.max_new_tokens=512"]
        learners = {v: Learner(load_config(None, [*base, f"train.packing={v == 'packed'}"]), path) for v in VARIANTS}
    params = sum(p.numel() for p in learners["padded"].model.parameters())
    batch = gsm8k_like_scored_batch(learners["padded"].model.config.vocab_size, prompts)
    stats = {v: learners[v].policy_stats(batch) for v in VARIANTS}
    batch.old_logprobs, batch.old_entropy = stats["padded"]["old_logprobs"], stats["padded"]["old_entropy"]
    micros = [batch.select(list(range(i, min(i + micro, batch.size)))) for i in range(0, batch.size, micro)]
    times: dict[str, dict[str, list[float]]] = {v: {"update_cpu_s": [], "update_s": [], "peak_mb": []}
                                                for v in VARIANTS}
    decoder: dict[str, list[float]] = {v: [] for v in DECODER_LAYOUTS}
    first: dict[str, dict[str, float]] = {}
    load_before = list(os.getloadavg())
    for _ in range(rounds):
        for v in VARIANTS:
            learner = learners[v]
            with peak_rss_delta() as mem:
                start, cpu = time.perf_counter(), time.thread_time()
                metrics = learner.update(batch)
                times[v]["update_cpu_s"].append(time.thread_time() - cpu)
                times[v]["update_s"].append(time.perf_counter() - start)
            times[v]["peak_mb"].append(mem["peak_private_delta"] / 2**20)
            first.setdefault(v, metrics)
        for name, layout in DECODER_LAYOUTS.items():
            cpu = time.thread_time()
            for m in micros:  # the decoder's share: hidden states only, summed, backpropagated
                decoder_pass(learners["padded"].model, m, layout)
            decoder[name].append(time.thread_time() - cpu)
    real = int(batch.prompt_mask.sum() + batch.response_mask.sum())
    padded = sum(m.size * (int(m.prompt_mask.any(0).sum()) + int(m.response_mask.any(0).sum())) for m in micros)
    out: dict[str, Any] = {
        "parameters": params, "rows": batch.size, "micro_batch": micro, "rounds": rounds, "real_tokens": real,
        "padded_tokens": padded, "loadavg_before": load_before, "loadavg_after": list(os.getloadavg()),
        "max_logprob_diff": float((stats["packed"]["old_logprobs"] - stats["padded"]["old_logprobs"]).abs().max()),
        "max_entropy_diff": float((stats["packed"]["old_entropy"] - stats["padded"]["old_entropy"]).abs().max()),
        "first_update": {v: {k: first[v][k] for k in ("loss/total", "train/grad_norm")} for v in VARIANTS},
    }
    for v in VARIANTS:
        out[v] = {k: _spread(vals) for k, vals in times[v].items()}
    out["decoder_cpu_s"] = {name: _spread(vals) for name, vals in decoder.items()}
    for k in ("update_cpu_s", "update_s", "peak_mb"):
        out[f"median_{k}_packed_vs_padded"] = out["packed"][k]["median"] / max(out["padded"][k]["median"], 1e-12)
    for name in DECODER_LAYOUTS:
        ratio = out["decoder_cpu_s"][name]["median"] / out["decoder_cpu_s"]["padded"]["median"]
        out[f"median_decoder_{name}_vs_padded"] = ratio
    return out


def decoder_pass(model: Any, micro: Any, packing: Packing | None) -> None:
    """Forward + backward of the policy's decoder alone on one micro-batch, padded or packed (the LM
    head's work left out)."""
    from rl_div.learner.forward import _padded_or_packed
    from rl_div.metrics.lm_head import split_lm_head

    parts = split_lm_head(model)
    assert parts is not None
    ids = torch.cat([micro.prompt_ids, micro.response_ids], dim=1)
    attention = torch.cat([micro.prompt_mask, micro.response_mask], dim=1)
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    keep = attention.bool().any(0)  # the trimmed columns, as policy_forward keeps them
    ids, attention, position_ids = ids[:, keep], attention[:, keep], position_ids[:, keep]
    hidden = _padded_or_packed(lambda **kw: parts[0](**kw).last_hidden_state, model, ids, attention,
                               position_ids, packing)
    (hidden * attention[..., None]).sum().backward()
    model.zero_grad(set_to_none=True)


def print_packing(r: dict[str, Any]) -> None:
    print(f"\npacking: Learner.update of {r['rows']} rows (micro-batches of {r['micro_batch']}), tiny Qwen "
          f"{r['parameters'] / 1e6:.1f}M parameters, {r['real_tokens']} real tokens, {r['padded_tokens']} computed "
          f"padded; {r['rounds']} interleaved rounds (load average {r['loadavg_before'][0]:.1f} -> "
          f"{r['loadavg_after'][0]:.1f})")
    rows = [[v, k, r[v][k]["min"], r[v][k]["median"], r[v][k]["max"]]
            for k in ("update_cpu_s", "update_s", "peak_mb") for v in VARIANTS]
    rows += [[name, "decoder_cpu_s", d["min"], d["median"], d["max"]] for name, d in r["decoder_cpu_s"].items()]
    print(table(["variant", "measure", "min", "median", "max"], rows))
    one = r["median_decoder_packed_one_sequence_vs_padded"]
    print(f"packed / padded (median): update CPU x{r['median_update_cpu_s_packed_vs_padded']:.2f} (wall "
          f"x{r['median_update_s_packed_vs_padded']:.2f}), decoder CPU "
          f"x{r['median_decoder_packed_vs_padded']:.2f} (one sequence x{one:.2f}), "
          f"peak memory x{r['median_peak_mb_packed_vs_padded']:.2f}; "
          f"max |logp diff| {r['max_logprob_diff']:.2g}, max |entropy diff| {r['max_entropy_diff']:.2g}; "
          f"first update loss/grad norm {r['first_update']}")
