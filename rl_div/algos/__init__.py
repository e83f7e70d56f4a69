"""Name -> function registries of the learner's algorithms; importing registers the built-ins.

``ADVANTAGES``: per-response advantages (grpo, arm, passk, unlikeliness, repo; w_reinforce, nsr, psr,
maxrl, qae; best_of_group, pkpo).
``TOKEN_WEIGHTS``: per-token loss weights / entropy interventions (none, steer, clip_cov, kl_cov,
high_entropy_mask, entropy_advantage). ``LOSSES``: policy losses (ppo_clip, pg). Add your own with
``@ADVANTAGES.register("name", needs=AdvantageNeeds(...))`` in a module listed in the config's
``plugins``; ``ADVANTAGES.needs(name)`` / ``TOKEN_WEIGHTS.needs(name)`` say what an entry reads.
"""

from rl_div.algos import advantages as _advantages  # noqa: F401  (registers the built-in estimators)
from rl_div.algos import advantages_outcome as _advantages_outcome  # noqa: F401  (w_reinforce, maxrl, qae, ...)
from rl_div.algos import advantages_passk as _advantages_passk  # noqa: F401  (best_of_group, pkpo)
from rl_div.algos import entropy_advantage as _entropy_advantage  # noqa: F401  (registers entropy_advantage)
from rl_div.algos import repo as _repo  # noqa: F401  (registers repo)
from rl_div.algos.advantage_base import (
    ADVANTAGES,
    AdvantageInputs,
    AdvantageNeeds,
    AdvantageOutput,
    answer_confidence,
    grpo_advantages,
    prompt_confidence,
)
from rl_div.algos.grouping import group_mean_std
from rl_div.algos.losses import LOSSES, LossInputs, LossOutput, aggregate, count_denominators, k3_kl
from rl_div.algos.token_weights import (
    TOKEN_WEIGHTS,
    TokenWeightInputs,
    TokenWeightNeeds,
    TokenWeightOutput,
    steer_lambda,
    steer_omega,
    token_covariance,
)

__all__ = [
    "ADVANTAGES",
    "LOSSES",
    "TOKEN_WEIGHTS",
    "AdvantageInputs",
    "AdvantageNeeds",
    "AdvantageOutput",
    "LossInputs",
    "LossOutput",
    "TokenWeightInputs",
    "TokenWeightNeeds",
    "TokenWeightOutput",
    "aggregate",
    "answer_confidence",
    "count_denominators",
    "group_mean_std",
    "grpo_advantages",
    "k3_kl",
    "prompt_confidence",
    "steer_lambda",
    "steer_omega",
    "token_covariance",
]
