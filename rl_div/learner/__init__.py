"""One learner rank: the policy forward with the chunked head, the update (single process or an
FSDP2 rank), the fused on-policy and ARM path, the reference model, cross-rank reducers, the update
planner and checkpoint I/O across strategies. Never imports rollout/, cluster/ or train/."""
