"""Inference (float32) of cifar6 and mnist2 at batch 1, 32 and 128: fastconv,
PyTorch, ONNX Runtime and OpenVINO (INFERENCE_PRECISION_HINT=f32), one group
per (net, batch). The peers run the PyTorch twin exported to ONNX
(``fastconv.bench.peers``) and are skipped when not installed (the ``bench``
extra). Before timing, each checks once that its logits match fastconv's on
the same weights and batch.
"""
import pytest

from fastconv import _runtime, bench
from fastconv.bench import peers

BATCHES = (1, 32, 128)
ENGINES = ("fastconv", "torch") + peers.PEERS


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("net", list(bench.NETS))
def bench_inference(benchmark, net, batch, engine):
    benchmark.group = f"inference: {net} batch {batch}"
    ours = bench.model_call(net, batch, "fastconv", training=False)
    if engine == "fastconv":
        call = ours
    elif engine == "torch":
        pytest.importorskip("torch")
        call = bench.model_call(net, batch, "torch", training=False)
    else:
        if engine not in peers.available_peers():
            pytest.skip(f"{engine} (and onnx, torch for the export) not installed: pip install 'fastconv[bench]'")
        call = peers.peer_call(net, batch, engine, threads=_runtime.get_num_threads())
    assert bench.outputs_agree(call.first["logits"], ours.first["logits"], 1e-3), f"{engine} disagrees with fastconv"
    benchmark(call.fn)
