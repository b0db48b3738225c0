"""Single-core compute roofline through onnxruntime: INT8 MatMulInteger and FP32 MatMul.

The graphs are built at run time with onnx.helper (imported lazily: onnx is a dev/train tool,
never a flight dependency). The weights are initializers, as in the real models, so onnxruntime
prepacks them. The best of several runs is the roofline: the most this core, this library and
this thread setting can do, which the models' achieved MACs/s is compared against.
"""

from __future__ import annotations

import time

import numpy as np


def _graph(n: int, int8: bool) -> bytes:
    import onnx  # lazy: only the benchmark builds graphs
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        # u8 activations x s8 weights: the pair the VNNI / dot-product kernels take
        b = numpy_helper.from_array(rng.integers(-128, 128, (n, n), dtype=np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_t, y_t = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_t, y_t = TensorProto.FLOAT, TensorProto.FLOAT
    g = helper.make_graph([node], "roofline", [helper.make_tensor_value_info("A", a_t, [n, n])],
                          [helper.make_tensor_value_info("Y", y_t, [n, n])], initializer=[b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8  # readable by any onnxruntime >= 1.10
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _session(blob: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(blob, sess_options=so, providers=["CPUExecutionProvider"])


def measure(n: int = 1024, threads: int = 1, min_s: float = 1.0, reps: int = 5, progress=None) -> dict:
    """GMAC/s of an n x n x n matmul, INT8 and FP32; best and median of the timed runs."""
    rng = np.random.default_rng(1)
    out = {"n": n, "threads": threads}
    for name, int8 in (("int8", True), ("fp32", False)):
        sess = _session(_graph(n, int8), threads)
        a = rng.integers(0, 256, (n, n), dtype=np.uint8) if int8 else rng.standard_normal((n, n), dtype=np.float32)
        sess.run(None, {"A": a})  # warm-up: prepacking, first-touch allocations
        times = []
        t_end = time.perf_counter() + min_s
        while len(times) < reps or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            sess.run(None, {"A": a})
            times.append(time.perf_counter() - t0)
            if len(times) >= 200:
                break
        macs = n**3
        out[f"{name}_gmacs"] = macs / min(times) / 1e9
        out[f"{name}_gmacs_median"] = macs / float(np.median(times)) / 1e9
        out[f"{name}_runs"] = len(times)
        if progress:
            progress(1)
    out["int8_over_fp32"] = out["int8_gmacs"] / out["fp32_gmacs"]
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 1024), indent=1))
