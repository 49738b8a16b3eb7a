"""The inference peers of fastconv bench (ONNX Runtime, OpenVINO): the same
weights give the same outputs as fastconv's before anything is timed."""
import numpy as np
import pytest

from fastconv import bench
from fastconv.bench import harness, peers

pytest.importorskip("torch")
pytest.importorskip("onnx")


def fastconv_logits(net, batch):
    return harness.model_call(net, batch, "fastconv", training=False).first["logits"]


@pytest.mark.parametrize("peer", peers.PEERS)
@pytest.mark.parametrize("net", ["cifar6", "mnist2", "resnet20"])
def test_a_peer_gives_fastconvs_outputs_on_the_same_weights(peer, net):
    pytest.importorskip(peer)
    call = peers.peer_call(net, 3, peer, threads=1)
    expected = fastconv_logits(net, 3)
    assert call.first["logits"].shape == expected.shape == (3, 10)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(call.first["logits"], expected, rtol=0, atol=1e-4 * scale)
    # The timed function gives the same again, and a different batch size works (dynamic batch axis).
    np.testing.assert_allclose(call.fn(), call.first["logits"], rtol=0, atol=1e-6 * scale)
    assert peers.peer_call(net, 1, peer, threads=1).first["logits"].shape == (1, 10)


def test_peer_rows_and_their_table():
    available = peers.available_peers()
    if not available:
        pytest.skip("neither onnxruntime nor openvino is installed")
    calls = []

    def time_call(fn):
        calls.append(fn())
        return 0.5 if len(calls) == 1 else 1.0

    rows = peers.peer_inference_rows(["mnist2"], [2], 1, time_call, peers=available)
    (row,) = rows
    assert row["mismatch"] == [] and row["fastconv_s"] == 0.5
    for peer in available:
        assert row[f"{peer}_s"] == 1.0 and row[f"vs_{peer}"] == 2.0
    table = bench.format_table(rows)
    assert "against the inference engines" in table
    assert all(f"vs {peer}" in table for peer in available)


def test_an_unknown_peer_is_refused():
    with pytest.raises(ValueError, match="peer must be one of"):
        peers.peer_call("mnist2", 2, "tensorrt", threads=1)
