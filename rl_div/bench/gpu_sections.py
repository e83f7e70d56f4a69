"""The checks of the GPU check (rl_div.bench.gpu_check), each a function Env -> table rows.

Every check runs rl_div's own code (the learner, its chunked head, the offload, FSDP2, the CUDA IPC
payload and the engine's loader) and compares it with an independent computation: float32 for
bf16 autocast, the full logits for the chunked head, the single learner for FSDP2 and the offload,
the sender's weights for the IPC round trip.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rl_div.data import PromptRecord, RolloutBatch

CONFIG_SNAPSHOT = Path(__file__).with_name("gpu_check_config.json")
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16, per GPU


@dataclass
class Row:
    """One line of the table: a measured value against what passes."""

    check: str
    value: str
    threshold: str
    passed: bool | None  # None: not applicable here (e.g. CUDA-only on CPU)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def result(self) -> str:
        return {True: "PASS", False: "FAIL", None: "n/a"}[self.passed]


@dataclass
class Env:
    """What every check gets: device, model folder, sizes, and the config builder."""

    device: torch.device
    model_path: str
    size: str
    dims: dict[str, int]
    work: dict[str, int]
    out: Path

    def config(self, **overrides: Any) -> Any:
        """The learner's config: the snapshot's defaults with ``section.field`` overrides."""
        return build_config(self.model_path, self.device, overrides)


def build_config(model_path: str, device: torch.device, overrides: dict[str, Any]) -> Any:
    data = json.loads(CONFIG_SNAPSHOT.read_text())
    settings = {"model.path": model_path, "train.num_gpus": int(device.type == "cuda"), "run.torch_threads": 2,
                "train.lr": 1e-5, **overrides}
    for key, value in settings.items():
        section, name = key.split(".")
        data[section][name] = value
    try:
        from rl_div.config import Config
    except ImportError:  # no pydantic on this machine: the same values, read as attributes
        return AttrDict.wrap(data)
    return Config.model_validate(data)


class AttrDict(dict):
    """A config section without pydantic: ``cfg.train.lora.enabled`` as attributes, at every depth (nested
    sections such as train.lora and guard.controller), while dict-valued fields (``algo.loss_params``)
    still work as the dicts the learner reads with ``.get`` and ``**``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def wrap(cls, value: Any) -> Any:
        return cls({k: cls.wrap(v) for k, v in value.items()}) if isinstance(value, dict) else value


def config_snapshot() -> dict[str, Any]:
    """The full Config defaults as JSON data (what CONFIG_SNAPSHOT holds)."""
    from rl_div.config import Config

    return Config().model_dump(mode="json")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


def synthetic_batch(env: Env, seed: int = 1) -> RolloutBatch:
    """rows x (prompt + response) random tokens, left-padded prompts, right-padded responses of
    uneven length, groups of 4, signed advantages."""
    w, vocab = env.work, env.dims["vocab_size"]
    rows, p_len, t_len = w["rows"], w["prompt"], w["response"]
    g = torch.Generator().manual_seed(seed)
    p_real = torch.randint(p_len // 2, p_len + 1, (rows,), generator=g)
    t_real = torch.randint(t_len // 4, t_len + 1, (rows,), generator=g)
    prompt_mask = (torch.arange(p_len)[None, :] >= (p_len - p_real)[:, None]).long()
    response_mask = (torch.arange(t_len)[None, :] < t_real[:, None]).long()
    return RolloutBatch(
        prompt_ids=torch.randint(3, vocab, (rows, p_len), generator=g) * prompt_mask, prompt_mask=prompt_mask,
        response_ids=torch.randint(3, vocab, (rows, t_len), generator=g) * response_mask,
        response_mask=response_mask, behavior_logprobs=torch.zeros(rows, t_len),
        group_index=torch.arange(rows) // 4, truncated=torch.zeros(rows, dtype=torch.bool),
        prompts=[PromptRecord(prompt=f"p{i // 4}", answer="0") for i in range(rows)], response_texts=[""] * rows,
        advantages=torch.randn(rows, generator=g))


def scored(learner: Any, batch: RolloutBatch) -> RolloutBatch:
    stats = learner.policy_stats(batch)
    batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    return batch


def max_param_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].float().cpu() - b[k].float().cpu()).abs().max()) for k in b)


def learner_for(env: Env, **overrides: Any) -> Any:
    from rl_div.learner.single import Learner

    return Learner(env.config(**{"train.micro_batch_size": env.work["micro"], **overrides}), env.model_path)


# ---- precision ---------------------------------------------------------------------------------------
def check_bf16_vs_fp32(env: Env) -> list[Row]:
    """bf16 autocast log-probs / entropies against float32 on a sharpened model (head x 4: peaked
    next-token distributions, as a trained model has; a random one is near-uniform)."""
    from rl_div.learner.forward import policy_forward

    learner = learner_for(env)
    batch = synthetic_batch(env)
    mask = batch.response_mask.bool().to(env.device)
    norm = learner.model.model.norm.weight  # logits = head(norm(h)): scaling it scales the logits exactly
    start = norm.detach().clone()
    out: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
    for scale in (4.0, 16.0, 64.0, 256.0):  # sharpen until the fp32 entropy is that of a trained model
        with torch.no_grad():
            norm.copy_(start * scale)
            out[torch.float32] = policy_forward(learner.model, batch, 256)[:2]
        if float(out[torch.float32][1][mask].mean()) < 3.0:
            break
    with torch.no_grad(), torch.autocast(env.device.type, dtype=torch.bfloat16):
        out[torch.bfloat16] = policy_forward(learner.model, batch, 256)[:2]
    logp_err = (out[torch.bfloat16][0] - out[torch.float32][0]).abs()[mask]
    ent_err = (out[torch.bfloat16][1] - out[torch.float32][1]).abs()[mask]
    entropy = float(out[torch.float32][1][mask].mean())
    return [Row("bf16 vs fp32 log-prob error", f"mean {logp_err.mean():.2e}, max {logp_err.max():.2e}",
                "mean < 0.05", bool(logp_err.mean() < 0.05), {"fp32_entropy_mean": entropy, "head_scale": scale}),
            Row("bf16 vs fp32 entropy error", f"mean {ent_err.mean():.2e}, max {ent_err.max():.2e} "
                f"(fp32 entropy {entropy:.2f} nats)", "mean < 0.05", bool(ent_err.mean() < 0.05))]


# ---- the chunked LM head ----------------------------------------------------------------------------
def _timed_peak(env: Env, fn: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """fn()'s result, seconds and extra peak memory (GiB, CUDA only)."""
    cuda = env.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    synchronize(env.device)
    started = time.perf_counter()
    result = fn()
    synchronize(env.device)
    seconds = time.perf_counter() - started
    return result, seconds, gib(torch.cuda.max_memory_allocated() - base) if cuda else None


def check_chunked_head(env: Env) -> list[Row]:
    """head_logprobs_and_entropy (chunked, recomputing backward) against full float32 logits, at the
    model's vocabulary: values, gradients w.r.t. the hidden states, time and extra peak memory."""
    from rl_div.metrics.lm_head import head_logprobs_and_entropy

    g = torch.Generator(device=env.device).manual_seed(0)
    n, d, v = env.work["head_rows"], env.dims["hidden_size"], env.dims["vocab_size"]
    hidden0 = torch.randn(n, d, device=env.device, generator=g)
    weight = torch.randn(v, d, device=env.device, generator=g) * d ** -0.5 * 4
    ids = torch.randint(0, v, (n,), device=env.device, generator=g)

    def chunked() -> tuple[torch.Tensor, ...]:
        hidden = hidden0.clone().requires_grad_(True)
        logp, ent = head_logprobs_and_entropy(hidden, weight, ids, chunk_rows=256)
        (logp.sum() + 0.1 * ent.sum()).backward()
        return logp.detach(), ent.detach(), hidden.grad

    def full() -> tuple[torch.Tensor, ...]:
        hidden = hidden0.clone().requires_grad_(True)
        logq = torch.log_softmax(hidden @ weight.T, dim=-1)
        logp, ent = logq.gather(-1, ids[:, None]).squeeze(-1), -(logq.exp() * logq).sum(-1)
        (logp.sum() + 0.1 * ent.sum()).backward()
        return logp.detach(), ent.detach(), hidden.grad

    a, t_chunk, m_chunk = _timed_peak(env, chunked)
    b, t_full, m_full = _timed_peak(env, full)
    err = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    details = {"chunked_s": t_chunk, "full_s": t_full, "chunked_peak_gib": m_chunk, "full_peak_gib": m_full}
    rows = [Row(f"chunked head vs full logits (V={v}, {n} rows)", f"max error {err:.2e} (logp, entropy, grad)",
                "< 1e-3", err < 1e-3, details),
            Row("chunked head time", f"{t_chunk:.3f} s vs full {t_full:.3f} s", "reported", None, details)]
    if m_chunk is not None and m_full is not None:
        rows.append(Row("chunked head extra peak memory", f"{m_chunk} GiB vs full {m_full} GiB", "below full",
                        m_chunk < m_full, details))
    return rows


def check_head_precision(env: Env) -> list[Row]:
    """The chunked head with model.dtype bfloat16 (bf16 operands, float32 accumulation and softmax
    statistics, rl_div.metrics.lm_head "Precision") against the float32 head: log-prob, entropy and
    gradient error, and forward + backward time of each, at the model's vocabulary."""
    from rl_div.metrics.lm_head import head_logprobs_and_entropy

    g = torch.Generator(device=env.device).manual_seed(0)
    n, d, v = env.work["head_rows"], env.dims["hidden_size"], env.dims["vocab_size"]
    hidden0 = torch.randn(n, d, device=env.device, generator=g).bfloat16()  # the decoder's bf16 output
    weight = torch.randn(v, d, device=env.device, generator=g) * d ** -0.5 * 4  # float32 master weights
    ids = torch.randint(0, v, (n,), device=env.device, generator=g)

    def head(bf16: bool) -> tuple[torch.Tensor, ...]:
        hidden, w = hidden0.float().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=bf16):
            logp, ent = head_logprobs_and_entropy(hidden, w, ids, chunk_rows=256)
        (logp.sum() + 0.1 * ent.sum()).backward()
        return logp.detach(), ent.detach(), hidden.grad, w.grad

    head(True), head(False)  # warm-up (kernels, allocator)
    low, t_low, _ = _timed_peak(env, lambda: head(True))
    ref, t_ref, _ = _timed_peak(env, lambda: head(False))
    logp_err, ent_err = ((low[i] - ref[i]).abs() for i in (0, 1))
    grad_err = max(float((a - b).norm() / b.norm()) for a, b in zip(low[2:], ref[2:], strict=True))
    details = {"bf16_s": t_low, "fp32_s": t_ref, "speedup": t_ref / t_low, "grad_rel_err": grad_err}
    return [Row(f"bf16 vs fp32 chunked head (V={v}, {n} rows)", f"logp mean {logp_err.mean():.2e} max "
                f"{logp_err.max():.2e}, entropy mean {ent_err.mean():.2e}, grad rel {grad_err:.2e}",
                "logp, entropy mean < 0.02, grad < 0.02",
                bool(logp_err.mean() < 0.02 and ent_err.mean() < 0.02 and grad_err < 0.02), details),
            Row("bf16 vs fp32 chunked head time (fwd + bwd)", f"{t_low:.3f} s vs {t_ref:.3f} s "
                f"({t_ref / t_low:.1f}x)", "bf16 faster (CUDA)", t_low < t_ref if env.device.type == "cuda" else None,
                details)]


# ---- one update: throughput, MFU, kernel profile, memory after the release ---------------------------
def check_update(env: Env) -> list[Row]:
    from torch.profiler import ProfilerActivity, profile

    learner = learner_for(env, **{"model.dtype": "bfloat16" if env.device.type == "cuda" else "float32"})
    batch = scored(learner, synthetic_batch(env))
    n_params = sum(p.numel() for p in learner.model.parameters())
    tokens = int(batch.prompt_mask.sum() + batch.response_mask.sum())
    padded = batch.prompt_mask.numel() + batch.response_mask.numel()
    learner.update(batch)  # warm-up (allocator, kernels); the measured update follows
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if env.device.type == "cuda" else [])
    synchronize(env.device)
    started = time.perf_counter()
    with profile(activities=activities) as prof:
        metrics = learner.update(scored(learner, batch))
        synchronize(env.device)
    seconds = time.perf_counter() - started
    key = "self_device_time_total" if env.device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)[:8]
    kernels = [(e.key, round(getattr(e, key, 0) / 1e3, 1)) for e in events]
    c = learner.model.config
    flops = 6 * n_params * padded + 12 * c.num_hidden_layers * c.hidden_size * batch.prompt_ids.shape[1] * padded
    name = torch.cuda.get_device_name() if env.device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    mfu = flops / seconds / (peak * 1e12) if peak else None
    details = {"tokens": tokens, "padded_tokens": padded, "seconds": seconds, "kernels_ms": kernels,
               "optimizer_steps": metrics.get("train/optimizer_steps")}
    rows = [Row("update throughput", f"{tokens / seconds:,.0f} real tokens/s ({padded / seconds:,.0f} padded)",
                "finite loss, >= 1 optimizer step",
                metrics.get("train/optimizer_steps", 0) >= 1 and metrics.get("faults/nonfinite_loss", 0) == 0, details),
            Row("update MFU (incl. policy_stats)", f"{mfu:.1%}" if mfu is not None else "no peak known",
                "reported", None, {"top_kernel": kernels[0] if kernels else None})]
    if env.device.type == "cuda":
        weights = sum(p.numel() * p.element_size() for p in learner.model.parameters())
        state = sum(t.numel() * t.element_size() for s in learner.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t) and t.is_cuda)
        held = torch.cuda.memory_allocated()
        rows.append(Row("memory held after the release", f"{gib(held)} GiB (weights {gib(weights)}, AdamW "
                        f"{gib(state)})", "<= weights + AdamW + 5%", held <= 1.05 * (weights + state)))
    return rows


def check_offload(env: Env) -> list[Row]:
    """train.offload_optimizer: state on the host between updates; two updates equal the plain learner's."""
    plain, off = learner_for(env), learner_for(env, **{"train.offload_optimizer": True})
    for seed in (1, 2):
        for learner in (plain, off):
            learner.update(scored(learner, synthetic_batch(env, seed)))
    on_host = all(t.device.type == "cpu" for s in off.optimizer.state.values() for t in s.values()
                  if torch.is_tensor(t) and t.dim() > 0)
    pinned = all(t.is_pinned() for s in off.optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() > 0) if env.device.type == "cuda" else None
    diff = max_param_diff(off.model.state_dict(), plain.model.state_dict())
    return [Row("optimizer offload: state on the host", f"on host {on_host}, pinned {pinned}", "on host",
                on_host and pinned is not False),
            Row("optimizer offload: 2 updates vs no offload", f"max weight diff {diff:.1e}", "< 1e-5", diff < 1e-5)]


# ---- FSDP2 at world size 1 against the single learner --------------------------------------------------
def check_fsdp2_world1(env: Env) -> list[Row]:
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from rl_div.learner.fsdp2 import ShardedLearner
    from rl_div.learner.plan import plan_batch
    from rl_div.learner.update_loop import run_plans

    over = {"train.micro_batch_size": env.work["micro"], "train.strategy": "fsdp2", "train.num_learners": 1}
    cfg = env.config(**over)
    single = learner_for(env, **over)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sharded = ShardedLearner(cfg, env.model_path, 0, 1)
    sharded.setup(("127.0.0.1", port))
    try:
        batch = scored(single, synthetic_batch(env))
        run_plans(single, batch, plan_batch(batch, cfg, 1, 0))
        sharded.run_plans(batch, plan_batch(batch, cfg, 1, 0))
        full = get_model_state_dict(sharded.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    finally:
        dist.destroy_process_group()
    diff = max_param_diff(full, single.model.state_dict())
    backend = "nccl" if env.device.type == "cuda" else "gloo"
    return [Row(f"FSDP2 world 1 ({backend}) vs single learner", f"max weight diff {diff:.1e}", "< 1e-5", diff < 1e-5)]


# ---- CUDA IPC round trip ---------------------------------------------------------------------------------
def _ipc_engine(handles: dict[str, list[tuple[str, Any]]], queue: Any) -> None:
    """The engine side in another process: open each handle as WeightSyncExtension.rl_div_load_ipc does."""
    from rl_div.rollout.vllm_extension import _rebuild_ipc
    from rl_div.sync.payloads import device_uuid

    mine = handles[device_uuid(0)]
    queue.put({name: float(_rebuild_ipc(h, 0).double().sum()) for name, h in mine})


def check_cuda_ipc(env: Env) -> list[Row]:
    if env.device.type != "cuda":
        return [Row("CUDA IPC round trip", "no CUDA", "checksums equal", None)]
    import torch.multiprocessing as mp

    from rl_div.sync.payloads import cuda_ipc_payload, release_ipc_copies

    learner = learner_for(env, **{"model.dtype": "bfloat16"})
    payload = cuda_ipc_payload(learner.model, learner, torch.bfloat16)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_ipc_engine, args=(payload.handles, queue))
    started = time.perf_counter()
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    seconds = time.perf_counter() - started
    want = {n: float(t.double().sum()) for n, t in learner._rl_div_ipc_tensors}
    release_ipc_copies(learner)
    equal = got == want
    return [Row("CUDA IPC round trip (bf16 payload)", f"{len(got)} tensors, {seconds:.1f} s incl. process start",
                "checksums equal", equal)]


SECTIONS: dict[str, Callable[[Env], list[Row]]] = {
    "precision": check_bf16_vs_fp32,
    "chunked_head": check_chunked_head,
    "head_precision": check_head_precision,
    "update": check_update,
    "offload": check_offload,
    "fsdp2_world1": check_fsdp2_world1,
    "cuda_ipc": check_cuda_ipc,
}
