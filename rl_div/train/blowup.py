"""A blown-up update stops the run (issue 29 item 7): with train.lr=1e30 one AdamW step sends every
weight to +-1e30 and the run used to finish "successfully" with a ruined model (uniform output,
pass@1 = 0).

The learner reports ``train/param_norm_ratio_max``: the largest ratio, over the update's optimizer
steps, of the parameters' L2 norm after a step to the norm before it. A healthy step moves the
weights by a small fraction of their scale (a ratio within ~1e-3 of 1 for AdamW at lr 1e-6..1e-3);
a ratio above MAX_PARAM_NORM_RATIO, or a non-finite one, means the step destroyed the policy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rl_div.cluster.faults import where_to_resume
from rl_div.config.load import SANE_MAX_LR
from rl_div.run.stops import RunStopped

MAX_PARAM_NORM_RATIO = 2.0  # one step doubling the weights' norm (or worse) is never training


class UpdateBlewUp(RunStopped):
    """An optimizer step destroyed the policy; the run stopped before checkpointing it."""


def check_update(step: int, metrics: dict[str, Any], lr: float, output_dir: str | Path) -> None:
    """Raise UpdateBlewUp (one line: the step, the ratio, the last good checkpoint, the likely
    cause) when the update of ``step`` blew the parameters up."""
    ratio = metrics.get("train/param_norm_ratio_max")
    if ratio is None or (math.isfinite(ratio) and ratio <= MAX_PARAM_NORM_RATIO):
        return
    cause = (f"train.lr={lr:g} is far too large" if lr > SANE_MAX_LR else
             f"a step too large for this model: lower train.lr={lr:g} or train.max_grad_norm")
    change = f"changed {ratio:.3g}-fold" if math.isfinite(ratio) else "overflowed or turned NaN"
    raise UpdateBlewUp(f"the update of step {step} blew up the policy (its parameter norm {change} in one optimizer "
                       "step); stopped without saving it. Last good checkpoint: "
                       f"{where_to_resume(output_dir)}. Likely cause: {cause}")
