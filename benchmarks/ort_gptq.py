"""ONNX Runtime's own GPTQ on a model and a calibration .npz, in one process: what benchmarks compare ours to.

    python benchmarks/ort_gptq.py MODEL CALIB.npz OUT.onnx [--batch 8] [--block-size 32]

MatMulNBitsQuantizer with GPTQWeightOnlyQuantConfig (its defaults: 4 bits,
asymmetric, percdamp 0.01, 128 columns per lazy batch), reading CALIB's arrays
--batch rows at a time through a CalibrationDataReader. Prints the seconds the
quantizer took (reading the model included) as its last line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("calib")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block-size", type=int, default=32)
    args = parser.parse_args()
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    from dask_quant.pipeline.stages.quantize import _matmul_nbits_module

    nbits = _matmul_nbits_module()
    with np.load(args.calib) as data:
        arrays = {name: data[name] for name in data.files}
    rows = len(next(iter(arrays.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start = 0

        def get_next(self):
            if self.start >= rows:
                return None
            self.start += args.batch
            return {name: value[self.start - args.batch : self.start] for name, value in arrays.items()}

    start = time.perf_counter()
    algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=Reader())
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(args.model), block_size=args.block_size, algo_config=algo)
    with contextlib.redirect_stdout(io.StringIO()):  # its progress bar
        quantizer.process()
    quantizer.model.save_model_to_file(args.out)
    print(f"{time.perf_counter() - start:.2f}")


if __name__ == "__main__":
    main()
