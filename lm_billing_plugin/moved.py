"""Deprecation aliases for module paths the README once named: an old module's attribute is
looked up in its new home, with a DeprecationWarning that says where to import it from."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any


def alias(old: str, new: Sequence[str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old``: find the name in the first of ``new`` that has it.

    The new modules are imported on first use only, so an alias costs nothing until a host
    still uses the old path.
    """

    def __getattr__(name: str) -> Any:
        if not name.startswith("__"):
            for target in new:
                module = importlib.import_module(target)
                if hasattr(module, name):
                    warnings.warn(
                        f"{old}.{name} moved to {target}.{name}; import it from there",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
