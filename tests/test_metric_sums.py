"""The learner's metric combination rule, by hand."""

from rl_div.learner.metric_sums import add_metric, mean_over_steps


def test_max_metrics_keep_the_largest_and_the_rest_add_up_weighted() -> None:
    sums: dict[str, float] = {}
    for value, share in ((2.0, 0.25), (6.0, 0.75)):
        add_metric(sums, "loss/pg", value, share)
        add_metric(sums, "offpolicy/is_weight_max", value, share)
    add_metric(sums, "offpolicy/is_weight_max", 3.0)
    assert sums == {"loss/pg": 2.0 * 0.25 + 6.0 * 0.75, "offpolicy/is_weight_max": 6.0}
    assert mean_over_steps(sums, 2) == {"loss/pg": 2.5, "offpolicy/is_weight_max": 6.0}
    assert mean_over_steps({"a": 3.0}, 0) == {"a": 3.0}  # no optimizer step: nothing to divide by


def test_each_metric_is_weighted_by_what_it_averages_over() -> None:
    """Two micro-batches of one mini-batch: a (3 tokens in 1 response) and b (1 token in 1
    response, plus a row without tokens). A token mean enters by its token share (3/4, 1/4), a
    per-response mean by its response share (1/2, 1/2), loss/total adds up, maxima stay."""
    from rl_div.learner.metric_sums import RESPONSES, SUMMED, TOKENS, Units, add_micro_metrics, metric_unit

    mini = Units(tokens=4, responses=2)
    a, b = Units(tokens=3, responses=1), Units(tokens=1, responses=1)
    keys = ("loss/pg", "loss/ratio_mean", "offpolicy/is_weight_mean", "loss/total", "offpolicy/is_weight_max")
    for agg, tis, pg, is_weight in (("token-mean", "token", 0.75 * 2 + 0.25 * 6, 0.75 * 2 + 0.25 * 6),
                                    ("seq-mean-token-mean", "sequence", 4.0, 4.0)):
        sums: dict[str, float] = {}
        add_micro_metrics(sums, dict.fromkeys(keys, 2.0), a, mini, agg, tis)
        add_micro_metrics(sums, dict.fromkeys(keys, 6.0), b, mini, agg, tis)
        assert sums == {"loss/pg": pg, "loss/ratio_mean": 3.0, "offpolicy/is_weight_mean": is_weight,
                        "loss/total": 8.0, "offpolicy/is_weight_max": 6.0}, agg
    assert metric_unit("loss/kl", "seq-mean-token-sum-norm") == RESPONSES
    assert metric_unit("loss/entropy") == metric_unit("policy/entropy_train", "seq-mean-token-mean") == TOKENS
    assert metric_unit("loss/total", "seq-mean-token-mean") == SUMMED


def test_a_micro_batch_without_tokens_adds_nothing_not_nan() -> None:
    """A micro-batch whose rows have no valid token has NaN means (no units): its share is 0."""
    from rl_div.learner.metric_sums import Units, add_micro_metrics

    sums: dict[str, float] = {}
    mini = Units(tokens=2, responses=1)
    add_micro_metrics(sums, {"policy/entropy_train": 1.5}, Units(tokens=2, responses=1), mini)
    add_micro_metrics(sums, {"policy/entropy_train": float("nan")}, Units(tokens=0, responses=0), mini)
    assert sums == {"policy/entropy_train": 1.5}
