"""The sharded learner: an update planner (plan), cross-rank reductions (reduce), an FSDP2
learner (sharded) and the group of learner actors the trainer talks to (group)."""
