"""``rl-div bench --sections trim``: micro-batches trimmed to their own longest row against the
batch's full padded width, on GSM8K-like lengths.

A batch of 64 rows (16 prompts x 8 samples) has prompts of 40-160 tokens and responses of 20-400
(GSM8K with a chat template and chain-of-thought answers, on a geometric-ish spread), padded to the
batch's longest of each. The learner's micro-batches (8 consecutive rows) are each forwarded and
backpropagated both ways on the same model: ``policy_forward`` (trimmed) and the same forward over
every column (``_forward_columns`` on the full width, the code before trimming). Times side by side in
one run, min/median/max over repeats; the padded tokens each way say where the saving comes from.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import torch

from rl_div.bench.common import table


def gsm8k_like_batch(vocab: int, rows: int = 64, group: int = 8, seed: int = 0) -> Any:
    from rl_div.data import PromptRecord, RolloutBatch

    g = torch.Generator().manual_seed(seed)
    p_real = torch.randint(40, 161, (rows // group,), generator=g).repeat_interleave(group)
    t_real = (20 + torch.distributions.Exponential(1 / 120).sample((rows,)).clamp(max=380)).long()
    p_len, t_len = int(p_real.max()), int(t_real.max())
    prompt_mask = (torch.arange(p_len)[None, :] >= (p_len - p_real)[:, None]).long()
    response_mask = (torch.arange(t_len)[None, :] < t_real[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(4, vocab, (rows, p_len), generator=g) * prompt_mask, prompt_mask=prompt_mask,
        response_ids=torch.randint(4, vocab, (rows, t_len), generator=g) * response_mask,
        response_mask=response_mask, behavior_logprobs=torch.zeros(rows, t_len),
        group_index=torch.arange(rows) // group, truncated=torch.zeros(rows, dtype=torch.bool),
        prompts=[PromptRecord("p", "a")] * rows, response_texts=[""] * rows)


def bench_trim(repeats: int = 3, micro: int = 8, size: str = "demo") -> dict[str, Any]:
    from rl_div.bench.sync import bench_model
    from rl_div.learner.forward import _Columns, _forward_columns, padding_columns, policy_forward
    from rl_div.models.loading import load_policy

    with tempfile.TemporaryDirectory() as tmp:
        path, params = bench_model(tmp, size)
        model, tok = load_policy(path, dtype="float32")
    batch = gsm8k_like_batch(len(tok))
    micros = [batch.select(list(range(i, min(i + micro, batch.size)))) for i in range(0, batch.size, micro)]

    def trimmed() -> None:
        for m in micros:
            logp, ent, _ = policy_forward(model, m, 256)
            (logp.sum() + ent.sum()).backward()

    def full() -> None:
        for m in micros:
            logp, ent, _ = _forward_columns(model, _Columns(m.prompt_ids, m.prompt_mask, m.response_ids,
                                                            m.response_mask), 256, False, 1.0)
            (logp.sum() + ent.sum()).backward()

    width = batch.prompt_ids.shape[1] + batch.response_ids.shape[1]
    kept = [(m.prompt_ids.shape[1] - padding_columns(m.prompt_mask, m.response_mask)[0]
             + padding_columns(m.prompt_mask, m.response_mask)[1]) * m.size for m in micros]
    out: dict[str, Any] = {"parameters": params, "rows": batch.size, "micro_batch": micro, "repeats": repeats,
                           "real_tokens": int(batch.prompt_mask.sum() + batch.response_mask.sum()),
                           "padded_tokens_full": width * batch.size, "padded_tokens_trimmed": sum(kept),
                           "loadavg_before": list(os.getloadavg())}
    for name, fn in (("full_width", full), ("trimmed", trimmed)):
        times = []
        for _ in range(repeats):
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[name] = {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}
    out["median_trimmed_vs_full"] = out["trimmed"]["median_s"] / out["full_width"]["median_s"]
    out["loadavg_after"] = list(os.getloadavg())
    return out


def print_trim(r: dict[str, Any]) -> None:
    print(f"\ntrim: forward+backward of {r['rows']} rows in micro-batches of {r['micro_batch']}, "
          f"{r['parameters'] / 1e6:.1f}M parameters, {r['real_tokens']} real tokens; padded tokens computed: "
          f"full width {r['padded_tokens_full']}, trimmed {r['padded_tokens_trimmed']} "
          f"(load average {r['loadavg_before'][0]:.1f} -> {r['loadavg_after'][0]:.1f})")
    print(table(["variant", "min s", "median s", "max s"],
                [[n, r[n]["min_s"], r[n]["median_s"], r[n]["max_s"]] for n in ("full_width", "trimmed")]))
    print(f"trimmed / full width (median): x{r['median_trimmed_vs_full']:.2f}")
