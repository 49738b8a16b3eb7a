"""Shared set-up of the benchmark suites: thread count, batch size, machine
description, the GEMM rate of this run and cached oracle results.

Options:
  --fastconv-threads N   threads for fastconv's kernels, BLAS and PyTorch (default: all cores)
  --fastconv-batch B     batch of the kernel benchmarks (default 128)
"""
import functools
import importlib
import importlib.util

import pytest

import fastconv
from fastconv import bench


def _torch():
    if importlib.util.find_spec("torch") is None:
        return None
    return importlib.import_module("torch")


def pytest_addoption(parser):
    group = parser.getgroup("fastconv benchmarks")
    group.addoption("--fastconv-threads", type=int, default=None,
                    help="threads for fastconv, BLAS and PyTorch (default: all cores)")
    group.addoption("--fastconv-batch", type=int, default=128,
                    help="batch size of the kernel benchmarks (default: 128)")


@pytest.fixture(scope="session", autouse=True)
def threads(request):
    """Apply one thread count to every engine for the whole session."""
    n = fastconv.set_num_threads(request.config.getoption("fastconv_threads"))
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(n)
    return n


def pytest_benchmark_update_machine_info(config, machine_info):
    n = fastconv.set_num_threads(config.getoption("fastconv_threads"))
    info = bench.machine_info(n)
    machine_info["fastconv"] = {key: value for key, value in info.items() if key != "section"}


@pytest.fixture(scope="session")
def gemm_gflops(threads):
    """float32 GEMM rate of this machine, measured once per session."""
    return bench.gemm_rate()


@pytest.fixture
def engine_available():
    """Skip a benchmark whose engine is PyTorch when PyTorch is absent."""
    def check(engine):
        if engine == "torch" and _torch() is None:
            pytest.skip("PyTorch is not installed")
    return check


@pytest.fixture(scope="session")
def expected_kernel_result():
    """The result an engine's kernel must reproduce: the NumPy backend's, and
    PyTorch's for the NumPy backend itself (None when PyTorch is absent).

    Benchmarks run group by group, so a small cache avoids recomputing the
    oracle for each engine without holding every large im2col result.
    """
    @functools.lru_cache(maxsize=2)
    def result(op, shape, oracle):
        return bench.kernel_call(op, shape, oracle).result()

    def expected(op, shape, engine):
        oracle = "torch" if engine == "numpy" else "numpy"
        if oracle == "torch" and _torch() is None:
            return None
        return result(op, shape, oracle)
    return expected


@pytest.fixture(scope="session")
def expected_model_result():
    """Like expected_kernel_result, for ModelCall.first of a training step or inference."""
    @functools.lru_cache(maxsize=2)
    def result(net, batch, training, oracle):
        return bench.model_call(net, batch, oracle, training).first

    def expected(net, batch, training, engine):
        oracle = "torch" if engine == "numpy" else "numpy"
        if oracle == "torch" and _torch() is None:
            return None
        return result(net, batch, training, oracle)
    return expected


@pytest.fixture
def record_rates(gemm_gflops):
    """After a benchmark ran, store its FLOPs, effective GFLOP/s at the best time,
    fraction of the GEMM rate and images/s (None: not a batch of images) in
    extra_info (visible in --benchmark-json)."""
    def record(benchmark, flops, images):
        if benchmark.stats is None:  # --benchmark-disable: the call ran once, untimed
            return
        best = benchmark.stats.stats.min
        if images:
            benchmark.extra_info["images_per_s"] = images / best
        benchmark.extra_info["gemm_gflops"] = gemm_gflops
        if flops:
            benchmark.extra_info["flops"] = flops
            benchmark.extra_info["gflops"] = flops / best / 1e9
            benchmark.extra_info["of_gemm"] = flops / best / 1e9 / gemm_gflops
    return record
