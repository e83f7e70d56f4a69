"""Config-time checks of the methods: typed ``*_params`` (a typo or a wrong type is one line naming the
field), the parameter listing of ``rl-div config-help``, KL-Cov refused where it cannot act, and every
new method's preset and demo config loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rl_div.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
NEW_METHODS = ["w_reinforce", "nsr", "psr", "maxrl", "qae", "best_of_group", "pkpo"]


@pytest.mark.parametrize(("override", "message"), [
    ("algo.advantage_params={lamb: 0.2}", r"algo\.advantage_params: unknown advantage 'w_reinforce' parameter "
                                          r"'lamb'; did you mean 'lam'\?"),
    ("algo.advantage_params={lam: '0.1x'}", r"algo\.advantage_params\.lam: advantage 'w_reinforce' parameter 'lam' "
                                            r"takes float, got str '0\.1x'"),
    ("algo.advantage_params={lam: '0.1'}", r"takes float, got str '0\.1'"),  # a quoted number is a string
    ("algo.advantage_params={lam: true}", r"takes float, got bool True"),
])
def test_advantage_params_are_typed(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, ["algo.advantage=w_reinforce", override])
    assert "\n" not in str(err.value)


def test_typed_params_across_registries() -> None:
    with pytest.raises(ConfigError, match=r"algo\.advantage_params\.k: advantage 'pkpo' parameter 'k' takes int, "
                                          r"got float 2\.5"):
        load_config(None, ["algo=pkpo", "algo.advantage_params={k: 2.5}"])
    with pytest.raises(ConfigError, match=r"algo\.advantage_params\.k_schedule: .*takes list\[list\[int\]\] \| None"):
        load_config(None, ["algo=pkpo", "algo.advantage_params={k_schedule: [[0, 'eight']]}"])
    with pytest.raises(ConfigError, match=r"algo\.advantage_params\.interpolation: advantage 'qae' parameter "
                                          r"'interpolation' takes Literal\['linear', 'lower'"):
        load_config(None, ["algo=qae", "algo.advantage_params={interpolation: cubic}"])
    with pytest.raises(ConfigError, match=r"algo\.loss_params\.clip_high: loss 'ppo_clip' parameter 'clip_high' "
                                          r"takes float"):
        load_config(None, ["algo.loss_params={clip_high: high}"])
    with pytest.raises(ConfigError, match=r"algo\.token_weight_params\.lambda_min: token weight 'steer'"):
        load_config(None, ["algo=steer", "algo.token_weight_params={lambda_min: [0.8]}"])
    with pytest.raises(ConfigError, match=r"reward\.rewards\[0\]\.params\.strict: reward 'math_verify' parameter "
                                          r"'strict' takes bool, got str 'yes_please'"):
        load_config(None, ["reward.rewards=[{name: math_verify, params: {strict: yes_please}}]"])
    # right types pass: an int where a float belongs, a YAML list of lists, None for an optional
    cfg = load_config(None, ["algo=pkpo", "algo.advantage_params={k: 2, k_schedule: [[0, 4], [10, 1]]}",
                             "algo.loss_params={clip_high: 1, norm_constant: null}"])
    assert cfg.algo.advantage_params["k_schedule"] == [[0, 4], [10, 1]]


def test_config_help_lists_each_methods_parameters() -> None:
    out = subprocess.run([sys.executable, "-m", "rl_div.cli", "config-help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert "algo.advantage_params:" in out and "algo.token_weight_params:" in out
    assert "  w_reinforce: lam: float = 0.1" in out
    assert "  pkpo: k: int = 4, k_schedule: list[list[int]] | None = None, times_group_size: bool = True" in out
    assert "  qae: quantile: float = 0.4, interpolation: Literal['linear', 'lower', 'higher', 'midpoint', " in out
    assert "  nsr: (none)" in out
    loss_line = next(line for line in out.splitlines() if line.startswith("  ppo_clip:"))
    assert "clip_low: float = 0.2" in loss_line and "token_denominator" not in loss_line  # the learner passes it
    assert "  math_verify: float_rounding: int = 6, strict: bool = True" in out  # hints behind TYPE_CHECKING too
    assert "  train.lr = 0.001" in out  # the config fields are still there


# ---- KL-Cov on the default path ------------------------------------------------------------------------
def test_kl_cov_with_one_optimizer_step_is_refused() -> None:
    """Before the fix this loaded, and the run trained with a |log ratio| term that is 0 (ratio 1)."""
    with pytest.raises(ConfigError, match=r"algo\.token_weight='kl_cov' does nothing with one optimizer step per "
                                          r"batch .* set train\.ppo_epochs>=2 or a smaller train\.mini_batch_size"):
        load_config(None, ["algo=kl_cov"])
    with pytest.raises(ConfigError, match="does nothing"):
        load_config(None, ["algo=kl_cov", "train.mini_batch_size=64"])  # = the 8 x 8 rows: still one step
    assert load_config(None, ["algo=kl_cov", "train.ppo_epochs=2"]).algo.token_weight == "kl_cov"
    assert load_config(None, ["algo=kl_cov", "train.mini_batch_size=32"]).train.mini_batch_size == 32
    assert load_config(None, ["algo=clip_cov"]).algo.token_weight == "clip_cov"  # no KL term: fine


def test_kl_cov_acts_once_the_ratio_moves() -> None:
    """The second optimizer step sees ratio != 1, so KL-Cov's term and its gradient are non-zero there;
    at ratio 1 (the only step of the default path) both are exactly 0."""
    import torch

    from rl_div.algos import LOSSES, TOKEN_WEIGHTS, LossInputs, TokenWeightInputs

    gen = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(4, 6, generator=gen) * 0.9 + 0.05)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None].expand(4, 6)
    mask = torch.ones(4, 6)
    tw = TOKEN_WEIGHTS["kl_cov"](TokenWeightInputs(advantages=adv, logprobs=old, old_logprobs=old, mask=mask),
                                 fraction=0.2)

    def kl_grad(shift: float) -> torch.Tensor:
        logp = (old + shift).clone().requires_grad_(True)
        with_kl = LOSSES["ppo_clip"](LossInputs(logprobs=logp, old_logprobs=old, advantages=adv, mask=mask,
                                                token_weights=tw.weights, kl_penalty_coef=tw.kl_penalty_coef)).loss
        logp2 = (old + shift).clone().requires_grad_(True)
        without = LOSSES["ppo_clip"](LossInputs(logprobs=logp2, old_logprobs=old, advantages=adv, mask=mask,
                                                token_weights=tw.weights)).loss
        (g1,), (g2,) = torch.autograd.grad(with_kl, logp), torch.autograd.grad(without, logp2)
        return g1 - g2

    assert torch.equal(kl_grad(0.0), torch.zeros(4, 6))
    assert kl_grad(0.05).abs().sum() > 0


# ---- presets and demo configs of the new methods --------------------------------------------------------
@pytest.mark.parametrize("name", NEW_METHODS)
def test_presets_and_demo_configs_of_new_methods(name: str) -> None:
    assert load_config(None, [f"algo={name}"]).algo.advantage == name
    cfg = load_config(REPO / "configs" / f"demo_{name}.yaml")
    assert cfg.algo.advantage == name
