"""Name -> function registries, shared by advantages, token weights, losses and rewards.

A registered name must work in every process that reads the registry, Ray workers included.
Built-ins register on import of their module. A user's own functions live in a module named in
the config's ``plugins`` list; every process (driver, rollout, reward and learner actors) calls
:func:`import_plugins` with that list before it reads a registry, so the user's ``@REG.register``
decorators have run there too.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError):
    """Raised for a name that is not in a registry; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[F]):
    """A dict-like map from names to callables with a decorator to add to it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[F], F]:
        """Decorator: ``@ADVANTAGES.register("my_adv")``. Re-registering a name needs overwrite."""

        def add(fn: F) -> F:
            if name in self._items and self._items[name] is not fn and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True")
            self._items[name] = fn
            return fn

        return add

    def get(self, name: str) -> F:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(unknown_name_message(self.kind, name, self._items)) from None

    def __getitem__(self, name: str) -> F:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self.names())})"


def unknown_name_message(kind: str, name: object, valid: Iterable[str]) -> str:
    """'unknown advantage 'grp'; did you mean 'grpo'? (valid: ...)': the one did-you-mean message for
    registry names, config keys, presets and function parameters."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (valid: {', '.join(valid) or 'none'})"


def import_plugins(modules: Iterable[str]) -> None:
    """Import user modules whose import registers extra names. Idempotent; fails loudly."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"plugin module {module!r} could not be imported: {err}") from err
