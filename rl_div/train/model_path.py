"""Where the policy's weights come from: a path, or one of the built-in tiny models made on this machine
(``model.path: bootstrap`` or ``tiny_qwen``)."""

from __future__ import annotations

from pathlib import Path

from rl_div.config import Config


def resolve_model_path(cfg: Config) -> str:
    """The policy's location; 'bootstrap' pretrains (or reuses the cached) tiny demo model, 'tiny_qwen'
    builds (or reuses) the small random-initialised Qwen2 with Qwen's real tokenizer."""
    b = cfg.bootstrap
    if cfg.model.path == "tiny_qwen":
        from rl_div.models.tiny_qwen import tiny_qwen_model

        return str(tiny_qwen_model(b.cache_dir, hidden_size=b.hidden_size, num_heads=b.num_heads, seed=b.seed))
    if cfg.model.path != "bootstrap":
        return cfg.model.path
    from rl_div.models.bootstrap import bootstrap_base_model

    return str(bootstrap_base_model(cfg.data.task, Path(b.cache_dir).expanduser(), steps=b.steps, seed=b.seed,
                                    hidden_size=b.hidden_size, num_heads=b.num_heads))
