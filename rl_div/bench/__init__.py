"""``rl-div bench``: every speed and memory section (rl_div.bench.run lists them), each a ratio measured
side by side in one run."""
