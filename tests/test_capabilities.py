"""Capabilities declared at registration and read with Registry.needs (issue 21, item 3): the registry
stores them, the default applies to entries that declare nothing, the built-ins' declarations match
what their functions read, and the planner, the config checks and the TRL trainer follow them."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from rl_div.algos import ADVANTAGES, TOKEN_WEIGHTS, AdvantageNeeds, TokenWeightInputs, TokenWeightNeeds
from rl_div.config import ConfigError, load_config
from rl_div.learner.plan import other_loss_terms
from rl_div.registry import Registry, UnknownNameError, import_plugins


@dataclass(frozen=True)
class Reads:
    logprobs: bool = True


def test_a_declaration_is_stored_next_to_the_function_and_the_default_fills_in() -> None:
    reg: Registry = Registry("thing", needs_type=Reads)
    reg.register("declared", needs=Reads(logprobs=False))(lambda: 1)
    reg.register("silent")(lambda: 2)
    assert reg.needs("declared") == Reads(logprobs=False)
    assert reg.needs("silent") == Reads(logprobs=True)
    with pytest.raises(UnknownNameError, match="did you mean 'silent'"):
        reg.needs("silnt")
    reg.register("declared", overwrite=True)(lambda: 3)  # a new registration without needs: the default
    assert reg.needs("declared") == Reads(logprobs=True)


def test_a_declaration_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="needs must be Reads"):
        Registry("thing", needs_type=Reads).register("x", needs=AdvantageNeeds())
    plain: Registry = Registry("plain")
    with pytest.raises(TypeError, match="no declaration"):
        plain.register("x", needs=Reads())
    plain.register("x")(lambda: 1)
    with pytest.raises(TypeError, match="declares no capabilities"):
        plain.needs("x")


def test_undeclared_estimators_read_the_policy_and_old_attributes_still_count() -> None:
    import_plugins(["plugins.my_algos"])
    assert ADVANTAGES.needs("test_raw_reward") == AdvantageNeeds(response_logprobs=True, prompt_logprobs=False)
    assert ADVANTAGES.needs("test_raw_reward").policy_logprobs
    assert ADVANTAGES.needs("test_legacy_reward_only") == AdvantageNeeds(response_logprobs=False)
    assert not ADVANTAGES.needs("test_reward_only").policy_logprobs
    assert ADVANTAGES.needs("test_prompt_reader").prompt_logprobs
    assert TOKEN_WEIGHTS.needs("test_half_weights") == TokenWeightNeeds(reweights=True, entropy=True, kl_term=False)


def test_builtin_estimator_declarations() -> None:
    """Written out from each estimator's definition (ALGORITHMS.md section 1), not read from the code."""
    assert ADVANTAGES.needs("grpo") == AdvantageNeeds(response_logprobs=False)
    assert ADVANTAGES.needs("passk") == AdvantageNeeds(response_logprobs=False, verdicts=True)
    assert ADVANTAGES.needs("unlikeliness") == AdvantageNeeds(response_logprobs=False, behavior_logprobs=True)
    assert ADVANTAGES.needs("arm") == AdvantageNeeds(response_logprobs=True, prompt_logprobs=True, row_local=True,
                                                     verdicts=True)


@pytest.mark.parametrize("name", ["grpo", "passk", "w_reinforce", "nsr", "psr", "maxrl", "qae", "best_of_group",
                                  "pkpo"])
def test_verdicts_declaration_matches_what_the_estimator_reads(name: str) -> None:
    """verdicts=True: without ``correct`` it refuses; verdicts=False: it never reads ``correct`` (the same
    advantages without it, and with every verdict flipped)."""
    from rl_div.algos import AdvantageInputs

    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    given = ADVANTAGES[name](AdvantageInputs(rewards=rewards, group_index=index, correct=rewards.clone()))
    if ADVANTAGES.needs(name).verdicts:
        with pytest.raises(ValueError, match="correct"):
            ADVANTAGES[name](AdvantageInputs(rewards=rewards, group_index=index))
    else:
        for correct in (None, 1 - rewards):
            got = ADVANTAGES[name](AdvantageInputs(rewards=rewards, group_index=index, correct=correct))
            assert torch.equal(got.advantages, given.advantages)


def weight_inputs(with_entropy: bool) -> TokenWeightInputs:
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 5, generator=g) * 3
    entropy = torch.rand(3, 5, generator=g) * 2 if with_entropy else None
    return TokenWeightInputs(advantages=torch.randn(3, 1, generator=g).expand(3, 5), logprobs=logp,
                             old_logprobs=logp + 0.01, mask=torch.ones(3, 5), old_entropy=entropy, entropy=entropy,
                             generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["none", "steer", "clip_cov", "kl_cov", "high_entropy_mask"])
def test_builtin_token_weight_declarations_match_what_they_do(name: str) -> None:
    needs, fn = TOKEN_WEIGHTS.needs(name), TOKEN_WEIGHTS[name]
    out = fn(weight_inputs(with_entropy=True))
    assert (out.kl_penalty_coef is not None) is needs.kl_term
    if not needs.reweights:
        assert torch.equal(out.weights, torch.ones(3, 5))
    if needs.entropy:
        with pytest.raises(ValueError, match="entropy"):
            fn(weight_inputs(with_entropy=False))
    else:  # the same weights without entropies: it never reads them
        without = fn(weight_inputs(with_entropy=False))
        assert torch.equal(without.weights, out.weights)


def test_loss_terms_that_act_without_an_advantage_follow_the_kl_term_declaration() -> None:
    import_plugins(["plugins.my_algos"])
    assert other_loss_terms({}, "kl_cov") and other_loss_terms({}, "test_kl_everywhere")
    assert not other_loss_terms({}, "clip_cov") and not other_loss_terms({}, "test_half_weights")
    assert other_loss_terms({"kl_coef": 0.1}, "none") and other_loss_terms({"entropy_coef": 0.01}, "steer")
    assert not other_loss_terms({"kl_coef": 0.0}, "none")


def test_a_sharded_learner_needs_mini_batch_weights_for_a_reweighting_plugin() -> None:
    plugin = ["train.strategy=fsdp2", "run.plugins=[plugins.my_algos]"]
    with pytest.raises(ConfigError, match="token_weight_scope='mini' for token weight 'test_half_weights'"):
        load_config(None, [*plugin, "algo.token_weight=test_half_weights"])
    load_config(None, [*plugin, "algo.token_weight=test_half_weights", "train.token_weight_scope=mini"])
    load_config(None, [*plugin, "algo.token_weight=none"])  # declares it does not reweight


@pytest.mark.parametrize(("advantage", "token_weight", "forward"), [
    ("grpo", "none", False), ("passk", "none", False), ("arm", "none", True), ("unlikeliness", "none", True),
    ("grpo", "steer", True), ("test_reward_only", "none", False), ("test_raw_reward", "none", True),
    ("test_prompt_reader", "none", True),
])
def test_trl_runs_its_policy_forward_as_the_declarations_say(advantage: str, token_weight: str, forward: bool) -> None:
    pytest.importorskip("trl")
    from rl_div.integrations.trl import RLDivGRPOTrainer

    import_plugins(["plugins.my_algos"])
    trainer = SimpleNamespace(rl_div_advantage=advantage, rl_div_token_weight=token_weight)
    assert RLDivGRPOTrainer._needs_policy_stats(trainer) is forward  # type: ignore[arg-type]


def test_a_config_built_in_code_is_refused_before_its_output_folder_is_claimed(tmp_path) -> None:
    """fsdp2 + a per-micro-batch reweighting token weight, set on a Config after load_config checked it:
    Trainer refuses it in check_inputs, before it claims (creates) run.output_dir or starts anything."""
    from rl_div.models.loading import build_char_tokenizer, make_tiny_llama, save_policy
    from rl_div.tasks import TASKS
    from rl_div.train.loop import Trainer

    tok = build_char_tokenizer(TASKS["prime_gap"].alphabet)
    model = save_policy(make_tiny_llama(tok, seed=0), tok, tmp_path / "tiny")
    out = tmp_path / "run"
    cfg = load_config(None, [f"model.path={model}", f"run.output_dir={out}", "algo.token_weight=steer",
                             "train.token_weight_scope=mini", "train.strategy=fsdp2", "train.num_learners=2"])
    cfg.train.token_weight_scope = "micro"  # a section's own validators pass; the cross-registry rule is a check
    with pytest.raises(ConfigError, match="token_weight_scope='mini' for token weight 'steer'"):
        Trainer(cfg)
    assert not out.exists()
