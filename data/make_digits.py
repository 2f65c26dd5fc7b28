"""Build the built-in default: a small CNN trained on scikit-learn's digits.

Run from the project root to regenerate every file it writes:

    python data/make_digits.py

It writes, next to this file:
  digits_cnn.onnx    the FP32 model (input "input": N x 1 x 8 x 8, output "logits": N x 10)
  digits_calib.npy   300 calibration samples (never used for training)
  digits_val.npz     300 held-out samples ("input") and their "labels"

Everything is seeded; the data split is fixed by a seeded permutation. Needs
torch and scikit-learn (the project's test extra); no downloads.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 0
N_CALIB = 300
N_VAL = 300


def load_split():
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(x))
    x, y = x[order], y[order]
    n_train = len(x) - N_CALIB - N_VAL
    train = (x[:n_train], y[:n_train])
    calib = x[n_train : n_train + N_CALIB]
    val = (x[n_train + N_CALIB :], y[n_train + N_CALIB :])
    return train, calib, val


def build_model():
    import torch
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    ).to(torch.float32)


def train(model, x, y, epochs: int = 40):
    import torch

    torch.manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=generator).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    return model.eval()


def main() -> None:
    import numpy as np
    import torch

    torch.manual_seed(SEED)
    (x_train, y_train), calib, (x_val, y_val) = load_split()
    model = train(build_model(), x_train, y_train)
    with torch.no_grad():
        acc = (model(torch.from_numpy(x_val)).argmax(1).numpy() == y_val).mean()
    torch.onnx.export(
        model,
        (torch.from_numpy(calib[:2]),),
        str(HERE / "digits_cnn.onnx"),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    np.save(HERE / "digits_calib.npy", calib)
    np.savez(HERE / "digits_val.npz", input=x_val, labels=y_val)
    print(f"wrote digits_cnn.onnx, digits_calib.npy, digits_val.npz; FP32 held-out accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
