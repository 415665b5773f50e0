"""A small registry: the named implementations of one kind of recipe choice.

Each tagged variant of the recipe (``kind``: a selection strategy, a filter, a layout, a
finalizer) names a function registered here; ``tests/test_schema.py`` checks that the config's
kinds and the registries' names are the same. An unknown name fails with the list of valid ones.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .errors import RecipeError

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """``name -> function`` for one kind of choice (``what``: "selection", "filter", ...)."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: register the function under ``name``."""

        def deco(fn: F) -> F:
            self[name] = fn
            return fn

        return deco

    def lookup(self, name: str) -> Callable:
        """The function registered as ``name``.

        Raises
        ------
        RecipeError
            Unknown name (the message lists the registered ones).
        """
        try:
            return self[name]
        except KeyError:
            raise RecipeError(f"unknown {self.what} kind {name!r}; valid: {', '.join(sorted(self))}") from None
