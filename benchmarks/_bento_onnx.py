"""The BentoML side of ``bench_models``: the same ONNX file in an onnxruntime session behind a
BentoML service, the way BentoML's docs write one. Runs in its own virtual environment (BentoML
is installed only for the benchmark), so it imports neither gureum nor the benchmark package.

    bentoml serve _bento_onnx:OnnxModel --working-dir benchmarks --host 127.0.0.1 --port P
(model path in GUREUM_BENCH_ONNX, threads in GUREUM_BENCH_THREADS)
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(workers=1, traffic={"timeout": 60})
class OnnxModel:
    def __init__(self) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("GUREUM_BENCH_THREADS", "1"))
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.environ["GUREUM_BENCH_ONNX"], opts, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    @bentoml.api
    def predict(self, inputs: list[Any]) -> dict[str, Any]:
        batch = np.asarray(inputs, dtype=np.float32)
        outputs = self.session.run(None, {self.input: batch})
        names = [o.name for o in self.session.get_outputs()]
        rows = [dict(zip(names, row, strict=True)) for row in zip(*outputs, strict=True)]
        return {"outputs": [{k: v.tolist() for k, v in r.items()} for r in rows]}
