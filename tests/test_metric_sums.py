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
