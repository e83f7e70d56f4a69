"""What the commands run across runs: ``rl-div compare`` (variants x seeds) and ``rl-div eval``
(pass@k curves of checkpoints and models on benchmarks). Only rl_div.cli imports this package."""
