"""``rl-div bench``: every speed and memory section (rl_div.bench.run lists them), each a ratio measured
side by side in one run."""

# Every section of ``rl-div bench`` in the order it runs them (rl_div.bench.run maps each to its code);
# here, free of torch, so that ``rl-div bench --help`` lists them without importing the benches.
SECTIONS = ("entropy", "passk", "train_step", "group_embedding", "lm_head", "rewards", "scoring", "long_step",
            "learner_work",
            "learner_work_20m", "fsdp", "fsdp_50m", "sync", "sync_50m", "off_policy", "dynamic_sampling",
            "lora", "lora_50m", "trim", "packing", "parity", "large_k", "startup")
