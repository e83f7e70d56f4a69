"""Reward functions by name: verifiers (math_verify, task verifiers), format, novelty, partition, dra,
outcome_ucb, outcome_batch.

    from rewards import REWARDS, RewardScorer, RewardSpec
    scorer = RewardScorer([RewardSpec("math_verify"), RewardSpec("novelty", weight=0.5)], timeout_s=5)
    result = scorer.score(completions, records, group_index)   # RewardResult: total, correct, ...

Register your own with ``@register_reward(name, scope="sample"|"group", verifier=...)`` in a
plugin module (listed in the config's ``plugins``) so the isolated worker registers it too.
"""

from rewards.answers import ANSWER_EXTRACTORS, extract_answer, last_boxed, last_number
from rewards.benchmark import benchmark_answer, benchmark_verify, tidy_answer
from rewards.dra import dra_reward, redundancy_weights
from rewards.embedding import embed, get_embedder
from rewards.format import format_reward
from rewards.isolation import IsolatedPool, IsolatedWorker, Outcome, WorkerStartError
from rewards.math import GoldParseError, math_verify_reward, parse_gold, task_verifier
from rewards.novelty import novelty_reward, novelty_rewards, novelty_scores
from rewards.outcome_exploration import outcome_batch_reward, outcome_ucb_reward
from rewards.partition import EQUIVALENCE_TESTS, partition_diversity, partition_reward
from rewards.registry import REWARDS, is_verifier, register_reward, reward_scope
from rewards.runner import RewardResult, RewardScorer, RewardSpec, score_batch, score_group
from rewards.tasks import TaskVerifier, register_task_rewards

register_task_rewards()  # built-in synthetic tasks: their extractor and verifier under the task's name

__all__ = [
    "ANSWER_EXTRACTORS",
    "EQUIVALENCE_TESTS",
    "REWARDS",
    "GoldParseError",
    "IsolatedPool",
    "IsolatedWorker",
    "Outcome",
    "RewardResult",
    "RewardScorer",
    "RewardSpec",
    "TaskVerifier",
    "WorkerStartError",
    "dra_reward",
    "benchmark_answer",
    "benchmark_verify",
    "embed",
    "extract_answer",
    "format_reward",
    "get_embedder",
    "is_verifier",
    "last_boxed",
    "last_number",
    "math_verify_reward",
    "novelty_reward",
    "novelty_rewards",
    "novelty_scores",
    "outcome_batch_reward",
    "outcome_ucb_reward",
    "parse_gold",
    "partition_diversity",
    "partition_reward",
    "redundancy_weights",
    "register_reward",
    "register_task_rewards",
    "reward_scope",
    "score_batch",
    "score_group",
    "task_verifier",
    "tidy_answer",
]
