"""The one merge rule shared by per-tensor statistics."""

from __future__ import annotations

from typing import Protocol, TypeVar


class Mergeable(Protocol):
    def merge(self, other): ...


T = TypeVar("T", bound=Mergeable)


def merge_by_name(left: tuple[tuple[str, T], ...], right: tuple[tuple[str, T], ...]) -> tuple[tuple[str, T], ...]:
    """Union of two name-sorted entry tuples, merging the values both have; sorted again.

    Sorting makes equal statistics compare equal whatever order they were merged in.
    """
    merged = dict(left)
    for name, value in right:
        merged[name] = merged[name].merge(value) if name in merged else value
    return tuple(sorted(merged.items()))


def add_counts(left: tuple[int, ...], right: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a + b for a, b in zip(left, right, strict=True))
