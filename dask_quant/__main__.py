"""`python -m dask_quant` is the `dask-quant` command."""

from dask_quant.pipeline.cli import main

if __name__ == "__main__":
    main(prog_name="dask-quant")
