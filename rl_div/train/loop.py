"""The RLVR training loop. Read :meth:`Trainer.run` and :meth:`Trainer.train_step` top to bottom:

    prompts -> rollout (Ray actors) -> rewards (Ray actor), in rounds until the batch is full
    (rollout.dynamic_sampling: rl_div/train/dynamic_sampling.py) -> policy log-probs/entropies (learner,
    unless the update's own forward is pi_old: rl_div.learner.onpolicy) -> advantages (registry)
    -> learner update -> weight sync -> metrics -> eval -> checkpoint

With rollout.max_off_policy_steps = k > 0 the rollout pipeline (rl_div/train/rollout_pipeline.py) keeps
k batches generating ahead: the rollout of step t only collects a batch launched k steps earlier.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import pickle
import time
from pathlib import Path
from typing import Any

import ray
import torch

from rewards.runner import RewardResult, merge_state, state_for
from rl_div.cluster.actors import (
    init_ray,
    place_run,
    release_placement,
    start_reward_worker,
    wait_started,
)
from rl_div.config import Config, ConfigError, save_config
from rl_div.config.checks import check_inputs
from rl_div.data import RolloutBatch
from rl_div.learner.onpolicy import fuses_policy_forward, needs_prompt_logprobs, separate_forward
from rl_div.models.loading import load_tokenizer
from rl_div.models.lora import check_lora_model
from rl_div.registry import import_plugins
from rl_div.rollout import SamplingSpec
from rl_div.run import lock as output_lock
from rl_div.run.checkpoint import (
    claim_output_dir,
    latest_checkpoint,
    load_trainer_state,
    resume_checkpoint,
    save_trainer_state,
    trim_to_step,
    write_checkpoint,
    write_text_atomic,
)
from rl_div.run.command import record_command
from rl_div.run.tracking import Tracker
from rl_div.run.writers import check_writers, prepare_output_dir
from rl_div.train.advantage_stage import compute_advantages, scored_rows, trained_rows
from rl_div.train.benchmark_eval import evaluate_benchmarks, guard_view, load_benchmark_prompts
from rl_div.train.blowup import check_update
from rl_div.train.console import SLOW_STEP_S, StageTimer, close_logging, progress_label, setup_logging
from rl_div.train.dynamic_sampling import BatchFiller, write_group_log
from rl_div.train.guard import CollapseGuard
from rl_div.train.model_path import resolve_model_path
from rl_div.train.prompts import PromptStream, check_chat_rendering, load_splits, prompts_that_fit
from rl_div.train.rollout_pipeline import policy_lag
from rl_div.train.rollout_shaping import apply_overlong_penalty, scheduled_temperature, shaping_metrics
from rl_div.train.startup import start_policy_actors
from rl_div.train.step_stats import eval_summary, rollout_health, step_diversity

log = logging.getLogger("rl_div")

FAULT_COUNTERS = ("faults/rollout_restarts", "faults/reward_worker_restarts", "faults/reward_errors",
                  "faults/reward_timeouts",
                  "faults/nonfinite_loss", "data/skipped_rows", "train/skipped_zero_signal")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the run's actors were stopped; str() is the one line to show."""


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> Path:
    """Run a whole training job; returns the output directory. Ctrl-C raises RunInterrupted."""
    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        trainer.run()
    except KeyboardInterrupt:
        checkpoint = latest_checkpoint(trainer.out)
        saved = f"step {load_trainer_state(checkpoint)['step']}" if checkpoint is not None else "none yet"
        raise RunInterrupted(f"interrupted at step {trainer.step} (last checkpoint: {saved}); rerun with --resume "
                             f"to continue from the last checkpoint") from None
    finally:
        trainer.close()
    return trainer.out


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False) -> None:
        """Checks the inputs (ConfigError before anything starts), then starts the run; an output_dir
        that already holds a run needs ``resume`` (continue it) or ``overwrite`` (replace it)."""
        self.cfg = cfg
        check_inputs(cfg)
        check_lora_model(cfg)  # builds the architecture on the meta device: here, not in config/
        claim_output_dir(cfg.run.output_dir, resume, overwrite)  # a run there needs --resume or --overwrite
        self.out = prepare_output_dir(cfg.run.output_dir)  # absolute, writable; who writes what: rl_div/run/writers.py
        output_lock.acquire(self.out)  # one run per folder until close() (rl_div/run/lock.py)
        try:
            self._start(resume)
        except BaseException:
            self.close()  # a failed start leaves no actors and no open log behind
            raise

    def _start(self, resume: bool) -> None:
        """Prompts, model, Ray actors, and (with resume) the latest checkpoint's state."""
        cfg = self.cfg
        self._load_inputs()
        init_ray(cfg)
        self.placement = place_run(cfg)  # fails in seconds when the cluster cannot hold the run
        # colocated vLLM: the engine starts (and profiles the GPU) before the learner (rl_div.train.startup)
        self.learner, self.pipeline = start_policy_actors(cfg, self.model_path, self.placement, self.counters)
        self.rewarder = start_reward_worker(cfg)
        self.filler = BatchFiller.from_config(cfg)  # rollout.dynamic_sampling: rounds -> one training batch
        # The actors import and load the policy in their own processes meanwhile.
        actors = {"learner": self.learner, **self.pipeline.actors()}
        wait_started(actors, cfg.cluster.startup_timeout_s)  # start-up has its own timeout, not the sync's
        check_writers(self.out, self.learner.writers())  # each rank writes its checkpoint part into the run dir
        self.fused_forward, why = fuses_policy_forward(cfg, ray.get(self.learner.active_dropout()))
        log.info("separate pi_old forward: %s (%s)", "no" if self.fused_forward else "yes", why)
        self.step, self.last_step_s = 0, math.inf  # the first step announces its stages
        checkpoint = resume_checkpoint(self.out) if resume else None  # the newest complete one (manifest)
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        resume_after = (self.step if checkpoint is not None else -1) if resume else None
        if resume_after is not None:  # the steps past the checkpoint are logged again: keep one clean run
            dropped = trim_to_step(self.out, resume_after)
            if dropped:
                log.info("--resume: dropped %d metric rows past step %d (or torn)", dropped, resume_after)
        self.pipeline.sync_weights()
        self.tracker = Tracker(self.out, cfg.tracking, cfg.run.name, cfg.model_dump(mode="json"), cfg.train.steps,
                               resume_after=resume_after, bar_label=progress_label(cfg))

    def _load_inputs(self) -> None:
        """What the run reads before any actor starts (rl-div eval's sampling-only start shares it): the log
        file, plugins, config.yaml, prompts (refused before Ray when unusable), tokenizer, benchmarks,
        counters, the collapse guard."""
        cfg = self.cfg
        setup_logging(self.out / "train.log")
        log.info("starting the run in %s", self.out)  # the startup bench's first mark (rl_div/bench/startup.py)
        import_plugins(cfg.run.plugins)
        save_config(cfg, self.out / "config.yaml")
        record_command(self.out)  # the command line and package versions, for the report's provenance
        train_set, eval_set = load_splits(cfg.data, cfg.run.seed)  # refuses eval prompts seen in training
        self.model_path = resolve_model_path(cfg)
        check_chat_rendering(eval_set.records + train_set.records, self.model_path, cfg)  # before Ray
        tokenizer = load_tokenizer(self.model_path, trust_remote_code=cfg.model.trust_remote_code)
        train_set, eval_set = (prompts_that_fit(cfg, tokenizer, self.model_path, s, split)  # room to answer
                               for s, split in ((train_set, "train"), (eval_set, "eval")))
        self.eval_prompts = eval_set.records
        self.benchmarks = load_benchmark_prompts(cfg)  # eval.benchmarks (rl_div/train/benchmark_eval.py)
        self.prompts = PromptStream(train_set.records, cfg.run.seed)
        self.counters: dict[str, float] = dict.fromkeys(FAULT_COUNTERS, 0.0)
        self.counters["data/skipped_rows"] = float(train_set.skipped_rows + train_set.too_long + eval_set.too_long)
        self.guard = CollapseGuard(cfg)  # collapse rules and the entropy-coefficient controller (off by default)
        self.reward_state: dict[str, dict[str, Any]] = {}  # stateful rewards' tables (outcome_ucb), checkpointed
        # Distinct-n and EAD count the policy's own tokens.
        self.vocab_size = len(tokenizer)
        self.tokenize = functools.partial(tokenizer.encode, add_special_tokens=False)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        if self.step == 0 and cfg.eval.at_start:
            self.evaluate()
        while self.step < cfg.train.steps:
            self.train_step()
            last = self.step == cfg.train.steps
            if (last and cfg.eval.at_end) or (cfg.eval.every and self.step % cfg.eval.every == 0):
                self.evaluate()
            if last or (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0):
                self.save_checkpoint()

    def train_step(self) -> dict[str, Any]:
        cfg = self.cfg
        timer = StageTimer(f"step {self.step + 1}/{cfg.train.steps}", announce=self.last_step_s > SLOW_STEP_S)
        started = time.perf_counter()
        # rounds of rollout + reward until the batch is full (rollout.dynamic_sampling; one round when off)
        batch, sampling_metrics = self.filler.fill(self.step, functools.partial(self.scored_round, timer))
        lag_metrics = policy_lag(batch, self.pipeline.weights_version)
        if cfg.rollout.log_groups:
            write_group_log(self.out, self.step + 1, batch)
        if separate_forward(self.fused_forward, batch.rewards, trained_rows(batch, cfg)):
            with timer("learner_forward"):
                batch = self.policy_stats(batch, with_prompt=needs_prompt_logprobs(cfg))
        # Without the separate forward, ARM's advantages here are their reward part; the update
        # finishes them (rl_div.learner.fused_advantage) and its metrics carry the final adv/* and arm/*.
        batch.advantages, adv_metrics = compute_advantages(batch, cfg, self.step)
        with timer("learner_update"):
            update_metrics = self.update(batch, self.guard.loss_overrides())
        check_update(self.step + 1, update_metrics, cfg.train.lr, self.out)  # a blown-up update stops the run
        self.counters["faults/nonfinite_loss"] += update_metrics.pop("faults/nonfinite_loss")
        self.counters["train/skipped_zero_signal"] += update_metrics.pop("train/skipped_zero_signal")
        with timer("sync"):  # after the generation in flight (if any) finished
            self.pipeline.sync_weights()
        self.step += 1
        metrics = {**rollout_health(batch), **step_diversity(batch, self.tokenize), **adv_metrics, **update_metrics,
                   **lag_metrics, **sampling_metrics, **shaping_metrics(batch), **timer.durations,
                   **{k: v for k, v in self.counters.items() if not k.startswith("eval/")},
                   "policy/version": self.pipeline.weights_version}
        metrics.update(self.guard.observe_train(self.step, metrics))
        self.tracker.log(self.step, metrics)
        self.last_step_s = time.perf_counter() - started
        return metrics

    # ---- stages --------------------------------------------------------------------------------
    def scored_round(self, timer: StageTimer) -> tuple[RolloutBatch, int]:
        """One round of prompts_per_step prompts: launches round step + max_off_policy_steps, collects
        the oldest launched and scores it. Returns it and the step that launched it."""
        fetch = functools.partial(self.prompts.next_batch, self.cfg.rollout.prompts_per_step)
        with timer("rollout"):
            batch, launched_at = self.pipeline.next_round(self.step, fetch, self.train_sampling())
        with timer("reward"):  # rewards, plus DAPO's overlong penalty under rollout.overlong=penalty
            return apply_overlong_penalty(self.score(batch), self.cfg.rollout), launched_at

    def train_sampling(self) -> SamplingSpec:
        """Sampling of the rounds launched now (rollout.temperature_schedule at this step)."""
        r = self.cfg.rollout
        temperature = scheduled_temperature(r, self.step, self.cfg.train.steps)
        return SamplingSpec(n=r.group_size, temperature=temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens, stop=list(r.stop), seed=self.cfg.run.seed)

    def score(self, batch: RolloutBatch, counter_prefix: str = "faults/", method: str = "score") -> RolloutBatch:
        """Rewards, correctness and extracted answers; failures are NaN and counted, never 0
        (training batches in the cumulative faults/ counters, evaluations under eval/). ``method``:
        the reward actor's score (the run's rewards) or score_verified (each record's own verifier)."""
        args: tuple[Any, ...] = (batch.response_texts, batch.prompts, batch.group_index.tolist())
        # an evaluation neither reads nor updates stateful rewards' tables (outcome_ucb)
        training = counter_prefix == "faults/" and method == "score"
        if method == "score":
            args = (*args, state_for(self.reward_state, [p.prompt for p in batch.prompts]) if training else None)
        result = self.call_reward_actor(method, args)
        if result is None:  # the call timed out: every response's reward failed
            nan = [math.nan] * batch.size
            result = RewardResult(total=nan, components={}, correct=nan, answers=[None] * batch.size,
                                  errors={"batch/timeouts": batch.size}, error_messages=[])
        if training and result.state:
            merge_state(self.reward_state, result.state)
        batch.rewards = torch.tensor(result.total, dtype=torch.float32)
        batch.correct = torch.tensor(result.correct, dtype=torch.float32)
        batch.answers = list(result.answers)
        batch.reward_components = {k: torch.tensor(v, dtype=torch.float32) for k, v in result.components.items()}
        for key, count in result.errors.items():
            kind = "timeouts" if key.endswith("timeouts") else "errors"
            name = f"{counter_prefix}reward_{kind}"
            self.counters[name] = self.counters.get(name, 0.0) + count
        for message in result.error_messages[:3]:
            log.warning("reward error: %s", message)
        return batch

    def call_reward_actor(self, method: str, args: tuple[Any, ...], timeout_counter: str | None = None) -> Any:
        """The reward actor's ``method`` (score, or embed for evaluation metrics); a dead actor is restarted
        and asked again, and a call that takes longer than reward.call_timeout_s is abandoned (the actor
        restarted, ``timeout_counter`` counted): None."""
        timeout = self.cfg.reward.call_timeout_s
        for attempt in range(2):
            try:
                return ray.get(getattr(self.rewarder, method).remote(*args), timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                log.warning("reward worker %s() took longer than reward.call_timeout_s=%g s; restarting it "
                            "(%s)", method, timeout, "rewards are NaN" if method == "score" else "result left out")
                self.restart_reward_worker()
                if timeout_counter:
                    self.counters[timeout_counter] = self.counters.get(timeout_counter, 0.0) + 1
                return None
            except ray.exceptions.RayActorError as err:
                if attempt:
                    raise
                log.warning("reward worker died (%s); restarting it", err)
                self.restart_reward_worker()
        return None

    def restart_reward_worker(self) -> None:
        with contextlib.suppress(Exception):  # dead already, or stuck: either way replaced
            ray.kill(self.rewarder)
        self.counters["faults/reward_worker_restarts"] += 1
        self.rewarder = start_reward_worker(self.cfg)

    def policy_stats(self, batch: RolloutBatch, temperature: float | None = None,
                     with_prompt: bool = False) -> RolloutBatch:
        """Log-probs and entropies of the batch under the current policy (the learner's pi_old);
        prompt log-probs too when with_prompt."""
        stats = ray.get(self.learner.policy_stats(batch, with_prompt, temperature))
        batch.old_logprobs = stats["old_logprobs"]
        batch.old_entropy = stats["old_entropy"]
        batch.prompt_logprobs = stats.get("prompt_logprobs")
        batch.ref_logprobs = stats.get("ref_logprobs")
        return batch

    def update(self, batch: RolloutBatch, loss_overrides: dict[str, Any]) -> dict[str, float]:
        """The learner's update on the scored rows (loss_overrides: the collapse guard's). Without the
        separate forward (no old_logprobs), the update's own forward is pi_old and its log-probs and
        entropies come back into the batch for the step metrics."""
        if batch.old_logprobs is not None:
            return ray.get(self.learner.update(scored_rows(batch, self.cfg), loss_overrides))
        metrics, stats = ray.get(self.learner.update_on_policy(batch, loss_overrides))
        batch.old_logprobs, batch.old_entropy = stats["old_logprobs"], stats["old_entropy"]
        if "advantages" in stats:  # finished in the update (ARM, rl_div.learner.fused_advantage); metrics has its adv/*
            batch.advantages = stats["advantages"]
        return metrics

    # ---- evaluation and checkpoints ------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """pass@k curve, entropy and diversity on the held-out prompts, n samples each.

        The sampling seed is the same at every evaluation, so curves differ by the policy only. It
        follows a weight sync, which waited for any batch in flight: every engine holds the learner's
        current version (logged as eval/policy_version).
        """
        cfg, timer = self.cfg, StageTimer(f"evaluation at step {self.step}", announce=True)
        spec = SamplingSpec(n=cfg.eval.n, temperature=cfg.eval.temperature, top_p=cfg.rollout.top_p,
                            top_k=cfg.rollout.top_k, max_new_tokens=cfg.rollout.max_new_tokens,
                            stop=list(cfg.rollout.stop), seed=cfg.run.seed + 7_919)
        with timer("eval_rollout"):
            batch = self.score(self.pipeline.generate(self.eval_prompts, spec, salt=0), counter_prefix="eval/")
            batch = self.policy_stats(batch, temperature=cfg.eval.temperature)
        embeddings = None
        if cfg.eval.embedding_metrics:
            with timer("eval_embed"):  # None (metrics left out, eval/embed_timeouts counted) past the timeout
                embeddings = self.call_reward_actor("embed", (batch.response_texts,), "eval/embed_timeouts")
        metrics, problems = eval_summary(batch, embeddings, self.vocab_size, self.tokenize)
        bench_metrics, each_benchmark = evaluate_benchmarks(self, self.step)
        metrics.update(bench_metrics)
        metrics.update({k: v for k, v in self.counters.items() if k.startswith("eval/")})
        metrics.update(timer.durations)
        metrics.update(self.guard.observe_eval(self.step, *guard_view(cfg, (metrics, problems), each_benchmark)))
        metrics["eval/policy_version"] = float(self.pipeline.weights_version)
        eval_dir = self.out / "eval"
        eval_dir.mkdir(exist_ok=True)
        write_text_atomic(eval_dir / f"step_{self.step:06d}.json",
                          json.dumps({"step": self.step, "metrics": metrics, "problems": problems}))
        self.tracker.log(self.step, metrics, kind="eval")
        log.info("eval step %d: %s", self.step, ", ".join(f"{k} {v:.3g}" for k, v in metrics.items()
                                                          if k.startswith("pass@") and isinstance(v, (int, float))))
        return metrics

    def save_checkpoint(self) -> Path:
        """The checkpoint of this step; a full disk is one line (DiskFull), the temporary folder removed."""
        def fill(tmp: Path) -> None:
            ray.get(self.learner.save(str(tmp)))
            self.pipeline.save(tmp)  # the batches already generating for the next steps
            save_trainer_state(tmp, {"step": self.step, "prompts": self.prompts.state(), "counters": self.counters,
                                     "guard": self.guard.state(), "pipeline": self.pipeline.state(),
                                     "sampling": self.filler.save(tmp), "reward_state": self.reward_state})

        return write_checkpoint(self.out, self.step, fill, self.cfg.checkpoint.keep)

    def load_checkpoint(self, checkpoint: Path) -> None:
        """--resume: the learner, the in-flight batches and the trainer's own state from a checkpoint
        ("restore" is reserved for selective layer restoration, rl_div.models.layer_restore)."""
        try:
            ray.get(self.learner.load(str(checkpoint)))
        except pickle.UnpicklingError as err:  # a file that would run code on load (rl_div.learner.safe_dcp)
            why = str(getattr(err, "cause", None) or err).strip().splitlines()[0]
            raise ConfigError(f"--resume: {checkpoint} refused: {why}") from None
        self.pipeline.load(checkpoint)
        state = load_trainer_state(checkpoint)
        self.step = state["step"]
        self.prompts.load_state(state["prompts"])
        self.counters.update(state["counters"])
        self.guard.load_state(state.get("guard", {}))
        self.pipeline.load_state(state.get("pipeline", {}), self.step)
        self.filler.load(checkpoint, state.get("sampling", {}))
        self.reward_state = state.get("reward_state", {})
        log.info("resumed from %s at step %d", checkpoint, self.step)

    def close(self) -> None:
        """Flush metrics, detach the log file and stop this run's actors (safe on a partial start)."""
        if hasattr(self, "tracker"):
            self.tracker.close()
        close_logging(self.out / "train.log")
        if hasattr(self, "pipeline"):
            self.pipeline.close()
        for actor in [getattr(self, "rewarder", None), *getattr(getattr(self, "learner", None), "actors", [])]:
            if actor is not None:
                with contextlib.suppress(Exception):  # shutting down: an actor already gone is fine
                    ray.kill(actor)
        with contextlib.suppress(Exception):
            release_placement(getattr(self, "placement", None))
        output_lock.release(self.out)
