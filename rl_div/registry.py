"""Name -> function registries, shared by advantages, token weights, losses and rewards.

A registered name must work in every process that reads the registry, Ray workers included.
Built-ins register on import of their module. A user's own functions live in a module named in
the config's ``plugins`` list; every process (driver, rollout, reward and learner actors) calls
:func:`import_plugins` with that list before it reads a registry, so the user's ``@REG.register``
decorators have run there too.

Capabilities: a registry may carry a kind of declaration, a frozen dataclass saying what its entries
read or add (``AdvantageNeeds``, ``TokenWeightNeeds``). An entry declares it where it is registered,
``@ADVANTAGES.register("arm", needs=AdvantageNeeds(prompt_logprobs=True))``, and every reader asks
:meth:`Registry.needs`, never the entry's name. An entry registered without a declaration gets the
registry's ``undeclared(fn)``: the documented safe default, which may also read the attributes older
plugins set on their functions.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError):
    """Raised for a name that is not in a registry; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry(Generic[F]):
    """A dict-like map from names to callables with a decorator to add to it, and (where the
    registry has a ``needs_type``) each entry's capability declaration next to it."""

    def __init__(self, kind: str, *, needs_type: type | None = None,
                 undeclared: Callable[[F], Any] | None = None) -> None:
        """needs_type: the declaration dataclass its entries may pass to register (None: none);
        undeclared(fn): the declaration of an entry registered without one (default: needs_type())."""
        self.kind = kind
        self._items: dict[str, F] = {}
        self._needs: dict[str, Any] = {}
        self._needs_type = needs_type
        self._undeclared = undeclared

    def register(self, name: str, *, needs: Any = None, overwrite: bool = False) -> Callable[[F], F]:
        """Decorator: ``@ADVANTAGES.register("my_adv", needs=AdvantageNeeds(...))``; needs is optional
        (see :meth:`needs`). Re-registering a name needs overwrite."""
        if needs is not None and (self._needs_type is None or not isinstance(needs, self._needs_type)):
            expected = self._needs_type.__name__ if self._needs_type else "no declaration"
            raise TypeError(f"{self.kind} {name!r}: needs must be {expected}, got {type(needs).__name__}")

        def add(fn: F) -> F:
            if name in self._items and self._items[name] is not fn and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered; pass overwrite=True")
            self._items[name] = fn
            self._needs.pop(name, None)
            if needs is not None:
                self._needs[name] = needs
            return fn

        return add

    def needs(self, name: str) -> Any:
        """The capabilities of entry ``name``: its declaration at registration, else the registry's
        ``undeclared(fn)`` (else ``needs_type()``). The one place anything reads what an entry needs."""
        fn = self.get(name)
        if name in self._needs:
            return self._needs[name]
        if self._undeclared is not None:
            return self._undeclared(fn)
        if self._needs_type is None:
            raise TypeError(f"the {self.kind} registry declares no capabilities")
        return self._needs_type()

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


def is_plugin_path(entry: str) -> bool:
    """Whether a run.plugins entry names a file or folder ('./my_rewards.py', 'lib/plugins') rather than
    an importable module name ('my_rewards', 'pkg.mod')."""
    return entry.endswith(".py") or "/" in entry or os.sep in entry


def import_plugin_path(entry: str) -> None:
    """Import a plugin given as a path (relative to the current directory unless absolute): a ``.py``
    file or a package folder. Its folder goes on sys.path first, so the module imports under its own
    name (its objects pickle the same in every process) and may import modules beside it."""
    path = Path(entry).expanduser().absolute()
    if not path.exists():
        raise ImportError(f"no file {str(path)!r}")
    folder, name = path.parent, path.stem if path.suffix == ".py" else path.name
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    importlib.import_module(name)


def import_plugins(modules: Iterable[str]) -> None:
    """Import user modules whose import registers extra names: module names (on sys.path, else in the
    current directory) or paths (:func:`import_plugin_path`). Idempotent; fails loudly."""
    for module in modules:
        try:
            if is_plugin_path(module):
                import_plugin_path(module)
                continue
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                top = module.split(".")[0]
                here = Path.cwd()
                if err.name != top or not ((here / f"{top}.py").exists() or (here / top).is_dir()):
                    raise
                sys.path.insert(0, str(here))  # the CLI's sys.path lacks the current directory
                importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"plugin module {module!r} could not be imported: {err}") from err
