"""--storage-option KEY=VALUE: what a URL's backend needs beyond its own environment and configuration.

Each option becomes a default keyword of the fsspec filesystems of the
protocols the job's URLs use (fsspec's own configuration, which its
FSSPEC_<PROTOCOL>_<KEY> variables also set), in the client and in every worker:
on workers through a plugin the scheduler also gives workers that start (or
restart) later. So no option, secret or not, travels in the task graph, and
run.json records their keys only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager

from dask_quant.tasks.errors import InputError
from dask_quant.tasks.storage import is_url


def parse(values: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """KEY=VALUE strings as pairs (VALUE as given: JSON is read when applied)."""
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not (sep and key.strip()):
            msg = f"--storage-option {item!r}: expected KEY=VALUE (for example endpoint_url=https://host:9000)"
            raise InputError(msg)
        pairs.append((key.strip(), value))
    return tuple(pairs)


def _value(text: str):
    """true, 5, {"region_name": "eu-west-1"}: their JSON values; anything else the string itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def by_protocol(options: tuple[tuple[str, str], ...], urls: list) -> dict[str, dict]:
    """The options for each protocol of `urls` (those that are URLs); InputError when there is none."""
    protocols = sorted({str(url).split("://", 1)[0] for url in urls if is_url(url)})
    if options and not protocols:
        msg = "--storage-option applies to data, models or --out at URLs: none of MODEL, --calib, --val, --out is one"
        raise InputError(msg)
    values = {key: _value(value) for key, value in options}
    return {protocol: values for protocol in protocols} if options else {}


def apply(options: dict[str, dict]) -> None:
    """Make `options` the defaults of this process's filesystems of those protocols (a worker's, for good)."""
    import fsspec.config

    for protocol, values in options.items():
        fsspec.config.conf.setdefault(protocol, {}).update(values)


@contextmanager
def applied(options: dict[str, dict]) -> Iterator[None]:
    """`apply` in the client for one job: fsspec's configuration is as it was afterwards, so a later job in
    the same process (a zoo's, a test's) does not inherit them."""
    import copy

    import fsspec.config

    before = copy.deepcopy(fsspec.config.conf)
    apply(options)
    try:
        yield
    finally:
        fsspec.config.conf.clear()
        fsspec.config.conf.update(before)


def share(client, options: dict[str, dict]) -> None:
    """`apply` on every worker of `client`'s cluster, now and whenever one starts."""
    if not options:
        return
    from distributed.diagnostics.plugin import WorkerPlugin

    class StorageOptions(WorkerPlugin):
        def __init__(self, options: dict[str, dict]) -> None:
            self.options = options
            # One per set of options: jobs of a zoo that differ each keep theirs.
            self.name = (
                "dask-quant-storage-" + hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:12]
            )

        def setup(self, worker) -> None:
            apply(self.options)

    client.register_plugin(StorageOptions(options))
