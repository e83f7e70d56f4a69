"""The learner: forward passes (rl_div.learner.forward), token weights, the loss, optimizer steps,
and its part of a checkpoint. A plain class; rl_div.cluster.actors runs it as a Ray actor."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rl_div.algos import LOSSES, TOKEN_WEIGHTS
from rl_div.algos.losses import LossInputs, LossOutput
from rl_div.algos.token_weights import TokenWeightInputs, TokenWeightOutput
from rl_div.data import RolloutBatch
from rl_div.learner.forward import batch_temperature, policy_forward, prompt_logprob_mask
from rl_div.learner.fused_advantage import RowShaper, ShapingLeftNoSignal
from rl_div.learner.lora import LEARNER_STATE_KEY as LORA_STATE_KEY
from rl_div.learner.lora import LoraPolicy
from rl_div.learner.onpolicy import active_dropout, fuses_policy_forward
from rl_div.learner.packing import prepare_packing
from rl_div.learner.plan import MiniBatchPlan, loss_mask, other_loss_terms, row_chunk_plan
from rl_div.learner.update_loop import run_plans
from rl_div.models.loading import DTYPES, load_policy, save_policy
from rl_div.registry import import_plugins
from rl_div.sync.buckets import BucketPayload, bucket_payload, put_bucket, tied_names
from rl_div.sync.payloads import cpu_engine_tensors, model_tensors, state_dict_payload

if TYPE_CHECKING:
    from rl_div.config import Config


def move_optimizer_state(optimizer: torch.optim.Optimizer, to_cpu: bool) -> None:
    """Move every state tensor of optimizer (AdamW's moments) to CPU memory (pinned when CUDA is
    there, for asynchronous copies), or back to the device of its parameter. Scalar state such as
    AdamW's step count stays where the optimizer keeps it.

    The offload always copies (on a CPU-only machine too, where it is a plain copy), so the copy
    code is the one a GPU runs. Sharded state (FSDP2's AdamW moments are DTensors) moves as each
    rank's local shard inside its DTensor (``DTensor.to`` runs on the local tensor and keeps mesh
    and placements, as verl's offload_fsdp_optimizer does): a host buffer of the global shape would
    be the wrong size, copy_ refuses to mix a torch.Tensor with a DTensor, and DTensor.from_local
    would move a CPU shard straight back to the mesh's device.
    """
    from torch.distributed.tensor import DTensor

    pin = torch.cuda.is_available()
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if not torch.is_tensor(value) or value.dim() == 0:
                continue
            if isinstance(value, DTensor):
                if to_cpu or value.device != param.device:
                    state[key] = value.to("cpu" if to_cpu else param.device, copy=True)
            elif to_cpu:
                state[key] = torch.empty(value.shape, dtype=value.dtype, pin_memory=pin).copy_(value, non_blocking=pin)
            elif value.device != param.device:
                state[key] = value.to(param.device, non_blocking=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (HF models;
    non-reentrant checkpointing, which works with the chunked LM head and inputs without grad)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ValueError(f"train.activation_checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Learner:
    """Owns the trainable policy (and an optional frozen reference) and the optimizer.

    Mixed precision: parameters and AdamW state are float32 ("master weights") whatever
    model.dtype says; forward passes run under autocast in model.dtype, and weights leave for the
    rollout engines cast to model.dtype (the dtype the engines hold). With bf16 parameters an
    update at lr ~1e-6 is mostly below bf16's resolution and is lost (measured: 2% of the values
    of a tiny model moved in one step, against all of them with fp32 masters).
    """

    def __init__(self, cfg: Config, model_path: str) -> None:
        import_plugins(cfg.run.plugins)
        torch.set_num_threads(cfg.run.torch_threads)
        torch.manual_seed(cfg.run.seed)
        self.cfg = cfg
        self.device = torch.device("cuda" if torch.cuda.is_available() and cfg.train.num_gpus > 0 else "cpu")
        self.model, self.tokenizer = self.load_model(model_path)
        if cfg.train.activation_checkpointing:
            enable_activation_checkpointing(self.model)
        self.compute_dtype = DTYPES[cfg.model.dtype]
        self.packing = prepare_packing(self.model, self.compute_dtype, cfg.train.packing, cfg.train.packing_tokens)
        # train.lora: adapters on the frozen base (in model.dtype); self.model is then PEFT's injected model
        self.lora = LoraPolicy(cfg, self.model, self.compute_dtype) if cfg.train.lora.enabled else None
        if self.lora is not None:
            self.model = self.lora.model
        # What the rollout engines hold; weight_sync payload builders read it from the actor.
        self.sync_dtype = self.compute_dtype
        # with LoRA the reference is the policy's own module with its adapters disabled (self.lora.reference)
        self.ref_model = self.reference_model() if cfg.train.use_ref_model and self.lora is None else None
        self.has_reference = cfg.train.use_ref_model
        self.build_optimizer()
        self.generator = torch.Generator().manual_seed(cfg.run.seed)
        self.version = 0
        self.loss_params: dict[str, Any] = dict(cfg.algo.loss_params)  # update() merges its overrides over these
        # Filled by the update's forwards while update_on_policy runs (old_logprobs, old_entropy).
        self._on_policy_stats: dict[str, list[torch.Tensor]] | None = None
        self._shaper: RowShaper | None = None  # finishes a row-local advantage there (rl_div.learner.fused_advantage)

    def load_model(self, model_path: str) -> tuple[torch.nn.Module, Any]:
        """(policy in float32 on self.device, tokenizer); the sharded learner loads once and shards instead."""
        return load_policy(model_path, dtype="float32", trust_remote_code=self.cfg.model.trust_remote_code,
                           device=str(self.device))

    def reference_model(self) -> torch.nn.Module | None:
        """The frozen reference of the KL term (train.use_ref_model): a copy of the starting policy,
        float32 too, so that it computes exactly as the policy does and the KL term is 0 before the
        first update. Never checkpointed: a resumed run copies the model at model_path again, before
        load() puts the checkpoint's weights into the policy. (The sharded learner builds a sharded
        one in its setup instead: rl_div.learner.reference.)"""
        return copy.deepcopy(self.model).eval().requires_grad_(False)

    def build_optimizer(self) -> None:
        """AdamW over the policy's parameters and the warm-up schedule (again after sharding)."""
        t = self.cfg.train
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters alone
        self.optimizer = torch.optim.AdamW(trainable, lr=t.lr, betas=t.betas,
                                           weight_decay=t.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / t.warmup_steps) if t.warmup_steps else 1.0)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Forward passes in model.dtype on float32 parameters (a no-op for float32)."""
        if self.compute_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.compute_dtype)

    def active_dropout(self) -> list[str]:
        """The policy's dropout settings above 0 (rl_div.learner.onpolicy.active_dropout)."""
        return active_dropout(self.model)

    # ---- forward passes without gradient -------------------------------------------------------
    @torch.no_grad()
    def policy_stats(self, batch: RolloutBatch, with_prompt: bool = False,
                     temperature: float | None = None) -> dict[str, torch.Tensor]:
        """old_logprobs, old_entropy [B, T] (and prompt_logprobs [B, P], ref_logprobs) for a batch,
        at the given sampling temperature (default: each row's own, rl_div.learner.forward.batch_temperature)."""
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {"old_logprobs": [], "old_entropy": [], "prompt_logprobs": [],
                                                "ref_logprobs": []}
        for micro in batch.micro_batches(self.cfg.train.micro_batch_size):
            logp, entropy, prompt_logp = self.policy_forward(micro, with_prompt, temperature)
            parts["old_logprobs"].append(logp.cpu())
            parts["old_entropy"].append(entropy.cpu())
            if prompt_logp is not None:
                parts["prompt_logprobs"].append(prompt_logp.cpu())
            if self.has_reference:
                parts["ref_logprobs"].append(self._ref_logprobs(micro, temperature).cpu())
        return {k: torch.cat(v) for k, v in parts.items() if v}

    @torch.no_grad()
    def _ref_logprobs(self, micro: RolloutBatch, temperature: float | None) -> torch.Tensor:
        """The frozen reference's log-probs of the response tokens [B, T] (the KL term's): the
        reference copy's, or with LoRA the policy's module with its adapters disabled."""
        chunk_rows = self.cfg.train.logit_chunk_rows
        temps = batch_temperature(micro, temperature, self.cfg.rollout.temperature)
        if self.lora is not None:
            with self.autocast(), self.lora.reference():
                return policy_forward(self.model, micro, chunk_rows, temperature=temps, packing=self.packing)[0]
        assert self.ref_model is not None
        with self.autocast():
            return policy_forward(self.ref_model, micro, chunk_rows, temperature=temps, packing=self.packing)[0]

    # ---- the update ----------------------------------------------------------------------------
    def update_on_policy(self, batch: RolloutBatch, loss_overrides: dict[str, Any] | None = None,
                         ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """The update without the separate forward, for a batch without old_logprobs when pi_old is
        the policy being updated (rl_div.learner.onpolicy: one PPO epoch, one optimizer step, no dropout).

        The loss's own forward is pi_old: old log-probs are its log-probs detached (ratio exactly 1),
        H_old its entropies detached, and the reference log-probs are computed in the same
        micro-batch loop. Returns the update's metrics and {old_logprobs, old_entropy} [B, T] float32
        on CPU, the numbers policy_stats would have given, for the step metrics; a step that was
        skipped (no signal, not finite) changed no weight, and policy_stats gives them.

        An advantage with a row-local split (ARM) is finished here from the same forward
        (rl_div.learner.fused_advantage.RowShaper; batch.advantages holds only its reward part): then the
        returned dict also has the final ``advantages`` [B], and the metrics the estimator's.
        """
        fused, why = fuses_policy_forward(self.cfg, self.active_dropout())
        if not fused or batch.old_logprobs is not None:
            raise ValueError(f"update_on_policy: the update's forward is not pi_old here ({why}); "
                             "use policy_stats and update")
        self._on_policy_stats = {"old_logprobs": [], "old_entropy": []}
        shaper = self._shaper = RowShaper.for_batch(self.cfg, batch)
        try:
            metrics = self.update(batch, loss_overrides)
            stats = {k: torch.cat(v) for k, v in self._on_policy_stats.items() if v}
        finally:
            self._on_policy_stats = self._shaper = None
        if metrics["train/optimizer_steps"] != 1:
            stats = self.policy_stats(batch, with_prompt=shaper is not None and shaper.needs_prompt_logprobs)
            if shaper is not None:  # the weights did not change: shape every row from policy_stats's numbers
                shaper = RowShaper.for_batch(self.cfg, batch)
                assert shaper is not None
                shaper.shape(batch, stats["old_logprobs"], stats.get("prompt_logprobs"),
                             prompt_logprob_mask(batch.prompt_mask))
        out = {"old_logprobs": stats["old_logprobs"], "old_entropy": stats["old_entropy"]}
        if shaper is not None:
            finished = shaper.finish()
            metrics.update(finished.metrics)
            out["advantages"] = finished.advantages
        return metrics, out

    def update(self, batch: RolloutBatch, loss_overrides: dict[str, Any] | None = None) -> dict[str, float]:
        """PPO epochs over mini-batches; each optimizer step accumulates micro-batch gradients
        (rl_div.learner.update_loop runs it: the loop, skip and non-finite rules and metrics that
        the FSDP2 ranks share, over this learner's mini_batch_plans).

        loss_overrides: loss parameters merged over algo.loss_params for this update (the collapse
        guard's entropy_coef).

        A mini-batch whose advantages are all zero is skipped (no optimizer step), and so is one
        whose loss or gradient norm is not finite; both are counted in the returned metrics.
        """
        assert batch.advantages is not None
        assert batch.old_logprobs is not None or self._on_policy_stats is not None, "policy_stats first"
        return run_plans(self, batch, self.mini_batch_plans(batch), loss_overrides=loss_overrides)

    def mini_batch_plans(self, batch: RolloutBatch) -> Iterator[MiniBatchPlan]:
        """This learner's update as plans: per PPO epoch a permutation drawn from self.generator
        (batch order when one mini-batch holds the batch), mini-batches of train.mini_batch_size
        rows, micro-batches of train.micro_batch_size consecutive rows. Lazy: each plan is made when
        the loop asks for it, after the previous step, so the permutation draws from the generator
        between steps and the skip test sees the rows a fused shaper has shaped so far."""
        cfg = self.cfg.train
        mini_size = cfg.mini_batch_size or batch.size
        response_tokens = loss_mask(batch, self.cfg).bool().sum(dim=1).tolist()
        assert batch.advantages is not None
        for _ in range(cfg.ppo_epochs if batch.size else 0):
            order = (torch.randperm(batch.size, generator=self.generator) if mini_size < batch.size
                     else torch.arange(batch.size)).tolist()
            for start in range(0, batch.size, mini_size):
                rows = order[start : start + mini_size]
                advantages = batch.advantages[rows] if self._shaper is None else self._shaper.may_be_nonzero().float()
                skip = cfg.skip_zero_signal_steps and not self._has_signal(advantages)
                yield row_chunk_plan(rows, skip, response_tokens, cfg.micro_batch_size)

    def claim_memory(self) -> None:
        """Before an update: the optimizer state back on the device when train.offload_optimizer
        keeps it in CPU memory between updates (release_memory's counterpart)."""
        if self.cfg.train.offload_optimizer:
            move_optimizer_state(self.optimizer, to_cpu=False)

    def release_memory(self) -> None:
        """After an update: nothing of it stays allocated on the accelerator but the weights (and the
        optimizer state unless offloaded), so a colocated engine can take the memory back."""
        if self.cfg.train.offload_optimizer:
            move_optimizer_state(self.optimizer, to_cpu=True)
        # Cached blocks go back to the driver only for a colocated engine (cuda_ipc); with the GPU to
        # itself the learner keeps them for its next update instead of paying cudaMalloc again.
        if next(self.model.parameters()).is_cuda and self.cfg.rollout.weight_sync == "cuda_ipc":
            torch.cuda.empty_cache()

    def _has_signal(self, advantages: torch.Tensor) -> bool:
        """Whether any loss term would give a gradient: a non-zero advantage (advantages [B]), or a
        KL, entropy or KL-Cov term that acts regardless of the advantage."""
        other_terms = other_loss_terms(self.loss_params, self.cfg.algo.token_weight)
        return bool((advantages != 0).any()) or other_terms

    def policy_forward(self, micro: RolloutBatch, with_prompt: bool = False, temperature: float | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """policy_forward of the policy under autocast, at the rows' sampling temperature by default (the
        sharded learner runs it through its FSDP root module instead)."""
        with self.autocast():
            return policy_forward(self.model, micro, self.cfg.train.logit_chunk_rows, with_prompt,
                                  batch_temperature(micro, temperature, self.cfg.rollout.temperature), self.packing)

    def micro_loss(self, micro: RolloutBatch, token_total: float, seq_total: float,
                   token_weight_out: TokenWeightOutput | None = None,
                   ) -> tuple[LossOutput, TokenWeightOutput, torch.Tensor, torch.Tensor]:
        """Forward (with grad), token weights (unless given, e.g. computed over the mini-batch) and
        the loss of one micro-batch, divided by the given mini-batch denominators (so micro-batch
        losses sum to the mini-batch loss), with the Dr. GRPO constant (rollout.max_new_tokens)
        unless loss_params set it. Returns (loss output, token weights, entropy [b, T], mask [b, T])."""
        algo = self.cfg.algo
        shaper = self._shaper if micro.old_logprobs is None else None
        logp, entropy, prompt_logp = self.policy_forward(micro, shaper is not None and shaper.needs_prompt_logprobs)
        # Batch tensors travel on CPU; the loss is computed where the policy lives.
        dev = logp.device
        mask = loss_mask(micro, self.cfg).to(dev, torch.float32)  # without truncated rows under rollout.overlong=mask
        advantages = micro.advantages.to(dev)
        if micro.old_logprobs is None:  # update_on_policy: this forward is pi_old
            old_logp, old_entropy = logp.detach(), entropy.detach()
            ref_logp = None if not self.has_reference else self._ref_logprobs(micro, None)
            assert self._on_policy_stats is not None
            self._on_policy_stats["old_logprobs"].append(old_logp.cpu())
            self._on_policy_stats["old_entropy"].append(old_entropy.cpu())
            if shaper is not None:  # a row-local advantage, finished from this forward (pi_old of these rows)
                advantages = shaper.shape(micro, old_logp, prompt_logp, prompt_logprob_mask(micro.prompt_mask)).to(dev)
        else:
            old_logp = micro.old_logprobs.to(dev)
            old_entropy = micro.old_entropy.to(dev) if micro.old_entropy is not None else None
            ref_logp = micro.ref_logprobs.to(dev) if micro.ref_logprobs is not None else None
        if token_weight_out is None:
            token_weight_out = TOKEN_WEIGHTS[algo.token_weight](
                TokenWeightInputs(advantages=advantages[:, None].expand_as(logp), logprobs=logp.detach(),
                                  old_logprobs=old_logp, mask=mask, old_entropy=old_entropy,
                                  entropy=entropy.detach(), generator=self.generator),
                **algo.token_weight_params)
        out = LOSSES[algo.loss](
            LossInputs(logprobs=logp, old_logprobs=old_logp, advantages=advantages, mask=mask,
                       token_weights=token_weight_out.weights.to(dev),
                       kl_penalty_coef=None if token_weight_out.kl_penalty_coef is None
                       else token_weight_out.kl_penalty_coef.to(dev), ref_logprobs=ref_logp, entropy=entropy,
                       behavior_logprobs=None if micro.behavior_logprobs is None else micro.behavior_logprobs.to(dev)),
            **{"token_denominator": token_total, "seq_denominator": seq_total,
               "norm_constant": float(self.cfg.rollout.max_new_tokens), **self.loss_params})
        return out, token_weight_out, entropy, mask

    def check_shaped_signal(self) -> None:
        """Raise ShapingLeftNoSignal (gradients dropped) when a fused row-local advantage finished
        all zero under train.skip_zero_signal_steps: the step update() would have skipped, had the
        advantages been known before the forward."""
        if self._shaper is not None and self.cfg.train.skip_zero_signal_steps and not self._has_signal(
                self._shaper.finish().advantages):
            self.optimizer.zero_grad(set_to_none=True)
            raise ShapingLeftNoSignal

    # ---- weights and checkpoints ---------------------------------------------------------------
    def get_weights(self) -> dict[str, torch.Tensor]:
        """CPU copy of the policy's state dict in the engines' dtype (goes through the Ray object store);
        with LoRA, what sync_tensors lists."""
        if self.lora is not None:
            weights = {name: t.clone() for name, t in self.sync_tensors()}
            return weights | {alias: weights[name] for alias, name in self.lora.sync_aliases().items()}
        return state_dict_payload(self.model, self.sync_dtype)

    def sync_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, CPU tensor in the engines' dtype) for every distinct tensor, one at a time (with
        LoRA: the adapter tensors, or the merged weights; rl_div.learner.lora)."""
        if self.lora is not None:
            return cpu_engine_tensors(self.lora.sync_tensors(), self.sync_dtype)
        return model_tensors(self.model, self.sync_dtype)

    def get_weight_buckets(self, put: Callable[[dict[str, torch.Tensor]], Any] = put_bucket) -> BucketPayload:
        """object_store weight sync: sync_tensors in buckets of rollout.weight_sync_chunk_mb, each
        put (into the Ray object store) when full; the process holds one bucket and one tensor."""
        cap = int(self.cfg.rollout.weight_sync_chunk_mb * 2**20)
        aliases = tied_names(self.model) if self.lora is None else self.lora.sync_aliases()
        return bucket_payload(self.sync_tensors(), cap, put, aliases)

    def get_version(self) -> int:
        """Policy version: the number of optimizer steps taken."""
        return self.version

    def save(self, ckpt_dir: str) -> None:
        """policy/ (HF safetensors) and learner_state.pt; with LoRA, the exports train.lora.save asks
        for and the adapter tensors inside learner_state.pt (rl_div.learner.lora)."""
        extra: dict[str, Any] = {}
        if self.lora is None:
            save_policy(self.model, self.tokenizer, Path(ckpt_dir) / "policy")
        else:
            self.lora.save(Path(ckpt_dir), self.tokenizer)
            extra[LORA_STATE_KEY] = self.lora.adapter_state()
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                    "version": self.version, **extra}, Path(ckpt_dir) / "learner_state.pt")

    def load(self, ckpt_dir: str) -> None:
        """Resume from a checkpoint of this strategy, or of train.strategy 'fsdp2' at any number of
        ranks (its dcp/ folder holds model and optimizer)."""
        from safetensors.torch import load_file

        # weights_only: a checkpoint from elsewhere cannot run code on load (optimizer, scheduler and RNG
        # states are tensors, numbers, lists and dicts, which the safe unpickler allows).
        saved = torch.load(Path(ckpt_dir) / "learner_state.pt", weights_only=True)
        if self.lora is not None and LORA_STATE_KEY not in saved:
            raise RuntimeError(f"checkpoint {ckpt_dir} holds no LoRA adapters (written without train.lora)")
        if self.lora is not None and not (Path(ckpt_dir) / "dcp").is_dir():
            self.lora.load_adapter_state(saved[LORA_STATE_KEY])  # policy/ is merged (or absent): not read
            self.optimizer.load_state_dict(saved["optimizer"])
        elif (Path(ckpt_dir) / "dcp").is_dir():
            from rl_div.learner.checkpoint_io import load_dcp

            load_dcp(self.model, self.optimizer, Path(ckpt_dir) / "dcp")
        else:
            state: dict[str, Any] = {}
            for f in sorted((Path(ckpt_dir) / "policy").glob("*.safetensors")):
                state.update(load_file(str(f)))
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            # Tied embeddings are stored once; anything else missing is a broken checkpoint.
            missing = [k for k in missing if "lm_head" not in k]
            if missing or unexpected:
                raise RuntimeError(f"checkpoint {ckpt_dir} does not match the model: missing={missing} "
                                   f"unexpected={unexpected}")
            self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.version = saved["version"]
