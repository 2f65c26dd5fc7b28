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


class ModelChangedError(DaskQuantError):
    """A worker read a model file whose sha256 is not the one the run started with."""
