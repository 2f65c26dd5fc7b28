"""The public stages, one module each: prepare, calibrate, quantize, validate, publish.

Import them from `dask_quant.pipeline` (see its docstring for the chain).
"""
