"""dask-quant: post-training quantization of ONNX models as a Dask task graph.

One import namespace. The repository keeps its layout (`pipeline/`, `tasks/`,
`cluster/`, `data/` at the top); pyproject maps them here:

- `dask_quant.pipeline`: the client side, with the public stages (calibrate,
  quantize, validate, publish) and `run`, their chain;
- `dask_quant.tasks`: the pure functions workers run (no dask import);
- `dask_quant.cluster`: where tasks run;
- `dask_quant.data`: the built-in default model and data.
"""
