"""Models: loading policies and tokenizers, the tiny demo models, the bootstrapped demo base model,
and selective layer restoration."""
