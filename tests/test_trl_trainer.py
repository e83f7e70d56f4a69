"""rl_div's advantage estimators and token weights inside TRL's GRPOTrainer: a few real TRL steps on
a tiny model; the advantages TRL logs are the ones its loss trains on, and on the first batch both
equal values recomputed here from the initial model by hand-written formulas."""

from __future__ import annotations

import copy
import itertools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch

from rl_div.models.loading import build_char_tokenizer, make_tiny_llama

pytest.importorskip("trl")

G = 4  # generations per prompt


def parity_verifier(prompts: list, completions: list[str], **_: Any) -> list[float]:
    """A stand-in verifier that a random tiny model passes about half the time."""
    return [float(bool(c) and ord(c[0]) % 2 == 0) for c in completions]


def run_trl(tmp_path: Path, reward_funcs: list | None = None, **method: Any
            ) -> tuple[list[dict], list[dict], torch.nn.Module, Any]:
    """Train 2 steps (rewards: reward_funcs, default the parity verifier alone); return per generation
    batch what was logged (with the first reward function's values), and per loss call what it got."""
    from datasets import Dataset
    from trl import GRPOConfig

    from rl_div.integrations.trl import RLDivGRPOTrainer

    generated: list[dict] = []
    trained: list[dict] = []

    class Recording(RLDivGRPOTrainer):
        def _generate_and_score_completions(self, inputs: Any) -> dict:
            out = super()._generate_and_score_completions(inputs)
            b = out["completion_ids"].shape[0]
            generated.append({"out": {k: v.clone() for k, v in out.items() if torch.is_tensor(v)},
                              "logged": list(self._logs["advantages"])[-b:],
                              "rewards": self._rl_div_rewards_per_func[:, 0].tolist()})
            return out

        def _compute_loss(self, model: Any, inputs: dict) -> torch.Tensor:
            trained.append({k: v.detach().clone() for k, v in inputs.items() if torch.is_tensor(v)})
            return super()._compute_loss(model, inputs)

    tok = build_char_tokenizer()
    model = make_tiny_llama(tok)
    initial = copy.deepcopy(model).eval()
    ds = Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a in range(4) for b in range(4)])
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=2 * G, num_generations=G,
                      max_completion_length=6, max_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                      learning_rate=1e-2, bf16=False, logging_steps=1, seed=0)
    Recording(model=model, processing_class=tok, reward_funcs=reward_funcs or [parity_verifier], args=args,
              train_dataset=ds,
              **method).train()
    return generated, trained, initial, tok


def row_keys(d: dict) -> list[tuple]:
    """(prompt tokens, completion tokens) of each row, padding removed."""
    keys = []
    for p, pm, c, cm in zip(d["prompt_ids"], d["prompt_mask"], d["completion_ids"], d["completion_mask"], strict=True):
        keys.append((tuple(p[pm.bool()].tolist()), tuple(c[cm.bool()].tolist())))
    return keys


def assert_logged_is_trained(generated: list[dict], trained: list[dict]) -> None:
    """Each row's logged advantage is the one the loss got (rows are shuffled before the loss). With
    token weights the loss gets A * w per token: then the generation batch's per-token advantages
    (checked against the logged A in the steer test) must be what the loss got."""
    assert len(generated) == len(trained) == 2
    for gen, loss_in in zip(generated, trained, strict=True):
        per_token = loss_in["advantages"].dim() == 2
        logged: dict[tuple, list] = defaultdict(list)
        source = gen["out"]["advantages"] if per_token else gen["logged"]
        for key, a, m in zip(row_keys(gen["out"]), source, gen["out"]["completion_mask"], strict=True):
            logged[key].append(tuple(round(float(x), 5) for x in a[m.bool()]) if per_token else round(a, 5))
        got: dict[tuple, list] = defaultdict(list)
        for key, a, m in zip(row_keys(loss_in), loss_in["advantages"], loss_in["completion_mask"], strict=True):
            got[key].append(tuple(round(float(x), 5) for x in a[m.bool()]) if per_token else round(float(a), 5))
        assert {k: sorted(v) for k, v in logged.items()} == {k: sorted(v) for k, v in got.items()}


def reference_stats(model: torch.nn.Module, out: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Response log p [B, T], entropy [B, T] and prompt log p [B, P] (position 0 = 0) from full logits."""
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        logp_all = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits.double(), dim=-1)
    token_logp = logp_all[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2)
    entropy = -(logp_all.exp() * logp_all).sum(-1)[:, :-1]
    t = out["completion_ids"].shape[1]
    prompt_logp = torch.cat([torch.zeros_like(token_logp[:, :1]), token_logp[:, :-t]], dim=1)
    return token_logp[:, -t:], entropy[:, -t:], prompt_logp


def grpo_by_hand(rewards: list[float]) -> list[float]:
    out = []
    for g in range(0, len(rewards), G):
        r = rewards[g:g + G]
        mean = sum(r) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in r) / G)
        out += [0.0 if max(r) == min(r) else (x - mean) / (std + 1e-6) for x in r]
    return out


def passk2_by_hand(verdicts: list[float]) -> list[float]:
    """Chen et al.'s pass@k advantages, k = 2, for one group of verdicts; an unscored (NaN) verdict is left
    out of the group (N = the scored rows) and gets 0."""
    scored = [x for x in verdicts if not math.isnan(x)]
    n, n_neg = len(scored), sum(1 for x in scored if x < 0.5)
    pass_k = 1 - math.comb(n_neg, 2) / math.comb(n, 2) if n >= 2 else 0.0
    sigma = math.sqrt(pass_k * (1 - pass_k))
    if sigma == 0:
        return [0.0] * len(verdicts)
    wrong = (1 - pass_k - math.comb(n_neg - 1, 1) / math.comb(n - 1, 1)) / sigma
    return [0.0 if math.isnan(x) else (1 - pass_k) / sigma if x > 0.5 else wrong for x in verdicts]


@pytest.mark.slow
def test_passk_advantages_in_trl(tmp_path: Path) -> None:
    generated, trained, _, _ = run_trl(tmp_path, advantage="passk", advantage_params={"k": 2})
    assert_logged_is_trained(generated, trained)
    for gen in generated:
        assert gen["logged"] == pytest.approx(by_group(gen["rewards"], passk2_by_hand), abs=1e-5)


@pytest.mark.slow
def test_arm_advantages_in_trl(tmp_path: Path) -> None:
    generated, trained, initial, _ = run_trl(tmp_path, advantage="arm", advantage_params={"alpha": 1.0})
    assert_logged_is_trained(generated, trained)
    out, r = generated[0]["out"], generated[0]["rewards"]  # the first batch: the policy is still `initial`
    logp, _, prompt_logp = reference_stats(initial, out)
    base = grpo_by_hand(r)
    want = []
    for i in range(len(r)):
        lps = sorted(logp[i][out["completion_mask"][i].bool()].tolist())
        n = max(1, math.ceil(0.2 * len(lps) - 1e-9))
        c_answer = math.exp(sum(lps[:n]) / n)
        real = out["prompt_mask"][i].bool().tolist()
        pl = [prompt_logp[i, j].item() for j in range(len(real)) if real[j] and j > 0 and real[j - 1]]
        c_prompt = math.exp(sum(pl) / len(pl))
        group_has_correct = any(x > 0.5 for x in r[i // G * G:(i // G + 1) * G])
        want.append(base[i] + (c_prompt - c_answer if group_has_correct else 0.0))
    assert generated[0]["logged"] == pytest.approx(want, abs=1e-4)
    assert any(x != pytest.approx(y, abs=1e-6) for x, y in zip(want, base, strict=True))  # ARM shaped something


@pytest.mark.slow
def test_unlikeliness_advantages_in_trl(tmp_path: Path) -> None:
    generated, trained, initial, _ = run_trl(tmp_path, advantage="unlikeliness", advantage_params={"beta": 0.5})
    assert_logged_is_trained(generated, trained)
    out, r = generated[0]["out"], generated[0]["rewards"]
    logp, _, _ = reference_stats(initial, out)
    mask = out["completion_mask"].double()
    mean_lp = ((logp * mask).sum(1) / mask.sum(1)).tolist()
    shaped = []
    for i in range(len(r)):
        g = range(i // G * G, (i // G + 1) * G)
        rank = sum(1 for j in g if mean_lp[j] < mean_lp[i] or (mean_lp[j] == mean_lp[i] and j < i))
        shaped.append(r[i] * (1 - 0.5 * rank / G))
    assert generated[0]["logged"] == pytest.approx(grpo_by_hand(shaped), abs=1e-4)


@pytest.mark.slow
def test_steer_token_weights_in_trl(tmp_path: Path) -> None:
    generated, trained, initial, _ = run_trl(tmp_path, advantage="grpo", token_weight="steer",
                                             token_weight_params={"variant": "exp", "lambda_min": 0.8})
    assert_logged_is_trained(generated, trained)
    out, r = generated[0]["out"], generated[0]["rewards"]
    logp, entropy, _ = reference_stats(initial, out)
    adv = torch.tensor(grpo_by_hand(r), dtype=torch.float64)
    assert generated[0]["logged"] == pytest.approx(adv.tolist(), abs=1e-5)
    valid = out["completion_mask"].bool()
    p = logp.exp().clamp(1e-8, 1 - 1e-8)
    omega = (adv[:, None] / logp.exp()) * p * (1 - p) * (p.log() + entropy)
    omega = torch.where(valid, omega, torch.zeros_like(omega))
    k = -math.log(0.8) / max(omega.abs()[valid].max().item(), 0.02)
    lam = torch.exp(-k * omega.abs()).clamp(0.8, 1.0)
    want = adv[:, None] * lam
    assert out["advantages"].shape == want.shape  # the loss gets per-token advantages
    assert out["advantages"][valid].double().tolist() == pytest.approx(want[valid].tolist(), abs=1e-4)
    assert (lam[valid] < 0.999).any()  # the weights did something


@pytest.mark.slow
def test_entropy_advantage_token_weights_in_trl(tmp_path: Path) -> None:
    generated, trained, initial, _ = run_trl(tmp_path, advantage="grpo", token_weight="entropy_advantage",
                                             token_weight_params={"alpha": 0.4, "kappa": 2.0})
    assert_logged_is_trained(generated, trained)
    out, r = generated[0]["out"], generated[0]["rewards"]
    _, entropy, _ = reference_stats(initial, out)
    adv = torch.tensor(grpo_by_hand(r), dtype=torch.float64)[:, None].expand_as(entropy)
    valid = out["completion_mask"].bool()
    want = adv + torch.minimum(0.4 * entropy, adv.abs() / 2.0)  # Cheng et al.'s A + min(alpha H, |A| / kappa)
    assert out["advantages"][valid].double().tolist() == pytest.approx(want[valid].tolist(), abs=1e-4)
    assert (want[valid] != adv[valid]).any()  # the shaping did something


@pytest.mark.slow
def test_repo_advantages_in_trl(tmp_path: Path) -> None:
    generated, trained, initial, _ = run_trl(tmp_path, advantage="repo", advantage_params={"zeta": 0.5})
    assert_logged_is_trained(generated, trained)
    out, r = generated[0]["out"], generated[0]["rewards"]
    logp, _, _ = reference_stats(initial, out)
    mask = out["completion_mask"].double()
    mean_lp = ((logp * mask).sum(1) / mask.sum(1)).tolist()
    base = grpo_by_hand(r)
    want = []
    for i in range(len(r)):
        group = r[i // G * G:(i // G + 1) * G]
        want.append(base[i] - (0.5 * mean_lp[i] if max(group) != min(group) else 0.0))
    assert generated[0]["logged"] == pytest.approx(want, abs=1e-4)
    assert any(x != pytest.approx(y, abs=1e-6) for x, y in zip(want, base, strict=True))


def test_bad_settings_fail_before_training(tmp_path: Path) -> None:
    from rl_div.integrations.trl import RLDivGRPOTrainer
    from rl_div.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="advantage"):
        RLDivGRPOTrainer(model=None, advantage="armm")
    from rl_div.config import ConfigError

    with pytest.raises(ConfigError, match=r"advantage_params: unknown advantage 'pkpo' parameter 'kk'; did you mean"):
        RLDivGRPOTrainer(model=None, advantage="pkpo", advantage_params={"kk": 2})
    with pytest.raises(ConfigError, match=r"advantage_params\.lam: advantage 'w_reinforce' parameter 'lam' takes"):
        RLDivGRPOTrainer(model=None, advantage="w_reinforce", advantage_params={"lam": "0.1"})
    with pytest.raises(ConfigError, match=r"token_weight_params\.lambda_min: token weight 'steer'"):
        RLDivGRPOTrainer(model=None, token_weight="steer", token_weight_params={"lambda_min": "low"})


def by_group(rewards: list[float], per_group: Any) -> list[float]:
    """per_group(list of G rewards) -> G advantages, applied to each consecutive group."""
    return [a for g in range(0, len(rewards), G) for a in per_group(rewards[g:g + G])]


def maxrl_by_hand(r: list[float]) -> list[float]:
    mean = sum(r) / len(r)
    return [0.0 if mean <= 0 else (x - mean) / (mean + 1e-6) for x in r]


def qae_by_hand(r: list[float]) -> list[float]:
    ordered, mean = sorted(r), sum(r) / len(r)
    pos = 0.4 * (len(r) - 1)  # linear interpolation between order statistics (torch.quantile's default)
    q = ordered[math.floor(pos)] + (pos - math.floor(pos)) * (ordered[math.ceil(pos)] - ordered[math.floor(pos)])
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (len(r) - 1))
    return [0.0 if max(r) == min(r) else (x - q) / (std + 1e-6) for x in r]


def best_of_group_by_hand(r: list[float]) -> list[float]:
    top = max(range(len(r)), key=lambda i: r[i])
    gap = r[top] - sorted(r)[-2]
    return [gap if i == top else 0.0 for i in range(len(r))]


def pkpo_by_hand(r: list[float], k: int) -> list[float]:
    """n times (1/C(n,k)) sum over k-subsets holding i of max(subset) - max(subset without i)."""
    out = [0.0] * len(r)
    for subset in itertools.combinations(range(len(r)), k):
        for i in subset:
            out[i] += max(r[j] for j in subset) - max(r[j] for j in subset if j != i)
    return [len(r) * o / math.comb(len(r), k) for o in out]


@pytest.mark.slow
@pytest.mark.parametrize(("advantage", "params", "want_of"), [
    ("w_reinforce", {"lam": 0.1}, lambda r, step: [0.1 if x > 0.5 else -1.0 for x in r]),
    ("nsr", {}, lambda r, step: [0.0 if x > 0.5 else -1.0 for x in r]),
    ("psr", {}, lambda r, step: [1.0 if x > 0.5 else 0.0 for x in r]),
    ("maxrl", {}, lambda r, step: by_group(r, maxrl_by_hand)),
    ("qae", {}, lambda r, step: by_group(r, qae_by_hand)),
    ("best_of_group", {"scale": "none"}, lambda r, step: by_group(r, best_of_group_by_hand)),
    # the k schedule reads TRL's global step: k = 2 on the first batch, k = 4 = G on the second
    ("pkpo", {"k_schedule": [[0, 2], [1, 4]]}, lambda r, step: by_group(r, lambda g: pkpo_by_hand(g, 2 + 2 * step))),
])
def test_issue23_advantages_in_trl(tmp_path: Path, advantage: str, params: dict, want_of: Any) -> None:
    generated, trained, _, _ = run_trl(tmp_path, advantage=advantage, advantage_params=params)
    assert_logged_is_trained(generated, trained)
    for step, gen in enumerate(generated):
        assert gen["logged"] == pytest.approx(want_of(gen["rewards"], step), abs=1e-5)
    if advantage != "best_of_group":  # with 0/1 rewards it acts only on groups with exactly one success
        assert any(a != 0 for gen in generated for a in gen["logged"])  # the batches carried some signal


def verifier_with_gaps(prompts: list, completions: list[str], **_: Any) -> list[float | None]:
    """The parity verifier, but unscored (None, NaN in TRL) when the first character's code is a multiple
    of 3: a verifier that failed on some rows."""
    return [None if c and ord(c[0]) % 3 == 0 else v
            for c, v in zip(completions, parity_verifier(prompts, completions), strict=True)]


def length_reward(prompts: list, completions: list[str], **_: Any) -> list[float]:
    """A format-like reward that scores every row (TRL's nansum keeps the total finite)."""
    return [len(c) / 10 for c in completions]


@pytest.mark.slow
def test_passk_in_trl_leaves_unscored_verdicts_out(tmp_path: Path) -> None:
    """A row whose verdict is NaN but whose total is finite is left out of passk's group (advantage 0); the
    others get Chen et al.'s values on their smaller group (N = the scored rows), worked here by hand."""
    generated, trained, _, _ = run_trl(tmp_path, reward_funcs=[verifier_with_gaps, length_reward],
                                       advantage="passk", advantage_params={"k": 2})
    assert_logged_is_trained(generated, trained)
    for gen in generated:
        assert gen["logged"] == pytest.approx(by_group(gen["rewards"], passk2_by_hand), abs=1e-5)
    assert any(math.isnan(x) for gen in generated for x in gen["rewards"])  # the gaps were exercised
