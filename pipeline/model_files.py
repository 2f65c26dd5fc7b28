"""The user's model file: read and checked on the client, with the external data files beside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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


# A model is one protobuf message only below 2 GiB. Above this many bytes of weights (headroom left for the
# graph), the prepared and INT8 models dask-quant writes keep their weights in one data file beside the
# .onnx, named as ONNX Runtime's quantizer names its own (`NAME.onnx.data`).
EXTERNAL_DATA_ABOVE = 2**31 - 2**27


def weight_bytes(proto) -> int:
    """Bytes of the tensors a model holds in its message (initializers, Constant values; loaded data only)."""
    from onnx.external_data_helper import _get_all_tensors

    return sum(tensor.ByteSize() for tensor in _get_all_tensors(proto))


def is_large(proto) -> bool:
    """Whether `proto` (its data loaded) is written with external data."""
    return weight_bytes(proto) > EXTERNAL_DATA_ABOVE


def is_large_file(path: Path) -> bool:
    """Whether the model at `path` (with its data files) is large: it is then prepared and quantized from its
    files, and the client never holds its weights."""
    from dask_quant.tasks.digest import model_bytes

    return model_bytes(path) > EXTERNAL_DATA_ABOVE


def with_weights(proto, folder: Path):
    """`proto` if it holds its weights, else a copy with them read from the data files in `folder`."""
    from onnx import ModelProto
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model, uses_external_data

    if not any(uses_external_data(tensor) for tensor in _get_all_tensors(proto)):
        return proto
    loaded = ModelProto()
    loaded.CopyFrom(proto)
    load_external_data_for_model(loaded, str(folder))
    return loaded


def data_file(path: Path) -> str:
    """The name of the data file of a large model written at `path`."""
    return f"{Path(path).name}.data"


def save_model(proto, path: Path, name: Path | None = None) -> None:
    """Write `proto` to `path`: one file, or, when it is large, the graph there and the weights in the data file
    of `name` (default `path`; a file written under a temporary name and renamed later) beside it. `proto` is
    left as it was (onnx moves the weights out of the message it saves; they are read back)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    if not is_large(proto):
        onnx.save(proto, str(path))
        return
    location = data_file(name or path)
    onnx.save(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    load_external_data_for_model(proto, str(Path(path).parent))
    share_like_model(path)


def share_like_model(path: Path) -> None:
    """Give a model's data files the permissions of its .onnx file: onnx creates them readable by their owner
    only, and workers running as another user, or readers of a published run, need them as the model."""
    model, *data = files_of(path)
    mode = model.stat().st_mode & 0o777
    for file in data:
        file.chmod(mode)


@contextmanager
def weights_aside(proto) -> Iterator[object]:
    """`proto` for tools that serialize a model to read its graph (onnx's shape inference): when it is large,
    its big tensors are references to external data (their dims kept) while the block runs, then restored."""
    from onnx import TensorProto
    from onnx.external_data_helper import _get_all_tensors, set_external_data

    if not is_large(proto):
        yield proto
        return
    aside = []
    try:
        for tensor in _get_all_tensors(proto):
            if tensor.HasField("raw_data") and len(tensor.raw_data) > _KEPT_INLINE:
                aside.append((tensor, tensor.raw_data))
                set_external_data(tensor, location="set-aside")  # never read: the tools need dims only
                tensor.ClearField("raw_data")
        yield proto
    finally:
        for tensor, data in aside:
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            tensor.raw_data = data


_KEPT_INLINE = 2**16  # small tensors stay: shape inference reads the values of shape-like inputs (Reshape's)


def files_of(path: Path) -> list[Path]:
    """A model file and the external data files it names (the files to copy, link or remove together)."""
    from dask_quant.tasks.digest import external_locations

    path = Path(path)
    return [path, *(path.parent / location for location in external_locations(path.read_bytes()))]


def remove_model(path: Path) -> None:
    """Remove a model file dask-quant wrote and its data files (nothing if it is gone)."""
    path = Path(path)
    if path.is_file():
        for file in files_of(path)[1:]:
            file.unlink(missing_ok=True)
    path.unlink(missing_ok=True)


def check_external_data(proto, path: Path) -> None:
    """InputError when a data file `proto` names is missing or is not beside the model at `path`."""
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    folder = path.resolve().parent
    external = [tensor for tensor in _get_all_tensors(proto) if uses_external_data(tensor)]
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


def load_external_data(proto, path: Path) -> None:
    """Read a model's external data (files beside it) into `proto`; InputError when a file is missing or is
    not beside the model."""
    from onnx.checker import ValidationError
    from onnx.external_data_helper import load_external_data_for_model

    check_external_data(proto, path)
    folder = path.resolve().parent
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
