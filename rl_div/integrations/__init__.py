"""Adapters for other training stacks (TRL)."""
