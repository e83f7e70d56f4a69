"""rollout.colocate (issue 27 item 1): the learner actor samples with its own policy module.

Real Ray actors, the bootstrapped demo model, real math-verify rewards. The colocated run is checked
against the run with a separate hf rollout actor on the same seed: both sample with the same code
(rl_div.rollout.hf.HFSampler) from the same weights (the actor's copy is the learner's, pushed after
every update), so the tokens drawn are the same and every metric agrees up to float order.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import torch
from safetensors.torch import load_file

from rl_div.cluster.colocated import ColocatedLearner
from rl_div.config import ConfigError, load_config
from rl_div.rollout.base import SamplingSpec
from rl_div.rollout.hf import HFRolloutWorker
from rl_div.run.tracking import read_metrics
from rl_div.tasks import TASKS
from rl_div.train.loop import Trainer, train
from tests.helpers import NO_EVAL, QUIET, run_config, tiny_prime_gap_llama

pytestmark = pytest.mark.slow

# 3 steps at a learning rate that moves the policy; evaluation before and after (it samples colocated too)
SMALL = ("train.steps=3", "train.lr=0.003", "rollout.prompts_per_step=4", "rollout.group_size=8",
         "data.num_eval_prompts=4", "eval.n=8", "eval.every=0", "eval.at_start=true", "eval.at_end=true",
         "eval.embedding_metrics=false", "cluster.num_cpus=2", *QUIET)


@pytest.fixture(scope="module")
def base_model(bootstrapped_prime_gap: Path) -> str:
    yield str(bootstrapped_prime_gap)
    if ray.is_initialized():
        ray.shutdown()


def comparable(rows: list[dict]) -> dict[int, dict]:
    """Metrics by step without wall times (and the sync gap, compared on its own)."""
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(("time", "sync/logprob_gap")) and k != "kind"}
            for r in rows}


def last_weights(out: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ckpt / "policy" / "model.safetensors"))


def test_the_learner_samples_what_a_rollout_worker_with_its_weights_samples(tmp_path: Path) -> None:
    """In one process, no Ray: the colocated learner and an hf rollout worker holding the same weights draw
    the same tokens with the same log-probs; sampling leaves the learner's torch RNG stream and its
    model's generation_config (saved with every checkpoint) as they were."""
    path = tiny_prime_gap_llama(tmp_path, seed=5)
    learner = ColocatedLearner(run_config(path, tmp_path / "run", "run.torch_threads=1"), path)
    learner.model.generation_config.top_k = 3  # a checkpoint's own sampling field, which the spec overrides
    worker = HFRolloutWorker(path, device="cpu")
    prompts = TASKS["prime_gap"].make_prompts("train", 3, seed=0)
    spec = SamplingSpec(n=4, temperature=1.3, max_new_tokens=6, seed=11)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    ours, theirs = learner.generate(prompts, spec), worker.generate(prompts, spec)
    assert torch.equal(torch.get_rng_state(), before)
    assert learner.model.generation_config.top_k == 3
    assert torch.equal(ours.response_ids, theirs.response_ids) and ours.response_texts == theirs.response_texts
    torch.testing.assert_close(ours.behavior_logprobs, theirs.behavior_logprobs, rtol=0, atol=1e-6)
    assert len(set(ours.response_texts)) > 1  # really sampled, not one greedy answer
    assert ours.behavior_version.tolist() == [learner.version] * 12


def test_colocated_run_matches_a_separate_rollout_actor(tmp_path: Path, base_model: str) -> None:
    separate = train(run_config(base_model, tmp_path / "separate", *SMALL))
    trainer = Trainer(run_config(base_model, tmp_path / "colocated", *SMALL, "rollout.colocate=true"))
    try:
        # no rollout actor: the pipeline's one worker is the learner actor
        assert trainer.pipeline.actors() == {} and trainer.pipeline.workers == trainer.learner.actors
        trainer.run()
    finally:
        trainer.close()
    colocated = trainer.out
    a = comparable(read_metrics(separate / "metrics.jsonl", kind="train"))
    b = comparable(read_metrics(colocated / "metrics.jsonl", kind="train"))
    assert a.keys() == b.keys() == {1, 2, 3} and a[3].keys() == b[3].keys()
    # the policy moved (a step whose groups all carry no signal is skipped: fewer versions than steps)
    assert b[3]["policy/version"] == a[3]["policy/version"] >= 1 and b[3]["offpolicy/policy_lag"] == 0
    # the same tokens were drawn (rewards, lengths and distinct-n are counts of them) ...
    for step in (1, 2, 3):
        for key in ("reward/mean", "train/pass@1", "rollout/response_len", "rollout/truncation_rate"):
            assert a[step][key] == b[step][key], (step, key)
        # ... and every float agrees up to the order of float operations (same weights, same code)
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6, nan_ok=True)
    for rows in (read_metrics(separate / "metrics.jsonl", kind="train"),
                 read_metrics(colocated / "metrics.jsonl", kind="train")):
        assert all(r["sync/logprob_gap_max"] < 1e-5 for r in rows)  # incremental vs full forward, same weights
    ea = read_metrics(separate / "metrics.jsonl", kind="eval")
    eb = read_metrics(colocated / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in ea] == [r["step"] for r in eb] == [0, 3]
    for ra, rb in zip(ea, eb, strict=True):
        assert rb["eval/policy_version"] == ra["eval/policy_version"]
        assert comparable([rb])[rb["step"]] == pytest.approx(comparable([ra])[ra["step"]], rel=1e-5, abs=1e-6,
                                                             nan_ok=True)
    wa, wb = last_weights(separate), last_weights(colocated)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)


def test_colocated_resume_2_plus_2_equals_4(tmp_path: Path, base_model: str) -> None:
    common = ("checkpoint.every=2", "rollout.prompts_per_step=8", "rollout.group_size=8", "train.lr=0.01",
              "rollout.colocate=true", "data.num_eval_prompts=4", "cluster.num_cpus=2", *NO_EVAL, *QUIET)
    full = train(run_config(base_model, tmp_path / "a", "train.steps=4", *common))
    train(run_config(base_model, tmp_path / "b", "train.steps=2", *common))
    resumed = train(run_config(base_model, tmp_path / "b", "train.steps=4", *common), resume=True)
    wa, wb = last_weights(full), last_weights(resumed)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    ra = comparable(read_metrics(full / "metrics.jsonl", kind="train"))
    rb = comparable(read_metrics(resumed / "metrics.jsonl", kind="train"))
    assert rb.keys() == {1, 2, 3, 4} and ra[4]["policy/version"] >= 1
    for step in (3, 4):
        assert rb[step] == pytest.approx(ra[step], rel=1e-6, abs=1e-7, nan_ok=True)


@pytest.mark.parametrize(("overrides", "says"), [
    (["rollout.max_off_policy_steps=1"], "needs rollout.max_off_policy_steps=0"),
    (["train.strategy=fsdp2", "train.num_learners=2"], "train.strategy='single' only"),
    (["rollout.num_workers=2"], "rollout.num_workers must be 1"),
    (["rollout.backend=vllm"], "rollout.weight_sync=cuda_ipc"),
])
def test_unsupported_combinations_are_refused_in_one_line_at_load(overrides: list[str], says: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.colocate=true", *overrides])
    message = str(info.value)
    assert "\n" not in message and "rollout.colocate" in message and says in message, message
