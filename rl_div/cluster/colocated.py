"""``rollout.colocate``: the learner actor that also samples, with the very module it trains.

Where a separate hf rollout actor holds a copy of the policy and takes the learner's weights after
every update (a state-dict copy through the Ray object store), this actor hands its own policy module
to the hf backend's sampler (rl_div.rollout.hf.HFSampler, the same code the rollout actor runs): no
copy, no sync, no second process loading torch and the model. The rollout pipeline
(rl_div/train/rollout_pipeline.py) sends ``generate`` to this actor as it would to a rollout actor;
Ray runs one actor's calls in submission order, so a rollout always samples the weights of the update
before it. The rows carry the learner's version as their behaviour version (the policy lag is 0), and
``sync/logprob_gap`` compares the sampler's cached, token-by-token forward with the learner's full
forward of the same weights: no sync error can enter it, only float order (below 1e-5 in tests/test_colocate.py).

It lives in cluster/ (the actor hosts) because it joins learner/ and rollout/, which import neither
each other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rl_div.learner.single import Learner
from rl_div.rollout.hf import HFSampler, plain_generation

if TYPE_CHECKING:
    from rl_div.config import Config
    from rl_div.data import PromptRecord, RolloutBatch
    from rl_div.rollout.base import SamplingSpec


class ColocatedLearner(Learner):
    """A Learner that is also the run's one rollout worker (generate, policy_version)."""

    def __init__(self, cfg: Config, model_path: str) -> None:
        super().__init__(cfg, model_path)
        device = str(next(self.model.parameters()).device)
        # self.model is the trained module (PEFT's injected model with train.lora): samples follow its adapters
        self.sampler = HFSampler(self.model, self.tokenizer, device=device,
                                 use_chat_template=cfg.model.use_chat_template,
                                 prompt_template=cfg.data.prompt_template, max_batch_rows=cfg.rollout.max_batch_rows)

    def generate(self, prompts: list[PromptRecord], spec: SamplingSpec) -> RolloutBatch:
        """The rollout worker's generate on the policy being trained (in eval mode: no dropout, as the
        rollout actor's copy; the update loop puts train mode back), under the learner's autocast."""
        self.model.eval()
        with self.autocast(), plain_generation(self.model):
            return self.sampler.sample(prompts, spec, self.version)

    def policy_version(self) -> int:
        """The version generate samples with: the learner's own."""
        return self.version
