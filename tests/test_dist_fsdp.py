"""FSDP2 over 2 gloo ranks (real torch.distributed, spawned processes) against one process.

Two spawned processes serve the module (imports are paid once), each its own one-worker pool so a
test chooses which process runs which rank; every job joins a fresh process group. The one-process
reference is a plain Learner running the same planner (world 1) with the identity reducer.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import dist_jobs
import pytest
import torch
from helpers import rank_job_config

from rl_div.learner.fsdp2 import run_plans
from rl_div.learner.plan import plan_batch
from rl_div.learner.reducers import LOCAL, mini_batch_token_weights
from rl_div.learner.single import Learner
from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.tasks import TASKS

COMMON = ["train.micro_batch_size=3", "train.max_tokens_per_micro_batch=40", "train.mini_batch_size=8",
          "train.strategy=fsdp2", "train.num_learners=2", "train.token_weight_scope=mini"]
LORA = ["train.lora.enabled=true", "train.lora.rank=4", "train.lora.alpha=8"]  # lr 0.001 as the others


class RankPools:
    """Two spawned processes; submit() runs a job in the first (a one-process job)."""

    def __init__(self) -> None:
        self.processes = [ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) for _ in range(2)]

    def submit(self, job: Any, *args: Any, **kwargs: Any) -> Any:
        return self.processes[0].submit(job, *args, **kwargs)

    def close(self) -> None:
        for p in self.processes:
            p.shutdown()


@pytest.fixture(scope="module")
def pool() -> Iterator[RankPools]:
    pools = RankPools()
    yield pools
    pools.close()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    return str(save_policy(make_tiny_llama(tok, seed=3), tok, tmp_path_factory.mktemp("m") / "tiny"))


@pytest.fixture(scope="module")
def batch(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """16 real rollouts with very uneven response lengths (row i keeps 1 + i % 8 tokens), scored by
    the policy, with signed advantages (two rows without signal)."""
    worker = HFRolloutWorker(model_path, dtype="float32", device="cpu")
    b = worker.generate(TASKS["prime_gap"].make_prompts("train", 4, seed=0),
                        SamplingSpec(n=4, max_new_tokens=8, seed=0))
    width = b.response_mask.shape[1]
    keep = torch.tensor([1 + i % width for i in range(b.size)])
    b.response_mask = b.response_mask * (torch.arange(width)[None, :] < keep[:, None])
    learner = Learner(rank_job_config(model_path, str(tmp_path_factory.mktemp("o")), []), model_path)
    stats = learner.policy_stats(b)
    b.old_logprobs, b.old_entropy = stats["old_logprobs"], stats["old_entropy"]
    b.advantages = torch.linspace(-1.5, 1.5, b.size)
    b.advantages[[3, 11]] = 0.0
    return b


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_two_ranks(pool: RankPools, job: Any, *args: Any, processes: tuple[int, int] = (0, 1), **kwargs: Any,
                 ) -> list[Any]:
    """job as ranks 0 and 1 of a fresh 2-rank group; rank r runs in process processes[r]."""
    port = free_port()
    futures = [pool.processes[p].submit(job, rank, 2, port, *args, **kwargs) for rank, p in enumerate(processes)]
    return [f.result(timeout=600) for f in futures]


def one_process(model_path: str, out: str, extra: list[str], batch: Any, updates: int) -> tuple[Learner, list]:
    cfg = rank_job_config(model_path, out, extra)
    learner = Learner(cfg, model_path)
    metrics = [run_plans(learner, batch, plan_batch(batch, cfg, 1, learner.version)) for _ in range(updates)]
    return learner, metrics


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_two_ranks_match_one_process_over_3_updates(pool: RankPools, model_path: str, batch: Any,
                                                     tmp_path: Path, agg: str) -> None:
    extra = [*COMMON, f"algo.loss_params={{agg: {agg}}}"]
    ranks = on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), extra, batch, 3)
    ref, ref_metrics = one_process(model_path, str(tmp_path), extra, batch, 3)
    params = ranks[0]["params"]
    moved = 0.0
    for name, p in ref.model.state_dict().items():
        assert torch.allclose(params[name], p, atol=1e-5, rtol=0), (name, float((params[name] - p).abs().max()))
        moved = max(moved, float((p - Learner(ref.cfg, model_path).model.state_dict()[name]).abs().max()))
    assert moved > 1e-3  # the updates did move the weights
    for got, want in zip(ranks[0]["metrics"], ref_metrics, strict=True):
        assert got["train/optimizer_steps"] == want["train/optimizer_steps"] == 2
        for k in ("loss/total", "loss/pg", "loss/ratio_mean", "policy/entropy_train", "train/grad_norm"):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def off_policy_batch(batch: Any) -> Any:
    """The module's batch as a stale one: pi_old moved off the policy and the sampler off pi_old by
    fixed per-token patterns (ratios and importance weights away from 1, some clipped or capped),
    and row 5's response emptied, so a row is not always a response."""
    data = batch.select(list(range(batch.size)))
    wave = torch.arange(data.old_logprobs.numel(), dtype=torch.float32).reshape(data.old_logprobs.shape)
    data.behavior_logprobs = data.old_logprobs + 0.9 * torch.sin(wave)
    data.old_logprobs = data.old_logprobs + 0.3 * torch.cos(wave)
    data.response_mask[5] = 0
    return data


@pytest.mark.parametrize(("agg", "tis"), [("token-mean", "token"), ("seq-mean-token-mean", "sequence")])
def test_single_and_fsdp2_log_the_same_step_metrics(pool: RankPools, model_path: str, batch: Any, tmp_path: Path,
                                                    agg: str, tis: str) -> None:
    """One optimizer step on one batch (one mini-batch in batch order: every strategy takes the same
    step). The reference is the single learner with the whole batch in one micro-batch: each metric
    is then the mini-batch's own value, with no combination rule involved. The single learner with
    micro-batches of 3 rows, the planned one-process path (token-budget micro-batches) and FSDP2
    at 1 and 2 ranks must log the same values for every metric."""
    data = off_policy_batch(batch)
    out = str(tmp_path)
    params = [f"algo.loss_params={{agg: {agg}, tis: {tis}}}"]
    want = Learner(rank_job_config(model_path, out, [f"train.micro_batch_size={data.size}", *params]),
                   model_path).update(data)
    single = ["train.micro_batch_size=3", *params]
    got = {"single": Learner(rank_job_config(model_path, out, single), model_path).update(data)}
    fsdp2 = [*single, "train.max_tokens_per_micro_batch=40", "train.strategy=fsdp2"]
    got["planned"] = one_process(model_path, out, fsdp2, data, 1)[1][0]
    got["fsdp2 x1"] = pool.submit(dist_jobs.train_job, 0, 1, free_port(), model_path, out,
                                  [*fsdp2, "train.num_learners=1"], data, 1).result(timeout=600)["metrics"][0]
    ranks = on_two_ranks(pool, dist_jobs.train_job, model_path, out, [*fsdp2, "train.num_learners=2"], data, 1)
    got["fsdp2 x2"], got["fsdp2 x2, rank 1"] = ranks[0]["metrics"][0], ranks[1]["metrics"][0]
    assert want["train/optimizer_steps"] == 1
    for k in ("loss/clip_frac_low", "loss/clip_frac_high", "offpolicy/is_capped_frac"):
        assert want[k] > 0, k  # the batch exercises the clipped and capped paths
    wrong = [(name, k, metrics.get(k), v) for name, metrics in got.items() for k, v in want.items()
             if metrics.get(k) != pytest.approx(v, rel=1e-4, abs=1e-6)]
    assert not wrong, "\n".join(map(str, wrong))
    assert all(set(metrics) == set(want) for metrics in got.values())


WEIGHTS = {
    "steer": [],
    "clip_cov": ["algo.token_weight_params={fraction: 0.2, cov_low: -100.0, cov_high: 100.0}"],
    "kl_cov": ["algo.token_weight_params={fraction: 0.2}"],
    "high_entropy_mask": ["algo.token_weight_params={top_fraction: 0.2}"],
}


@pytest.mark.parametrize("method", list(WEIGHTS))
def test_token_weights_across_ranks_equal_one_process(pool: RankPools, model_path: str, batch: Any,
                                                      tmp_path: Path, method: str) -> None:
    extra = [*COMMON, f"algo.token_weight={method}", *WEIGHTS[method]]
    ranks = on_two_ranks(pool, dist_jobs.weights_job, model_path, str(tmp_path), extra, batch)
    cfg = rank_job_config(model_path, str(tmp_path), extra)
    learner = Learner(cfg, model_path)
    plan = plan_batch(batch, cfg, 1, 0)[0]
    assert plan.rows == ranks[0]["rows"]
    mini = batch.select(plan.rows)
    # one process, one micro-batch per row: the micro-batch split must not matter either
    ref = mini_batch_token_weights(learner, mini, [[[i] for i in range(mini.size)]], 0, LOCAL).out
    got = ranks[1]
    valid = mini.response_mask.bool()
    assert int((got["weights"] != ref.weights)[valid].sum()) == 0
    if ref.kl_penalty_coef is not None:
        assert int((got["coef"] != ref.kl_penalty_coef)[valid].sum()) == 0
        assert int((ref.kl_penalty_coef != 0)[valid].sum()) >= 2
    else:
        assert int((ref.weights != 1)[valid].sum()) >= 2  # the method did select / re-weight tokens
    for k, v in ref.metrics.items():
        assert got["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    assert ranks[0]["metrics"] == ranks[1]["metrics"]


def test_nan_on_one_rank_skips_the_step_on_both(pool: RankPools, model_path: str, batch: Any,
                                                tmp_path: Path) -> None:
    ranks = on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), COMMON, batch, 1, nan_rank=1)
    start = Learner(rank_job_config(model_path, str(tmp_path), COMMON), model_path).model.state_dict()
    for rank in ranks:
        [m] = rank["metrics"]
        assert m["faults/nonfinite_loss"] == 1 and m["train/optimizer_steps"] == 1  # the other mini-batch stepped
    # the step that ran equals one process's update on the second mini-batch alone
    cfg = rank_job_config(model_path, str(tmp_path), COMMON)
    ref = Learner(cfg, model_path)
    run_plans(ref, batch, plan_batch(batch, cfg, 1, 0)[1:])
    for name, p in ref.model.state_dict().items():
        assert torch.allclose(ranks[0]["params"][name], p, atol=1e-5, rtol=0), name
    assert any(not torch.equal(p, start[n]) for n, p in ref.model.state_dict().items())


def test_dcp_checkpoint_from_two_ranks_resumes_on_one(pool: RankPools, model_path: str, batch: Any,
                                                      tmp_path: Path) -> None:
    """Save with 2 ranks after one update, take a second update; load with 1 rank, take the second
    update there: the same parameters. The policy/ folder holds the full weights at the save.

    Each process first saves a checkpoint as the other rank: torch caches DTensor sharding by the
    mesh's value, which does not include the rank, so before sharded.new_mesh a process that had
    been rank 0 wrote rank 1's shards at rank 0's offsets (rows swapped in the checkpoint; it
    showed as a 1-in-3 flake when the pool happened to swap)."""
    from rl_div.models.loading import load_policy

    on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), COMMON, batch, 1, save_after=0,
                 save=str(tmp_path / "as_other_ranks"))
    ckpt = str(tmp_path / "ckpt")
    two = on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), COMMON, batch, 2, save_after=1,
                       save=ckpt, processes=(1, 0))
    one_cfg = [c for c in COMMON if "num_learners" not in c] + ["train.num_learners=1"]
    one = pool.submit(dist_jobs.train_job, 0, 1, free_port(), model_path, str(tmp_path), one_cfg, batch, 1,
                      load=ckpt).result(timeout=600)
    assert one["metrics"][0]["train/optimizer_steps"] == 2
    for name, p in two[0]["params"].items():
        assert torch.allclose(one["params"][name], p, atol=1e-5, rtol=0), name
    saved, _ = load_policy(str(Path(ckpt) / "policy"), dtype="float32")
    after_one, _ = one_process(model_path, str(tmp_path), COMMON, batch, 1)
    for name, p in after_one.model.state_dict().items():
        assert torch.allclose(saved.state_dict()[name], p, atol=1e-5, rtol=0), name
    # strategy single resumes it too (model and optimizer from dcp/, in one process, no process group)
    single_cfg = rank_job_config(model_path, str(tmp_path), [c for c in COMMON if "strategy" not in c
                                                                 and "num_learners" not in c])
    resumes_in_one_process(ckpt, single_cfg, model_path, batch, after_one.version, two[0]["params"])


def resumes_in_one_process(ckpt: str, cfg: Any, model_path: str, batch: Any, version: int,
                           want: dict[str, torch.Tensor]) -> None:
    """A single learner loads ckpt (model and optimizer from dcp/, no process group) at `version`, and
    its next update gives the parameters `want`."""
    single = Learner(cfg, model_path)
    single.load(ckpt)
    assert single.version == version > 0
    run_plans(single, batch, plan_batch(batch, cfg, 1, single.version))
    for name, p in single.model.state_dict().items():
        assert torch.allclose(want[name], p, atol=1e-5, rtol=0), name


@pytest.mark.parametrize("lora", [False, True])
def test_single_learner_checkpoint_resumes_on_two_ranks(pool: RankPools, model_path: str, batch: Any,
                                                        tmp_path: Path, lora: bool) -> None:
    """A single learner's checkpoint (policy/ + its optimizer state) resumed by 2 FSDP2 ranks: the
    next update equals one process's second update (AdamW moments carried over, not restarted).
    With train.lora the adapters come from learner_state.pt (policy/ is the merged export)."""
    common = [*COMMON, *LORA] if lora else COMMON
    learner, _ = one_process(model_path, str(tmp_path), common, batch, 1)
    ckpt = tmp_path / "single_ckpt"
    ckpt.mkdir()
    learner.save(str(ckpt))
    assert not (ckpt / "dcp").exists()
    two = on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), common, batch, 1, load=str(ckpt))
    after_two, _ = one_process(model_path, str(tmp_path), common, batch, 2)
    restarted_adam = Learner(learner.cfg, model_path)
    restarted_adam.model.load_state_dict(learner.model.state_dict())
    run_plans(restarted_adam, batch, plan_batch(batch, learner.cfg, 1, 1))
    for name, p in after_two.model.state_dict().items():
        assert torch.allclose(two[0]["params"][name], p, atol=1e-5, rtol=0), name
    assert any(not torch.allclose(restarted_adam.model.state_dict()[n], p, atol=1e-5, rtol=0)
               for n, p in after_two.model.state_dict().items())  # a fresh optimizer would differ


@pytest.mark.parametrize("method", ["steer", "high_entropy_mask"])
def test_single_learner_mini_scope_equals_planned_one_process(model_path: str, batch: Any, tmp_path: Path,
                                                             method: str) -> None:
    """strategy single with token_weight_scope=mini (Learner.update, micro-batches of 3 rows) takes
    the step the planner's one-process path takes (token-budget micro-batches): same weights."""
    extra = ["train.micro_batch_size=3", f"algo.token_weight={method}", "train.token_weight_scope=mini",
             *WEIGHTS[method]]
    single = Learner(rank_job_config(model_path, str(tmp_path), extra), model_path)
    single.update(batch)
    planned, _ = one_process(model_path, str(tmp_path), [*extra, "train.max_tokens_per_micro_batch=40"], batch, 1)
    for name, p in single.model.state_dict().items():
        diff = float((planned.model.state_dict()[name] - p).abs().max())
        assert diff < 1e-5, (name, diff)


def test_single_learner_loss_total_does_not_depend_on_micro_batching(model_path: str, batch: Any,
                                                                     tmp_path: Path) -> None:
    """loss/total is the mini-batch's loss: micro-batch losses (global denominators) add up; it was
    their row-weighted mean, i.e. divided by the number of micro-batches."""
    totals = [Learner(rank_job_config(model_path, str(tmp_path), [f"train.micro_batch_size={m}"]),
                      model_path).update(batch)["loss/total"] for m in (3, batch.size)]
    assert totals[0] == pytest.approx(totals[1], rel=1e-5, abs=1e-7)


def test_sharded_reference_model_kl_matches_one_process(pool: ProcessPoolExecutor, model_path: str, batch: Any,
                                                        tmp_path: Path) -> None:
    """train.use_ref_model with a KL term on 2 ranks: the reference is sharded (each rank holds part
    of every tensor, not a deepcopy of the model), stays the starting model while the policy moves,
    and 2 rounds of scoring + update equal one process (plain Learner, world-1 plans)."""
    from rl_div.cluster.learner_group import policy_stats_chunks

    extra = [*COMMON, "train.use_ref_model=true", "algo.loss_params={kl_coef: 0.5}"]
    cfg = rank_job_config(model_path, str(tmp_path), extra)
    cost = (batch.prompt_mask.sum(dim=1) + batch.response_mask.sum(dim=1)).tolist()

    def padded(n: int) -> bool:  # scoring n rows gives a rank a padding pass (the reference's collectives too)
        chunks = policy_stats_chunks(n, cost, 2, cfg.train.micro_batch_size, cfg.train.max_tokens_per_micro_batch)
        return any([] in rank for rank in chunks)

    batch = batch.select(list(range(next(n for n in range(batch.size, 8, -1) if padded(n)))))
    ranks = on_two_ranks(pool, dist_jobs.ref_job, model_path, str(tmp_path), extra, batch, 2)
    learner = Learner(cfg, model_path)
    for rank in ranks:
        assert rank["ref_sizes"].keys() == {f"policy.{n}" for n, _ in learner.model.named_parameters()}
        for name, (local, full) in rank["ref_sizes"].items():
            assert local < full, name
    start = learner.policy_stats(batch)["old_logprobs"]
    for got in ranks[0]["rounds"]:
        data = dist_jobs.with_stats(batch, learner.policy_stats(batch))
        want = run_plans(learner, data, plan_batch(data, cfg, 1, learner.version))
        assert torch.allclose(got["ref_logprobs"], data.ref_logprobs, atol=1e-5, rtol=0)
        assert torch.allclose(got["ref_logprobs"], start, atol=1e-5, rtol=0)  # the reference did not move
        assert got["metrics"]["loss/kl"] == pytest.approx(want["loss/kl"], rel=1e-4, abs=1e-9)
        assert got["metrics"]["train/optimizer_steps"] == want["train/optimizer_steps"] == 2
    assert want["loss/kl"] > 1e-6  # the policy moved away from the reference: the KL term acted
    for name, p in learner.model.state_dict().items():
        assert torch.allclose(ranks[0]["params"][name], p, atol=1e-5, rtol=0), name
    assert ranks[0]["rounds"][-1]["metrics"] == ranks[1]["rounds"][-1]["metrics"]



def test_lora_with_kl_on_two_ranks_matches_one_process(pool: ProcessPoolExecutor, model_path: str, batch: Any,
                                                       tmp_path: Path) -> None:
    """train.lora + a KL term on 2 ranks: the reference is the sharded policy with its adapters
    disabled (no reference model at all), stays the base model while the adapters move, and 2 rounds
    of scoring + update equal one process; only adapter weights moved."""
    extra = [*COMMON, *LORA, "train.use_ref_model=true", "algo.loss_params={kl_coef: 0.5}"]
    cfg = rank_job_config(model_path, str(tmp_path), extra)
    ranks = on_two_ranks(pool, dist_jobs.ref_job, model_path, str(tmp_path), extra, batch, 2)
    assert ranks[0]["ref_sizes"] == {}
    single_cfg = rank_job_config(model_path, str(tmp_path), [c for c in extra if "strategy" not in c
                                                             and "num_learners" not in c])
    learner = Learner(single_cfg, model_path)
    start = Learner(rank_job_config(model_path, str(tmp_path), []), model_path).policy_stats(batch)["old_logprobs"]
    for got in ranks[0]["rounds"]:
        data = dist_jobs.with_stats(batch, learner.policy_stats(batch))
        want = run_plans(learner, data, plan_batch(data, cfg, 1, learner.version))
        assert torch.allclose(got["ref_logprobs"], data.ref_logprobs, atol=1e-5, rtol=0)
        assert torch.allclose(got["ref_logprobs"], start, atol=1e-5, rtol=0)  # the base model, not the policy
        assert got["metrics"]["loss/kl"] == pytest.approx(want["loss/kl"], rel=1e-4, abs=1e-9)
        assert got["metrics"]["train/optimizer_steps"] == want["train/optimizer_steps"] == 2
    assert want["loss/kl"] > 1e-6
    base = load_policy_state(model_path)
    for name, p in learner.model.state_dict().items():
        assert torch.allclose(ranks[0]["params"][name], p, atol=1e-5, rtol=0), (
            name, float((ranks[0]["params"][name] - p).abs().max()))
        plain = name.replace(".base_layer.", ".")
        assert (".lora_" in name) or torch.equal(p, base[plain]), name  # the frozen base did not move
    assert any(".lora_B" in n and float(p.abs().max()) > 1e-3 for n, p in learner.model.state_dict().items())


def load_policy_state(model_path: str) -> dict[str, torch.Tensor]:
    from rl_div.models.loading import load_policy

    return load_policy(model_path)[0].state_dict()


def test_lora_dcp_checkpoint_from_two_ranks_resumes_on_one(pool: RankPools, model_path: str, batch: Any,
                                                           tmp_path: Path) -> None:
    """LoRA on 2 ranks: save after one update (DCP shards + adapter/ + merged policy/), take a second;
    a single learner loads the DCP checkpoint and takes the second update: the same parameters. The
    merged policy/ equals the one-process policy at the save, merged."""
    from peft import PeftModel

    from rl_div.models.lora import merged_state_dict

    extra = [*COMMON, *LORA]
    ckpt = str(tmp_path / "ckpt")
    two = on_two_ranks(pool, dist_jobs.train_job, model_path, str(tmp_path), extra, batch, 2, save_after=1,
                       save=ckpt)
    single_extra = [c for c in extra if "strategy" not in c and "num_learners" not in c]
    single_cfg = rank_job_config(model_path, str(tmp_path), single_extra)
    after_one, _ = one_process(model_path, str(tmp_path), single_extra, batch, 1)
    merged = merged_state_dict(after_one.model)
    saved = load_policy_state(str(Path(ckpt) / "policy"))
    for name, p in saved.items():
        assert torch.allclose(merged[name], p, atol=1e-5, rtol=0), name
    from rl_div.models.loading import load_policy

    peft_model = PeftModel.from_pretrained(load_policy(model_path)[0], str(Path(ckpt) / "adapter"))
    want = {n: p for n, p in after_one.model.named_parameters() if ".lora_" in n}
    got = {n.removeprefix("base_model.model."): p for n, p in peft_model.named_parameters() if ".lora_" in n}
    assert got.keys() == want.keys()
    for name, p in want.items():
        assert torch.allclose(got[name], p, atol=1e-5, rtol=0), name
    resumes_in_one_process(ckpt, single_cfg, model_path, batch, after_one.version, two[0]["params"])


@pytest.mark.parametrize("mode", ["adapter", "merged"])
def test_lora_sync_from_two_ranks_equals_one_process(pool: RankPools, model_path: str, tmp_path: Path,
                                                     mode: str) -> None:
    """A sharded LoRA learner streams, from rank 0, exactly one process's adapter tensors or merged
    weights (W + B A alpha / r, gathered shards); rank 1 streams nothing."""
    extra = [*COMMON, *LORA, f"train.lora.sync={mode}"]
    ranks = on_two_ranks(pool, dist_jobs.lora_sync_job, model_path, str(tmp_path), extra)
    one = Learner(rank_job_config(model_path, str(tmp_path), [*LORA, f"train.lora.sync={mode}"]), model_path)
    dist_jobs.perturb_adapters(one)
    want = dict(one.sync_tensors())
    assert ranks[1]["tensors"] == []
    got = dict(ranks[0]["tensors"])
    assert got.keys() == want.keys()
    assert all((".lora_" in n) == (mode == "adapter") for n in got)
    for name, t in want.items():
        assert torch.allclose(got[name], t, atol=1e-6, rtol=0), name
    if mode == "merged":  # the merge acted: q_proj differs from the base model's
        base = load_policy_state(model_path)["model.layers.0.self_attn.q_proj.weight"]
        assert float((got["model.layers.0.self_attn.q_proj.weight"] - base).abs().max()) > 1e-3
