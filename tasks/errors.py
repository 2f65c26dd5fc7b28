"""The project's exceptions, in one place.

`InputError` is a user mistake (bad file, bad option, unreachable scheduler):
the CLI prints its message on one line and exits 2. Everything else that is
ours derives from `DaskQuantError` and exits 1.
"""

from __future__ import annotations


class DaskQuantError(Exception):
    """Base of every error dask-quant raises on purpose."""


class InputError(DaskQuantError):
    """Bad input: the message says what, where, and what to do instead."""


class DataError(InputError):
    """ONNX Runtime failed on a chunk's values (not on the model): the chunk's rows are added to the message."""


class ModelChangedError(DaskQuantError):
    """A worker read a model file whose sha256 is not the one the run started with."""


class Refused:
    """A chunk task's InputError, returned as a value: bad data fails the same way on every retry,
    so it must not be retried (distributed retries whatever a task raises) but reported once.

    Merges pass it on (the lowest chunk's wins, so the message does not depend on timing).
    """

    def __init__(self, index: int, message: str) -> None:
        self.index, self.message = index, message

    def merge(self, other):
        return self if not isinstance(other, Refused) or self.index <= other.index else other

    def raise_it(self):
        raise InputError(self.message)


def refusing(function, chunk, *args, **kwargs):
    """`function(chunk, *args, **kwargs)`, or a Refused carrying its InputError."""
    if any(isinstance(arg, Refused) for arg in args):  # an input task refused: pass that on
        return next(arg for arg in args if isinstance(arg, Refused))
    try:
        return function(chunk, *args, **kwargs)
    except DataError as exc:
        where = f"rows {chunk.start}..{chunk.stop} (chunk {chunk.index}) of {chunk.path}"
        return Refused(chunk.index, f"ONNX Runtime failed on {where} ({exc}); check those samples against what "
                       "the model accepts (for example token ids within the vocabulary)")
    except InputError as exc:
        return Refused(chunk.index, str(exc))
