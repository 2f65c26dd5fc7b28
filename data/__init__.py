"""Built-in default model and data, installed as the package `dask_quant.data`.

Regenerate every file here with `python data/make_digits.py`.
"""
