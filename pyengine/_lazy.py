"""Module attributes that import their defining module on first use (PEP 562).

Keeps ``import pyengine`` and ``pyengine --help`` from importing Numba, astropy
or torch.  Thread safety: Python's import lock serialises the imports.
"""

from __future__ import annotations

from importlib import import_module


def lazy_exports(module_name: str, module_globals: dict, names: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for a module whose ``names`` map to defining modules."""

    def __getattr__(name):
        if name in names:
            value = getattr(import_module(names[name]), name)
            module_globals[name] = value
            return value
        raise AttributeError(f"module {module_name!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(module_globals) | set(names))

    return __getattr__, __dir__
