"""Built-in tasks: splits, verifiers, demonstrations, and the cached bootstrap of a base model."""

from __future__ import annotations

import json
import random
import time

import pytest

from rl_div.data import PromptRecord
from rl_div.models.bootstrap import META_FILE, bootstrap_base_model, score_samples
from rl_div.models.loading import load_policy
from rl_div.registry import UnknownNameError
from rl_div.tasks import TASKS, GapTask, Task, get_task, is_prime

# An unregistered variant, to check that nothing in a gap task is specific to primes.
ODD_GAP = GapTask(name="odd_gap", predicate="odd", odd_n_only=False, habit_even_bias=1.0)
TASK_OBJECTS = [get_task("prime_gap"), ODD_GAP]
PRIMES_BELOW_60 = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59]


def test_registry_holds_the_built_in_tasks() -> None:
    assert "prime_gap" in TASKS.names()
    with pytest.raises(UnknownNameError, match="prime_gap"):
        get_task("prime_gp")


def test_is_prime_against_a_table() -> None:
    assert [n for n in range(60) if is_prime(n)] == PRIMES_BELOW_60


@pytest.mark.parametrize("task", TASK_OBJECTS, ids=lambda t: t.name)
def test_splits_are_disjoint_and_deterministic(task: Task) -> None:
    name = task.name
    train = task.make_prompts("train", 200, seed=0)
    evals = task.make_prompts("eval", 64, seed=0)
    assert not {r.prompt for r in train} & {r.prompt for r in evals}
    # Disjoint for every seed: the whole splits never meet.
    all_train = {r.prompt for r in task.make_prompts("train", 2000, seed=1)}
    all_eval = {r.prompt for r in task.make_prompts("eval", 2000, seed=2)}
    assert not all_train & all_eval
    assert task.make_prompts("train", 50, seed=7) == task.make_prompts("train", 50, seed=7)
    assert task.make_prompts("train", 50, seed=7) != task.make_prompts("train", 50, seed=8)
    assert len({r.uid for r in train}) == 200  # no repeats while n fits in the split
    for r in train[:5]:
        assert r.meta["task"] == name and r.meta["extractor"] == name
        json.dumps(r.meta)  # records must travel between processes


def test_prime_gap_record_contents() -> None:
    task = get_task("prime_gap")
    rec = task.record(233)
    assert rec.prompt == "233-a is prime, a="
    # 233 - a prime for a in 1..99, listed by hand from the primes 134..232.
    primes = [p for p in range(134, 233) if all(p % d for d in range(2, 16))]
    assert rec.meta["valid_answers"] == sorted(233 - p for p in primes)
    assert rec.answer == "4"  # 229 is the largest prime below 233
    with pytest.raises(ValueError):
        task.make_prompts("test", 1, seed=0)  # type: ignore[arg-type]


# (completion, expected answer text, reward) for N = 233 (229, 227, 223, 211, 199, 197 are prime).
PRIME_TABLE = [
    ("4", "4", 1.0),
    ("6", "6", 1.0),
    ("10", "10", 1.0),
    (" 22 ", "22", 1.0),
    ("04", "4", 1.0),
    ("34", "34", 1.0),
    ("2", "2", 0.0),  # 231 = 3 * 7 * 11
    ("5", "5", 0.0),  # 228 is even
    ("8", "8", 0.0),  # 225 = 15^2
    ("233", "233", 0.0),  # out of range (a <= 99), and 0 is not prime
    ("0", "0", 0.0),  # out of range
    ("a=4", None, 0.0),
    ("4.", None, 0.0),
    ("4,6", None, 0.0),
    ("1234", None, 0.0),
    ("?", None, 0.0),
    ("", None, 0.0),
]


@pytest.mark.parametrize(("completion", "answer", "reward"), PRIME_TABLE)
def test_prime_gap_extract_and_verify(completion: str, answer: str | None, reward: float) -> None:
    task = get_task("prime_gap")
    rec = task.record(233)
    assert task.extract(completion) == answer
    assert task.verify(completion, rec) == reward


def test_odd_gap_verify() -> None:
    task = ODD_GAP
    even, odd = task.record(348), task.record(347)
    assert [task.verify(c, even) for c in ["1", "2", "99", "x"]] == [1.0, 0.0, 1.0, 0.0]
    assert [task.verify(c, odd) for c in ["1", "2", "98", ""]] == [0.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("task", TASK_OBJECTS, ids=lambda t: t.name)
def test_demonstrations_are_mostly_parseable_diverse_and_mixed(task: Task) -> None:
    recs = task.make_prompts("train", 20, seed=0)
    rng = random.Random(0)
    demos = [(r, task.sample_demonstration(r, rng)) for r in recs for _ in range(100)]
    parsed = [task.extract(d) for _, d in demos]
    assert 0.9 < sum(p is not None for p in parsed) / len(parsed) < 1.0  # noisy, but mostly well-formed
    assert len(set(parsed)) > 50  # diverse
    rewards = [task.verify(d, r) for r, d in demos]
    assert 0.1 < sum(rewards) / len(rewards) < 0.7  # right and wrong answers mixed
    assert set(task.alphabet) >= set("".join(d for _, d in demos) + "".join(r.prompt for r in recs))


def test_demonstrations_ignore_the_prompt() -> None:
    task = get_task("prime_gap")
    a, b = task.record(233), task.record(997)
    assert [task.sample_demonstration(a, random.Random(s)) for s in range(30)] == [
        task.sample_demonstration(b, random.Random(s)) for s in range(30)
    ]


def test_score_samples_against_hand_counts() -> None:
    task = get_task("prime_gap")
    rec = task.record(233)
    # 4 samples: two correct with the same answer, one wrong, one malformed.
    result = score_samples(task, [rec], [["4", "04", "2", "x"]])
    assert result["validity"] == 0.75
    assert result["distinct_correct"] == 1
    assert result["pass_at_k"][1] == 0.5
    assert result["pass_at_k"][2] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert result["pass_at_k"][4] == 1.0
    assert result["minority_fraction"] == 0.0


def test_bootstrap_is_cached_and_reloads(tmp_path) -> None:
    kwargs = {
        "steps": 5,
        "seed": 0,
        "batch_size": 8,
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 32,
        "log": None,
    }
    path = bootstrap_base_model("prime_gap", tmp_path, **kwargs)
    assert (path / META_FILE).is_file() and (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = bootstrap_base_model("prime_gap", tmp_path, **kwargs)
    assert again == path and time.perf_counter() - t0 < 0.5
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary directory left behind
    other = bootstrap_base_model("prime_gap", tmp_path, **{**kwargs, "seed": 1})
    assert other != path

    model, tok = load_policy(path)
    assert tok.decode(tok("347-a is prime, a=")["input_ids"], skip_special_tokens=True) == "347-a is prime, a="
    meta = json.loads((path / META_FILE).read_text())
    assert meta["args"]["steps"] == 5 and meta["task"] == "prime_gap"
    enc = tok(["347-a is prime, a="] * 2, return_tensors="pt")
    out = model.generate(**enc, do_sample=True, max_new_tokens=4, top_k=0, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2


def test_bootstrap_is_deterministic(tmp_path) -> None:
    kwargs = {
        "steps": 3,
        "seed": 5,
        "batch_size": 4,
        "hidden_size": 16,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 32,
        "log": None,
    }
    a = bootstrap_base_model("prime_gap", tmp_path / "a", **kwargs)
    b = bootstrap_base_model("prime_gap", tmp_path / "b", **kwargs)
    assert a.name == b.name
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_prompt_record_meta_is_what_rewards_need() -> None:
    rec: PromptRecord = get_task("prime_gap").make_prompts("eval", 1, seed=0)[0]
    assert {"task", "extractor", "n", "valid_answers"} <= set(rec.meta)


def test_task_rewards_are_registered_in_the_rewards_package() -> None:
    import pickle

    from rewards import ANSWER_EXTRACTORS, REWARDS, extract_answer, is_verifier

    rec = get_task("prime_gap").record(233)
    for name in TASKS.names():
        assert is_verifier(REWARDS[name]) and name in ANSWER_EXTRACTORS
    verifier = REWARDS["prime_gap"]
    assert [verifier(c, rec) for c in ["4", "2", "x"]] == [1.0, 0.0, 0.0]
    assert REWARDS["task_verifier"]("6", rec) == 1.0  # dispatch through record.meta["task"]
    assert extract_answer(" 07", rec) == "7"
    # Rewards run in a separate worker process: the verifier and extractor must pickle.
    assert pickle.loads(pickle.dumps(verifier))("10", rec) == 1.0
    assert pickle.loads(pickle.dumps(ANSWER_EXTRACTORS["prime_gap"]))("10") == "10"


def test_demo_held_out_set_leaves_room_below_one_at_large_k() -> None:
    """The demo's 32 held-out problems (data.eval_seed 0): a model that has learned the habit prior
    exactly solves them all at k = 1 with some chance but not all of them at k = 64, so a fall of
    pass@64 under RL is visible. Closed form: pass@k = 1 - (1 - p)^k per problem, p = prior mass on
    the problem's valid answers (times the well-formed fraction), computed here from the prior."""
    task = get_task("prime_gap")
    prior = task.habit_prior()
    records = task.make_prompts("eval", 32, seed=0)
    p = [(1 - task.format_noise) * sum(prior[a] for a in r.meta["valid_answers"]) for r in records]
    pass_at = {k: sum(1 - (1 - q) ** k for q in p) / len(p) for k in (1, 64)}
    assert 0.1 < pass_at[1] < 0.3
    assert 0.8 < pass_at[64] < 0.95
    # Both kinds of problem are in the held-out set: odd N (even answers, which the habit likes)
    # and even N (odd answers, which it rarely says).
    assert {r.meta["n"] % 2 for r in records} == {0, 1}


def test_task_version_is_part_of_the_bootstrap_cache_key() -> None:
    import dataclasses

    from rl_div.models.bootstrap import bootstrap_key

    task = get_task("prime_gap")
    args = {"steps": 300, "seed": 0}
    assert bootstrap_key(task, args) != bootstrap_key(dataclasses.replace(task, version="1"), args)
