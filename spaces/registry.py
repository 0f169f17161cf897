"""The registry of search spaces: name -> :class:`spaces.space.Space`."""

from __future__ import annotations

from spaces.space import Space

SPACES: dict[str, Space] = {}


def register_space(space: Space) -> Space:
    if space.name in SPACES:
        raise ValueError(f"space {space.name!r} is already registered")
    SPACES[space.name] = space
    return space


def get_space(name: str) -> Space:
    if name not in SPACES:
        raise KeyError(f"unknown space {name!r}; known: {', '.join(SPACES)}")
    return SPACES[name]
