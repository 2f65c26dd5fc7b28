"""--out at a URL (s3://, gs://, az://, ...): publishing where rename is not atomic.

The client works in a local folder of its own, as with a local --out. The
models the workers run (the prepared FP32 model, each INT8 model) are uploaded
under `OUT/.work/TOKEN/` and read from there by every worker, so workers need
no file system shared with the client. A finished run is uploaded to
`OUT/RUN_ID/`, every file before `run.json`: a run exists for readers once its
`run.json` does (`OUT/*/run.json`), and never before all its files are there.
A run that fails or is interrupted writes no `run.json`; what it uploaded is
removed (a process killed outright may leave files without one), and a reader
following that rule never sees it in any case.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

from dask_quant.pipeline.results import RUN_FILE, WORK
from dask_quant.tasks import storage
from dask_quant.tasks.digest import external_locations
from dask_quant.tasks.errors import InputError
from dask_quant.tasks.sessions import ModelRef


def upload_model(model: ModelRef, folder: str) -> ModelRef:
    """`model` with the URL under `folder` workers read it from (uploaded once; its name is its digest)."""
    if model.url is not None:
        return model
    data = Path(model.path).read_bytes()
    if external_locations(data):
        msg = (
            f"{model.path}: its weights are in external data files, which workers cannot read through --out at a "
            "URL; drop --no-prepare (prepared models under 2 GiB are one file), or pass a local --out that every "
            "worker sees"
        )
        raise InputError(msg)
    url = f"{folder}/{model.sha256}.onnx"
    if not storage.exists(url):  # the gate and validation both hand workers the INT8 model
        storage.put_bytes(url, data, "--out")
    return replace(model, url=url)


# fsspec writes through these, but readers could not take the run back (http) or workers could not see it.
_NOT_FOR_OUT = ("http", "https", "memory")


def check_out_url(url: str) -> None:
    """InputError for an --out URL a run cannot be published to: a read-only or one-process filesystem, no
    bucket, or an empty path segment (object stores keep 'a//b' as a key of its own)."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() in _NOT_FOR_OUT:
        msg = f"--out {url}: {scheme}:// cannot hold published runs; publish to s3://, gs://, az:// or a folder"
        raise InputError(msg)
    if not rest.strip("/") or "//" in rest.rstrip("/"):
        msg = f"--out {url}: give a bucket and an optional prefix without empty parts, like {scheme}://BUCKET/runs"
        raise InputError(msg)


# A job's models under OUT/.work/ older than this belong to a job that was killed outright (its clean-up never
# ran): a job that still runs uploaded them at its start, and no run lasts days.
STALE_AFTER_S = 2 * 24 * 3600


class RemoteOut:
    """One job's --out at `url`: a local working folder (`local`), the models workers read, publication."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.models = f"{self.url}/{WORK}/{secrets.token_hex(8)}"
        self.local = Path(tempfile.mkdtemp(prefix="dask-quant-out-"))
        self._written = False  # nothing to remove (nor a store to ask again) until the probe went through

    def check(self) -> None:
        """Fail before any work if the client cannot write there (credentials, bucket, endpoint)."""
        probe = f"{self.models}/probe"
        try:
            storage.put_bytes(probe, b"", "--out")
        except InputError as exc:
            raise InputError(str(exc).replace(probe, self.url)) from None
        self._written = True
        storage.remove(probe)
        self._sweep()

    def _sweep(self) -> None:
        """Remove the models of jobs killed before their clean-up (OUT/.work/TOKEN/ untouched for days)."""
        import time

        newest: dict[str, float] = {}
        for name, stamp in storage.modified(f"{self.url}/{WORK}").items():
            folder = name.rsplit("/", 1)[0]
            newest[folder] = max(stamp, newest.get(folder, 0.0))
        for folder, stamp in newest.items():
            if time.time() - stamp > STALE_AFTER_S:
                storage.remove(folder)

    def share(self, prepared):
        """`prepared` (pipeline.stages.prepare.Prepared) with its model, and every model made from it, uploaded
        for the workers."""
        shared = replace(prepared, models_url=self.models)
        return replace(shared, model=shared.for_workers(shared.model))

    def publish(self, run_dir: Path) -> str:
        """Upload a published local run directory to OUT/RUN_ID/, run.json last; its URL."""
        final = f"{self.url}/{run_dir.name}"
        if storage.exists(f"{final}/{RUN_FILE}"):
            msg = f"{final} already exists; nothing was overwritten"
            raise FileExistsError(msg)
        files = sorted(p for p in run_dir.rglob("*") if p.is_file() and p.name != RUN_FILE)
        try:
            for path in [*files, run_dir / RUN_FILE]:
                storage.put_file(path, f"{final}/{path.relative_to(run_dir).as_posix()}", "--out")
        except BaseException:
            with suppress(Exception):  # the failure that stopped the upload is the one to tell
                storage.remove(final)  # no run.json: readers never took it; do not leave the rest behind
            raise
        return final

    def close(self) -> None:
        """Remove the local working folder and the uploaded models (as far as the store lets us: a failure
        here must not hide the one that ended the run)."""
        shutil.rmtree(self.local, ignore_errors=True)
        if self._written:
            with suppress(Exception):  # a store's client raises its own types (botocore's, ...)
                storage.remove(self.models)
