"""A method's ``*_params`` against its function's signature and type hints, at config load; and the
parameter listing ``rl-div config-help`` prints for every registered advantage, token weight, loss and
reward. The name check itself (unknown key, did-you-mean) is rl_div.config.checks.check_params; this is
the type half and the listing.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rl_div.registry import import_plugins

# Keywords the learner passes to every loss itself (a loss must take them; a user may also set them).
LEARNER_LOSS_KEYWORDS = ("token_denominator", "seq_denominator", "norm_constant")


def parameter_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The resolved type hints of fn's parameters. When the whole set cannot be resolved (an annotation
    names a type imported only for type checking), each parameter's is tried alone and the ones that
    resolve are kept; the rest are checked by name only."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an unresolvable annotation is the author's, not a config error
        target = inspect.unwrap(fn)
        namespace = dict(getattr(target, "__globals__", {}))
        hints = {}
        for name, p in inspect.signature(target).parameters.items():
            if p.annotation is p.empty:
                continue
            try:
                hints[name] = (eval(p.annotation, namespace) if isinstance(p.annotation, str)  # noqa: S307
                               else p.annotation)
            except Exception:  # this one stays unchecked
                continue
    hints.pop("return", None)
    return hints


def param_type_problem(fn: Callable[..., Any], key: str, value: Any) -> str | None:
    """None when ``value`` fits the type hint of fn's parameter ``key`` (or it has none), else
    'takes float, got str '0.1x''. Strict: a string is not a number and a bool is not an int (an int is a
    float); a YAML list may stand for a tuple."""
    hint = parameter_hints(fn).get(key)
    if hint is None or hint is Any:
        return None
    adapter = TypeAdapter(hint)
    try:
        adapter.validate_python(value, strict=True)
        return None
    except ValidationError:
        pass
    except Exception:  # a hint pydantic cannot build a validator for: names only
        return None
    if isinstance(value, list):  # YAML has no tuples
        try:
            adapter.validate_python(value)
            return None
        except ValidationError:
            pass
    return f"takes {type_name(hint)}, got {type(value).__name__} {value!r}"


def type_name(hint: Any) -> str:
    """'float', 'list[list[int]] | None', 'Literal['a', 'b']': how a hint reads in a message."""
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("typing.", "")


def parameters_of(fn: Callable[..., Any], positional: int) -> list[tuple[str, str, str]]:
    """(name, type, default) of each keyword fn takes after its first ``positional`` parameters; default
    'required' when it has none."""
    hints = parameter_hints(fn)
    out, taken = [], 0
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and taken < positional:
            taken += 1
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        hint = hints.get(p.name)
        out.append((p.name, type_name(hint) if hint is not None else "any",
                    "required" if p.default is p.empty else repr(p.default)))
    return out


def method_parameters_help(plugins: list[str] | None = None) -> list[str]:
    """One block per registry, one line per method: 'algo.advantage_params for <name>: k: int = 4, ...'.
    ``plugins``: modules to import first, so their methods are listed too."""
    from rewards import REWARDS, reward_scope
    from rl_div.algos import ADVANTAGES, LOSSES, TOKEN_WEIGHTS

    import_plugins(list(plugins or []))
    lines = ["method parameters (set them under the field named; each is checked against its type at load):"]
    for field, registry in (("algo.advantage_params", ADVANTAGES), ("algo.token_weight_params", TOKEN_WEIGHTS),
                            ("algo.loss_params", LOSSES), ("reward.rewards[i].params", REWARDS)):
        lines.append(f"{field}:")
        for name in registry.names():
            fn = registry[name]
            positional = (4 if reward_scope(fn) == "group" else 2) if registry is REWARDS else 1
            # the learner passes the denominators itself; norm_constant is the user's too (Dr. GRPO)
            params = [p for p in parameters_of(fn, positional) if registry is not LOSSES
                      or p[0] not in LEARNER_LOSS_KEYWORDS or p[0] == "norm_constant"]
            text = ", ".join(f"{n}: {t} = {d}" for n, t, d in params) or "(none)"
            lines.append(f"  {name}: {text}")
    return lines
