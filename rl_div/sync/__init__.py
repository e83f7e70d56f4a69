"""Weights on the wire: buckets, transport payloads and the driver's push. The learner and the rollout
workers both import this package, never each other."""
