"""Inference engines to compare with: ONNX Runtime and OpenVINO.

Both run the PyTorch twin of a net (``harness.torch_twin``: the same layers,
names and weights) exported with ``torch.onnx.export``, in float32 on the
CPU: ONNX Runtime's CPU provider with ``intra_op_num_threads`` set to the
run's thread count, and OpenVINO with ``INFERENCE_PRECISION_HINT=f32`` (on
a CPU with bfloat16 instructions its default is bfloat16, which is another
comparison) and ``INFERENCE_NUM_THREADS``. Each is a peer only when it is
installed (the ``bench`` extra: ``pip install "fastconv[bench]"``), and the
export needs PyTorch.

Before a peer is timed, its first output is compared with fastconv's on the
same weights and batch (``harness.outputs_agree``), so a wrong export shows
as a mismatch, not a good number.
"""
import importlib
import importlib.util
import io
import warnings

import numpy as np

from fastconv.bench import harness

__all__ = ["PEERS", "available_peers", "onnx_model", "peer_call", "peer_inference_rows"]

PEERS = ("onnxruntime", "openvino")


def _installed(name):
    return importlib.util.find_spec(name) is not None


def available_peers():
    """The peers that can run here: installed, with PyTorch and onnx for the export."""
    if not (_installed("torch") and _installed("onnx")):
        return []
    return [peer for peer in PEERS if _installed(peer)]


def onnx_model(model, image_shape):
    """``model``'s PyTorch twin in evaluation mode as ONNX bytes, with a
    dynamic batch dimension; input ``x`` (N, *image_shape), output ``logits``."""
    torch = importlib.import_module("torch")
    twin = harness.torch_twin(model).eval()
    example = torch.zeros((2,) + tuple(image_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    # The TorchScript exporter: it needs no package beyond PyTorch and onnx
    # (the newer one needs onnxscript), and says it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(twin, (example,), buffer, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def _runner(peer, onnx_bytes, threads):
    """A function x -> logits running ``onnx_bytes`` on ``peer`` with ``threads`` threads."""
    if peer == "onnxruntime":
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})[0]
    if peer == "openvino":
        ov = importlib.import_module("openvino")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(onnx_bytes), "CPU",
                                      {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        return lambda x: request.infer({0: x})[0]
    raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")


def peer_call(net, batch_size, peer, threads):
    """A ``harness.ModelCall`` for inference of ``net`` on ``peer``: the
    net's constructor with the harness's seed, the harness's batch."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    _, image_shape = harness._ALL_NETS[net]
    model = harness._build(net)
    x, _ = harness._batch(net, batch_size)
    run = _runner(peer, onnx_model(model, image_shape), threads)

    def infer():
        return run(x)

    return harness.ModelCall(infer, {"logits": np.array(infer(), copy=True)})


def peer_inference_rows(nets, batches, threads, time_call, peers=None):
    """One row per net and batch: fastconv's inference time, each peer's,
    their ratios (peer time / fastconv time: above 1, fastconv is faster) and
    the peers whose output did not match fastconv's."""
    peers = available_peers() if peers is None else list(peers)
    rows = []
    for net in nets:
        for batch in batches:
            ours = harness.model_call(net, batch, "fastconv", training=False)
            row = {"section": "peers", "net": net, "batch": batch, "fastconv_s": time_call(ours.fn),
                   "mismatch": []}
            for peer in peers:
                call = peer_call(net, batch, peer, threads)
                if not harness.outputs_agree(call.first["logits"], ours.first["logits"], 1e-3):
                    row["mismatch"].append(peer)
                row[f"{peer}_s"] = time_call(call.fn)
                row[f"vs_{peer}"] = row[f"{peer}_s"] / row["fastconv_s"]
            rows.append(row)
    return rows
