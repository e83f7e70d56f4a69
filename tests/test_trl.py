"""rl_div rewards inside TRL's GRPOTrainer: the adapter's values, and a real 2-step TRL run."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from rewards import RewardSpec
from rl_div.integrations.trl import consecutive_groups, trl_reward
from rl_div.tasks import TASKS

README = Path(__file__).resolve().parents[1] / "README.md"


def test_consecutive_groups() -> None:
    assert consecutive_groups(["a", "a", "b", "b", "a"]) == [0, 0, 1, 1, 2]


def test_adapter_scores_like_the_verifier_and_reports_failures_as_none() -> None:
    reward = trl_reward("math_verify", isolated=False)
    try:
        got = reward(prompts=["q1", "q1", "q2"], completions=["\\boxed{4}", [{"role": "assistant", "content": "5"}],
                                                             "x"], answer=["4", "4", "\\frac{"])
    finally:
        reward.close()
    assert got[0] == 1.0 and got[1] == 0.0
    assert got[2] is None  # a gold that does not parse is an error, not reward 0


def test_conversational_prompts_keep_their_turns() -> None:
    """TRL's conversational format reaches rewards as chat turns (record.messages and their text), as
    rl-div train's chat datasets do; the adapter once passed the list's repr as a one-turn prompt."""
    import plugins.my_rewards  # noqa: F401  (registers test_chat_turns)

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    reward = trl_reward("test_chat_turns", isolated=False)
    try:
        assert reward(prompts=[chat, chat, "plain"], completions=["4", "5", "4"], answer=["4"] * 3) == [2.0, 2.0, 0.0]
        with pytest.raises(ValueError, match="message 0 has role 'robot'"):
            reward(prompts=[[{"role": "robot", "content": "hi"}]], completions=["x"], answer=["1"])
    finally:
        reward.close()


def test_a_group_reward_alone_is_refused_with_the_fix_in_the_message() -> None:
    with pytest.raises(ValueError, match=r"trl_reward\(\['math_verify', 'novelty'\]\)"):
        trl_reward("novelty")


def test_a_group_reward_after_its_verifier_sees_the_verdicts() -> None:
    """Group 1: three identical correct answers (a flat class: u = 0.5 each) and one incorrect (a lone
    class: u = 0.5), so novelty is 0.5 + 0.25 = 0.75 for correct and -1 + 0.25 = -0.75 for incorrect;
    the weights 1 and 2 give 1 + 1.5 and 0 - 1.5. Group 2: a lone correct answer also gets 1 + 1.5, an
    unparseable incorrect one novelty -1, so 0 - 2."""
    reward = trl_reward([RewardSpec("math_verify", 1.0), RewardSpec("novelty", 2.0)], isolated=False)
    try:
        got = reward(prompts=["q1"] * 4 + ["q2"] * 2,
                     completions=["\\boxed{4}", "\\boxed{4}", "\\boxed{4}", "\\boxed{5}", "\\boxed{7}", "no answer"],
                     answer=["4"] * 4 + ["7", "7"])
    finally:
        reward.close()
    assert got == pytest.approx([2.5, 2.5, 2.5, -1.5, 2.5, -2.0])
    assert reward.last_correct == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_outcome_ucb_counts_carry_across_trl_batches() -> None:
    """The adapter keeps the historical counts between calls: the second sight of an answer gets
    c / sqrt(N) with N counting the first batch's too."""
    reward = trl_reward([RewardSpec("math_verify", 1.0), RewardSpec("outcome_ucb", 1.0, {"c": 1.0})], isolated=False)
    try:
        first = reward(prompts=["q1"] * 2, completions=["\\boxed{4}", "\\boxed{5}"], answer=["4", "4"])
        second = reward(prompts=["q1"] * 2, completions=["\\boxed{4}", "\\boxed{4}"], answer=["4", "4"])
    finally:
        reward.close()
    assert first == pytest.approx([2.0, 1.0])
    assert second == pytest.approx([1 + 1 / math.sqrt(3)] * 2)


@pytest.mark.slow
def test_the_readme_trl_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.read_text().split("## TRL", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    history = namespace["trainer"].state.log_history
    assert namespace["trainer"].state.global_step == 2
    # novelty saw the verifier's verdicts: its values are numbers, not None (which TRL logs as NaN/None)
    logged = [h["rewards/rl_div_math_verify+novelty/mean"] for h in history if "reward" in h]
    assert logged and all(math.isfinite(v) for v in logged)


@pytest.mark.slow
def test_real_grpo_trainer_runs_with_an_rl_div_reward(tmp_path: Path) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rl_div.models.bootstrap import bootstrap_base_model
    from rl_div.models.loading import load_policy

    task = TASKS["prime_gap"]
    model, tok = load_policy(str(bootstrap_base_model("prime_gap", tmp_path / "b", steps=20, seed=0, log=None)))
    records = task.make_prompts("train", 8, 0)
    ds = Dataset.from_list([{"prompt": r.prompt, "answer": r.answer, "meta": r.meta} for r in records])
    seen: list[tuple[str, str, float | None]] = []
    inner = trl_reward("task_verifier")

    def recording_reward(prompts: list, completions: list, **columns: object) -> list[float | None]:
        values = inner(prompts=prompts, completions=completions, **columns)
        seen.extend(zip(prompts, completions, values, strict=True))
        return values

    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=6, max_steps=2, report_to=[], use_cpu=True, save_strategy="no",
                      learning_rate=1e-3, bf16=False, logging_steps=1)
    try:
        GRPOTrainer(model=model, processing_class=tok, reward_funcs=[recording_reward], args=args,
                    train_dataset=ds).train()
    finally:
        inner.close()
    assert len(seen) == 8

    def expected(prompt: str, completion: str) -> float:  # independent of rl_div: "N-a is prime, a="
        n = int(re.match(r"(\d+)-a", prompt).group(1))
        text = completion.strip()
        if not re.fullmatch(r"\d{1,3}", text) or not 1 <= int(text) <= 99:
            return 0.0
        m = n - int(text)
        return float(m > 1 and all(m % d for d in range(2, int(m**0.5) + 1)))

    for prompt, completion, value in seen:
        assert value is not None and not math.isnan(value)
        assert value == expected(prompt, completion)
