"""The user's model file: read and checked on the client, with the external data files beside it."""

from __future__ import annotations

from pathlib import Path

from dask_quant.tasks.errors import InputError


def load_model(path: Path):
    """The ModelProto at `path`, or an InputError saying why it is not one."""
    import onnx

    if not path.is_file():
        msg = f"model file not found: {path}; pass the path of an .onnx file"
        raise InputError(msg)
    return _parsed(lambda: onnx.load(str(path), load_external_data=False), path)


def load_remote_model(url: str):
    """(ModelProto, ModelRef) of the model at `url`, downloaded whole by the client (workers read it there
    too); a model whose weights are in other objects (external data) is refused."""
    import onnx

    from dask_quant.tasks.digest import external_locations, sha256_bytes
    from dask_quant.tasks.sessions import ModelRef
    from dask_quant.tasks.storage import read_remote

    data = read_remote(url)
    proto = _parsed(lambda: onnx.load_from_string(data), url)
    if external_locations(data):
        msg = (
            f"{url}: its weights are in external data files, which a model at a URL cannot bring along; download "
            "the model with its data files and pass the local path"
        )
        raise InputError(msg)
    return proto, ModelRef(url, sha256_bytes(data), url=url)


def _parsed(load, where):
    from google.protobuf.message import DecodeError

    try:
        proto = load()
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        msg = f"{where} is not an ONNX model ({type(exc).__name__}); pass an .onnx file exported by your framework"
        raise InputError(msg) from None
    if proto.ir_version <= 0 or not proto.graph.node:
        msg = f"{where} is not an ONNX model (no IR version or no graph nodes); pass an .onnx file"
        raise InputError(msg)
    return proto


# Above this, a model cannot be one protobuf message: the prepared and INT8 copies dask-quant writes are
# single files, so such a model is refused (for now) rather than failing half-way.
PROTOBUF_LIMIT = 2**31 - 1


def load_external_data(proto, path: Path) -> None:
    """Read a model's external data (files beside it) into `proto`; InputError when a file is missing, or
    when the whole model would not fit one protobuf message."""
    from onnx.external_data_helper import (
        ExternalDataInfo,
        _get_all_tensors,
        load_external_data_for_model,
        uses_external_data,
    )

    external = [tensor for tensor in _get_all_tensors(proto) if uses_external_data(tensor)]
    if not external:
        return
    folder = path.resolve().parent
    total = proto.ByteSize()
    for tensor in external:
        info = ExternalDataInfo(tensor)
        file = (folder / info.location).resolve()
        if folder not in file.parents:
            msg = (
                f"{path}: its external data location {info.location!r} is outside the model's folder; save the "
                "data beside the model (a relative location)"
            )
            raise InputError(msg)
        if not file.is_file():
            msg = f"{path}: its external data file {info.location!r} is not beside it ({file}); keep them together"
            raise InputError(msg)
        total += info.length or file.stat().st_size
    if total > PROTOBUF_LIMIT:
        msg = (
            f"{path}: {total / 2**30:.1f} GiB with its external data; models over 2 GiB are not supported yet "
            "(dask-quant writes the prepared and INT8 models as single files)"
        )
        raise InputError(msg)
    from onnx.checker import ValidationError

    try:
        load_external_data_for_model(proto, str(folder))
    except ValidationError as exc:  # onnx refuses a location outside the model's folder, or an absolute one
        msg = f"{path}: its external data is not in files beside it ({_first(exc)}); save it with a relative location"
        raise InputError(msg) from None
    except (OSError, ValueError) as exc:
        msg = f"{path}: its external data cannot be read ({type(exc).__name__}: {exc}); write the model again"
        raise InputError(msg) from None


def _first(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
