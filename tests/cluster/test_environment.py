"""Workers are checked before any work: every one that lacks a compatible package is named."""

from __future__ import annotations

import re

import pytest
from distributed import Client, LocalCluster

from dask_quant.cluster.environment import check_workers, incompatibilities, package_versions
from dask_quant.tasks.errors import InputError

CLIENT = {
    "dask-quant": "0.1.0", "onnxruntime": "1.32.0", "onnx": "1.23.2", "numpy": "2.4.6", "numba": "0.68.1",
    "pyarrow": "26.0.1",
}  # fmt: skip


def test_incompatibilities_name_each_worker_and_what_it_lacks():
    workers = {
        "tcp://a:1": dict(CLIENT, onnxruntime="1.32.1", numpy="2.0.0"),  # compatible: same minor / same major
        "tcp://b:2": dict(CLIENT, **{"dask-quant": None}),
        "tcp://c:3": dict(CLIENT, onnxruntime="1.31.0", numpy="1.26.4"),
        "tcp://d:4": dict(CLIENT, numba=None),  # the compiled loops (tasks/kernels.py) need it
    }
    assert incompatibilities(CLIENT, workers) == [
        "tcp://b:2: dask-quant missing",
        "tcp://c:3: onnxruntime 1.31.0 (client has 1.32.0), numpy 1.26.4 (client has 2.4.6)",
        "tcp://d:4: numba missing",
    ]


class _FakeClient:
    def __init__(self, reports):
        self.reports = reports

    def run(self, function):
        function()  # the probe itself must run here, as on a worker
        return self.reports


def test_check_workers_refuses_with_one_message():
    client = _FakeClient({"tcp://b:2": dict(package_versions(), onnx=None)})
    with pytest.raises(
        InputError, match=re.escape("workers lack what the job needs: tcp://b:2: onnx missing; install")
    ):
        check_workers(client)


def test_real_workers_pass_the_check():
    with LocalCluster(n_workers=2, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
        check_workers(client)  # raises if anything is off
