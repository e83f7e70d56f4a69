"""The driver's training loop (rl_div.train.loop.train reads top to bottom), the rollout pipeline,
prompts, the collapse guard and the per-step statistics."""
