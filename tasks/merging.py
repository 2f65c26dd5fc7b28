"""The one merge rule shared by per-tensor statistics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import reduce
from typing import Protocol, TypeVar

from dask_quant.tasks.errors import Refused


class Mergeable(Protocol):
    def merge(self, other): ...


T = TypeVar("T", bound=Mergeable)


def merge_all(parts: Iterable[T]) -> T:
    """Merge one or more partial statistics of one kind: the reduction step of every statistics tree.

    Each kind's `merge` is associative and commutative, so any grouping gives the same value.
    """
    parts = list(parts)
    refused = [part for part in parts if isinstance(part, Refused)]
    if refused:  # bad data in a chunk: pass the refusal on instead of merging
        return reduce(Refused.merge, refused)
    items = iter(parts)
    try:
        first = next(items)
    except StopIteration:
        msg = "merge_all needs at least one partial"
        raise ValueError(msg) from None
    return reduce(type(first).merge, items, first)


@dataclass(frozen=True)
class Each:
    """One statistic per model of a pass that runs several at once (their FP32 side shared); merged model by
    model."""

    values: tuple

    def merge(self, other: Each) -> Each:
        return Each(tuple(a.merge(b) for a, b in zip(self.values, other.values, strict=True)))


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
