"""A full training step (forward, cross-entropy, backward, Adam) and inference
(eval-mode forward) of cifar6 and mnist2 at batch 32 and 128, one group per
(net, mode, batch) holding the fastconv, numpy and torch engines.

Every engine starts from the same weights and batch; before timing, each
benchmark checks once that its logits, loss and gradients match the oracle's
(the NumPy backend; PyTorch for the NumPy backend itself).
"""
import pytest

from fastconv import bench

BATCHES = (32, 128)


@pytest.mark.parametrize("engine", bench.ENGINES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("training", [True, False], ids=["train_step", "inference"])
@pytest.mark.parametrize("net", list(bench.NETS))
def bench_model(benchmark, net, training, batch, engine, engine_available, expected_model_result,
                record_rates):
    engine_available(engine)
    benchmark.group = f"{'train step' if training else 'inference'}: {net} batch {batch}"
    call = bench.model_call(net, batch, engine, training)
    expected = expected_model_result(net, batch, training, engine)
    if expected is not None:
        assert bench.model_outputs_agree(call.first, expected), (
            f"{engine} {net} {'training step' if training else 'inference'} disagrees with the oracle"
        )
    benchmark(call.fn)
    record_rates(benchmark, bench.model_flops(net, batch, training), batch)
