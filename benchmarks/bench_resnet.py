"""ResNets as graphs against PyTorch: a resnet20 training step (forward,
cross-entropy, backward, Adam) at batch 128, and resnet18 inference at
224x224, batch 1 and 32; one group per case holding the fastconv and torch
engines (the NumPy backend is left out: minutes per call at these sizes).

Before timing, the fastconv engine's logits, loss and gradients are checked
against PyTorch's from the same weights and batch.
"""
import functools

import pytest

from fastconv import bench

CASES = [("resnet20", 128, True), ("resnet20", 128, False), ("resnet18", 1, False), ("resnet18", 32, False)]


@functools.lru_cache(maxsize=1)
def _torch_result(net, batch, training):
    return bench.model_call(net, batch, "torch", training).first


@pytest.mark.parametrize("engine", ["fastconv", "torch"])
@pytest.mark.parametrize("net, batch, training", CASES,
                         ids=[f"{net}-{'train_step' if training else 'inference'}-{batch}"
                              for net, batch, training in CASES])
def bench_graph_model(benchmark, net, batch, training, engine, engine_available, record_rates):
    engine_available(engine)
    engine_available("torch")
    benchmark.group = f"{'train step' if training else 'inference'}: {net} batch {batch}"
    call = bench.model_call(net, batch, engine, training)
    if engine == "fastconv":
        assert bench.model_outputs_agree(call.first, _torch_result(net, batch, training)), (
            f"fastconv {net} {'training step' if training else 'inference'} disagrees with PyTorch")
    benchmark(call.fn)
    record_rates(benchmark, bench.model_flops(net, batch, training), batch)


@pytest.mark.parametrize("kind", ["graph", "sequential"])
def bench_per_node_overhead(benchmark, kind):
    """A forward and backward pass through 100 ReLUs on a 1x4 input, as a Graph
    and as a Sequential: what each model adds per layer when the kernels cost nothing."""
    import numpy as np

    from fastconv import Graph, Sequential
    from fastconv.nn import ReLU

    benchmark.group = "per-node overhead: 100 ReLUs, forward + backward"
    relus = [ReLU() for _ in range(100)]
    if kind == "graph":
        model = Graph()
        for i, relu in enumerate(relus):
            model.add(f"relu{i}", relu)
    else:
        model = Sequential(relus)
    x = np.ones((1, 4), np.float32)
    grad = np.ones((1, 4), np.float32)

    def step():
        model(x)
        model.backward(grad)

    benchmark(step)
