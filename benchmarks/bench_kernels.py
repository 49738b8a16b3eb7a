"""Every kernel at every layer shape of cifar6 and mnist2, one group per
(kernel, layer shape) holding the fastconv, numpy and torch engines, plus the
float32 GEMM that bounds them all.

Before timing, each benchmark checks once that its engine's result matches
the oracle's (the NumPy backend; PyTorch for the NumPy backend itself).
"""
import numpy as np
import pytest

from fastconv import bench


def pytest_generate_tests(metafunc):
    if "kernel_case" in metafunc.fixturenames:
        batch = metafunc.config.getoption("fastconv_batch")
        cases, ids = [], []
        for net in bench.NETS:
            for shape in bench.layer_shapes(net, batch):
                for op in bench.KERNEL_OPS[shape.kind]:
                    for engine in bench.ENGINES:
                        cases.append((op, shape, engine))
                        ids.append(f"{op.replace(' ', '_')}-{net}-{shape.layer_names}-{engine}")
        metafunc.parametrize("kernel_case", cases, ids=ids)


def bench_kernel(benchmark, kernel_case, engine_available, expected_kernel_result, record_rates):
    op, shape, engine = kernel_case
    engine_available(engine)
    benchmark.group = f"{op}: {shape.net} {shape.layer_names} {shape.label}"
    call = bench.kernel_call(op, shape, engine)
    expected = expected_kernel_result(op, shape, engine)
    if expected is not None:
        assert bench.outputs_agree(call.result(), expected), (
            f"{engine} {op} on {shape.label} disagrees with the oracle"
        )
    benchmark(call.fn)
    record_rates(benchmark, shape.flops(op), shape.x_shape[0])


@pytest.mark.parametrize("engine", ["numpy", "torch"])
def bench_gemm(benchmark, engine, engine_available, record_rates):
    """The ceiling: one float32 GEMM of two 2048x2048 matrices."""
    engine_available(engine)
    size = bench.GEMM_SIZE
    benchmark.group = f"gemm {size}x{size} float32"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    if engine == "torch":
        import torch

        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        assert bench.outputs_agree(torch.mm(ta, tb), a @ b)
        benchmark(torch.mm, ta, tb)
    else:
        benchmark(np.matmul, a, b)
    record_rates(benchmark, 2 * size ** 3, None)
