"""VGG-16/19, AdaptiveAvgPool2d, weight import/export and the ImageNet helpers.

The oracle is PyTorch: a VGG built by hand from torch.nn layers (torchvision's
layout, random weights, nothing downloaded) whose state_dict is imported into
fastconv, and a Keras-layout HDF5 file derived from the same weights whose
forward pass is computed here with Keras's own conventions (NHWC, BGR input,
HWIO kernels, (in, out) dense kernels, flattening in HWC order). Most checks
use a narrow VGG-16 (widths divided by 16) so that they run in moments; one
check runs the full-size VGG-16 at 224x224.
"""
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import models
from fastconv.cli import main
from fastconv.models import imagenet
from fastconv.models.weights import load_weights, read_safetensors, save_weights, write_safetensors
from fastconv.nn import layers

NARROW_WIDTHS = (4, 8, 16, 32, 32)
NARROW_HIDDEN = 64
RTOL = 1e-4


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def narrow(blocks=models.VGG16_BLOCKS, **options):
    return models.vgg(blocks, NARROW_WIDTHS, NARROW_HIDDEN, **options)


# --------------------------------------------------------------------------- PyTorch twins


def torch_vgg(torch, blocks, widths, hidden, include_top=True, batchnorm=False, num_classes=1000, seed=0):
    """A VGG laid out as torchvision's (features / avgpool / classifier), random weights, eval mode."""
    nn = torch.nn
    torch.manual_seed(seed)

    class VGG(nn.Module):
        def __init__(self):
            super().__init__()
            modules, channels = [], 3
            for count, width in zip(blocks, widths):
                for _ in range(count):
                    modules.append(nn.Conv2d(channels, width, 3, padding=1))
                    if batchnorm:
                        modules.append(nn.BatchNorm2d(width))
                    modules.append(nn.ReLU(inplace=True))
                    channels = width
                modules.append(nn.MaxPool2d(2, 2))
            self.features = nn.Sequential(*modules)
            if include_top:
                self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
                self.classifier = nn.Sequential(
                    nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(),
                    nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                    nn.Linear(hidden, num_classes))

        def forward(self, x):
            x = self.features(x)
            if include_top:
                x = self.classifier(torch.flatten(self.avgpool(x), 1))
            return x

    net = VGG()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                # Statistics away from (0, 1) so that a mix-up of the four BN tensors shows.
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_output(torch, net, x):
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def torch_state(net):
    return {key: value.detach().numpy().copy() for key, value in net.state_dict().items()}


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def narrow_net(torch):
    return torch_vgg(torch, models.VGG16_BLOCKS, NARROW_WIDTHS, NARROW_HIDDEN)


@pytest.fixture(scope="module")
def narrow_pth(narrow_net, torch, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "narrow_vgg16.pth"
    torch.save(narrow_net.state_dict(), path)
    return path


# --------------------------------------------------------------------------- AdaptiveAvgPool2d


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 15), w=st.integers(1, 15),
    oh=st.one_of(st.none(), st.integers(1, 9)), ow=st.one_of(st.none(), st.integers(1, 9)),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_adaptive_avg_pool_matches_torch(h, w, oh, ow, dtype):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(h * 31 + w).standard_normal((2, 3, h, w)).astype(dtype)
    layer = layers.AdaptiveAvgPool2d((oh, ow))
    y = layer.forward(x)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.adaptive_avg_pool2d(xt, (oh, ow))
    assert y.shape == tuple(yt.shape) == layer.output_shape(x.shape)
    assert y.dtype == x.dtype
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.backward(dy), xt.grad.numpy(), rtol=tol, atol=tol)


def test_adaptive_avg_pool_gradient_is_numerical_gradient():
    layer = layers.AdaptiveAvgPool2d((3, 5))
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 4))
    weights = np.random.default_rng(1).standard_normal(layer.output_shape(x.shape))
    layer.forward(x)
    analytic = layer.backward(weights)
    numeric = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[index] = 1e-6
        numeric[index] = ((layer.infer(x + step) - layer.infer(x - step)) * weights).sum() / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("bad, error", [
    (0, ValueError), (-2, ValueError), ((7, 0), ValueError), (2.5, TypeError), (True, TypeError),
    ((1, 2, 3), TypeError), ("7", TypeError),
])
def test_adaptive_avg_pool_rejects_bad_output_size(bad, error):
    with pytest.raises(error, match="output_size"):
        layers.AdaptiveAvgPool2d(bad)


def test_adaptive_avg_pool_saves_and_loads(tmp_path):
    model = fastconv.Sequential(layers.Conv2d(3, 4, 3), layers.AdaptiveAvgPool2d((2, None)), layers.Flatten())
    assert model.named_layers()[1][0] == "avgpool1"
    path = model.save(tmp_path / "m.npz")
    again = fastconv.load(path)
    assert again.layer("avgpool1").output_size == (2, None)
    x = images((2, 3, 9, 6))
    np.testing.assert_array_equal(again.forward(x), model.forward(x))
    with pytest.raises(RuntimeError, match="before forward"):
        layers.AdaptiveAvgPool2d(3).backward(np.zeros((1, 1, 3, 3)))


# --------------------------------------------------------------------------- architectures


def test_vgg16_layer_names_and_sizes():
    model = models.vgg16(include_top=False, seed=0)
    names = [name for name, _ in model.named_layers()]
    assert names[:5] == ["block1_conv1", "block1_conv1_relu", "block1_conv2", "block1_conv2_relu", "block1_pool"]
    assert names[-1] == "block5_pool"
    assert [n for n in names if n.endswith("_pool")] == [f"block{b}_pool" for b in range(1, 6)]
    assert model.num_parameters() == 14_714_688  # Keras's VGG16(include_top=False)
    # Fully convolutional: any size that survives five 2x2 pools.
    shape = (1, 3, 64, 96)
    for _, layer in model.named_layers():
        shape = layer.output_shape(shape)
    assert shape == (1, 512, 2, 3)
    vgg19 = models.vgg19(include_top=False, seed=0)
    assert vgg19.num_parameters() == 20_024_384
    assert sum(isinstance(layer, layers.Conv2d) for _, layer in vgg19.named_layers()) == 16


def test_vgg_head_and_batchnorm_layout():
    model = narrow(batchnorm=True, num_classes=10, seed=0)
    names = [name for name, _ in model.named_layers()]
    assert names[:4] == ["block1_conv1", "block1_conv1_bn", "block1_conv1_relu", "block1_conv2"]
    assert names[-9:] == ["avgpool", "flatten", "fc1", "fc1_relu", "fc1_dropout",
                          "fc2", "fc2_relu", "fc2_dropout", "predictions"]
    assert model.predict(images((2, 3, 32, 32))).shape == (2, 10)
    assert model.predict(images((1, 3, 80, 48))).shape == (1, 10)


@pytest.mark.parametrize("options, error", [
    ({"include_top": 1}, TypeError), ({"batchnorm": "yes"}, TypeError), ({"num_classes": 0}, ValueError),
    ({"blocks": (2, 2)}, ValueError),
])
def test_vgg_rejects_bad_arguments(options, error):
    with pytest.raises(error):
        models.vgg(**{"widths": NARROW_WIDTHS, **options})


# --------------------------------------------------------------------------- PyTorch import


@pytest.mark.parametrize("batchnorm", [False, True], ids=["plain", "batchnorm"])
def test_pytorch_state_dict_import_matches_torch(torch, tmp_path, batchnorm):
    net = torch_vgg(torch, models.VGG16_BLOCKS, NARROW_WIDTHS, NARROW_HIDDEN, batchnorm=batchnorm)
    path = tmp_path / "vgg.pth"
    torch.save(net.state_dict(), path)
    model = narrow(batchnorm=batchnorm, weights=path)
    assert not model.training
    x = images((2, 3, 64, 64))
    assert relative_error(model.predict(x), torch_output(torch, net, x)) < RTOL
    assert model.meta["preprocessing"] == "torch"
    assert model.meta["normalization"] == imagenet.normalization("torch")
    assert model.meta["classes"][65] == "sea snake"


def test_headless_import_is_fully_convolutional(torch, narrow_pth, narrow_net):
    model = narrow(include_top=False, weights=narrow_pth)  # the file's head is left out
    for shape in [(1, 3, 32, 32), (2, 3, 48, 80)]:
        x = images(shape)
        assert relative_error(model.predict(x), torch_output(torch, narrow_net.features, x)) < RTOL
    assert "classes" not in model.meta


def test_gradient_to_the_image_matches_torch(torch, narrow_pth, narrow_net):
    model = narrow(weights=narrow_pth)
    x = images((2, 3, 64, 64), seed=3)
    logits = model.forward(x)
    seed = np.zeros_like(logits)
    seed[:, [51, 65]] = 1.0
    dx = model.backward(seed)
    xt = torch.tensor(x, requires_grad=True)
    narrow_net(xt)[:, [51, 65]].sum().backward()
    assert relative_error(dx, xt.grad.numpy()) < RTOL


def test_checkpoint_dicts_and_npz_files_import(torch, narrow_net, tmp_path):
    expected = narrow(weights=torch_state(narrow_net)).state_dict()
    torch.save({"epoch": 3, "state_dict": narrow_net.state_dict()}, tmp_path / "checkpoint.pt")
    np.savez(tmp_path / "state.npz", **torch_state(narrow_net))
    for name in ("checkpoint.pt", "state.npz"):
        loaded = narrow(weights=tmp_path / name).state_dict()
        assert all(np.array_equal(loaded[k], expected[k]) for k in expected), name


def test_whole_pickled_model_is_refused(torch, narrow_net, tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(narrow_net.features, path)  # an nn.Sequential, pickled whole
    with pytest.raises(ValueError, match="state_dict"):
        load_weights(narrow(), path)


# --------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_keeps_order_dtypes_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "z.weight": rng.standard_normal((3, 2, 2)).astype(np.float32),
        "a.bias": rng.standard_normal(5),
        "half": rng.standard_normal((4,)).astype(np.float16),
        "count": np.arange(6, dtype=np.int64).reshape(2, 3),
        "empty": np.zeros((0, 4), np.float32),
        "flag": np.array([True, False]),
    }
    path = write_safetensors(tmp_path / "t.safetensors", tensors, {"note": "hello"})
    raw = path.read_bytes()
    header_size = int.from_bytes(raw[:8], "little")
    assert (8 + header_size) % 8 == 0
    header = json.loads(raw[8:8 + header_size])
    assert header["z.weight"] == {"dtype": "F32", "shape": [3, 2, 2], "data_offsets": [0, 48]}
    back, metadata = read_safetensors(path)
    assert metadata == {"note": "hello"}
    assert list(back) == list(tensors)
    for key, value in tensors.items():
        assert back[key].dtype == value.dtype and np.array_equal(back[key], value), key


def test_safetensors_reads_bfloat16_as_float32(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bits.tobytes())
    back, _ = read_safetensors(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(back["x"], values)


def test_safetensors_agrees_with_the_reference_package(narrow_net, torch, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    state = {key: value.contiguous() for key, value in narrow_net.state_dict().items()}
    safetensors_torch.save_file(state, tmp_path / "theirs.safetensors")
    ours, _ = read_safetensors(tmp_path / "theirs.safetensors")
    assert all(np.array_equal(ours[key], value.numpy()) for key, value in state.items())
    # Their writer sorts the tensors by name ('classifier' before 'features', 'features.10'
    # before 'features.2'): the import still pairs the layers correctly.
    model = narrow(weights=tmp_path / "theirs.safetensors")
    x = images((1, 3, 32, 32))
    assert relative_error(model.predict(x), torch_output(torch, narrow_net, x)) < RTOL
    save_weights(model, tmp_path / "ours.safetensors")
    theirs = safetensors_numpy.load_file(tmp_path / "ours.safetensors")
    assert theirs.keys() == model.state_dict().keys()
    assert all(np.array_equal(theirs[key], value) for key, value in model.state_dict().items())


@pytest.mark.parametrize("extension", [".npz", ".safetensors"])
def test_export_then_import_restores_the_model(narrow_pth, tmp_path, extension):
    model = narrow(weights=narrow_pth)
    path = save_weights(model, tmp_path / f"w{extension}")
    again = load_weights(narrow(seed=1), path)
    assert again.meta["preprocessing"] == "torch"
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)
    with pytest.raises(ValueError, match=r"\.npz or \.safetensors"):
        save_weights(model, tmp_path / "w.pth")


# --------------------------------------------------------------------------- Keras HDF5


def keras_layers(net, include_top=True):
    """[(Keras layer name, [(weight name, array)])] of ``net`` as Keras's VGG16 lays it
    out: BGR input, HWIO kernels, (in, out) dense kernels, flatten in HWC order."""
    convs = [m for m in net.features if m.__class__.__name__ == "Conv2d"]
    result = [("input_1", [])]
    index = 0
    for block, count in enumerate(models.VGG16_BLOCKS, start=1):
        for i in range(1, count + 1):
            conv = convs[index]
            kernel = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
            if index == 0:
                kernel = kernel[:, :, ::-1, :]  # Keras's VGG reads BGR
            name = f"block{block}_conv{i}"
            result.append((name, [(f"{name}/kernel:0", kernel), (f"{name}/bias:0", conv.bias.detach().numpy())]))
            index += 1
        result.append((f"block{block}_pool", []))
    if include_top:
        fc1, fc2, fc3 = (m for m in net.classifier if m.__class__.__name__ == "Linear")
        channels = convs[-1].out_channels
        w1 = fc1.weight.detach().numpy().T.reshape(channels, 7, 7, -1).transpose(1, 2, 0, 3).reshape(49 * channels, -1)
        result.append(("flatten", []))
        for name, weight, layer in (("fc1", w1, fc1), ("fc2", fc2.weight.detach().numpy().T, fc2),
                                    ("predictions", fc3.weight.detach().numpy().T, fc3)):
            result.append((name, [(f"{name}/kernel:0", weight), (f"{name}/bias:0", layer.bias.detach().numpy())]))
    return result


def keras1_names(keras):
    """The same layers with Keras 1's weight names ('block1_conv1_W_1:0'), as in the
    VGG16 weight files Keras has distributed since 2016."""
    renamed = []
    for name, weights in keras:
        renamed.append((name, [(f"{name}_{'W' if weight_name.endswith('kernel:0') else 'b'}_1:0", array)
                               for weight_name, array in weights]))
    return renamed


def write_keras_h5(path, keras, wrap_in_model=False):
    h5py = pytest.importorskip("h5py", reason="Keras files are read with h5py")
    with h5py.File(path, "w") as f:
        root = f.create_group("model_weights") if wrap_in_model else f
        root.attrs["layer_names"] = np.array([name.encode() for name, _ in keras])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.2.4"
        for name, weights in keras:
            group = root.create_group(name)
            group.attrs["weight_names"] = np.array([w.encode() for w, _ in weights], dtype="S64")
            for weight_name, array in weights:
                group.create_dataset(weight_name, data=np.ascontiguousarray(array, dtype=np.float32))
    return path


def keras_forward(torch, keras, x_bgr_nhwc):
    """Keras's VGG16 forward on NHWC BGR images, from the Keras-layout weights."""
    functional = torch.nn.functional
    h = torch.from_numpy(np.ascontiguousarray(x_bgr_nhwc))
    with torch.no_grad():
        for name, weights in keras:
            if "_conv" in name:
                kernel, bias = (torch.from_numpy(np.ascontiguousarray(a)) for _, a in weights)
                nchw = functional.conv2d(h.permute(0, 3, 1, 2), kernel.permute(3, 2, 0, 1), bias, padding=1)
                h = functional.relu(nchw).permute(0, 2, 3, 1)
            elif name.endswith("_pool"):
                h = functional.max_pool2d(h.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
            elif name == "flatten":
                h = h.reshape(h.shape[0], -1)  # NHWC order
            elif weights:
                kernel, bias = (torch.from_numpy(np.ascontiguousarray(a)) for _, a in weights)
                h = h @ kernel + bias
                if name != "predictions":
                    h = functional.relu(h)
    return h.numpy()


@pytest.mark.parametrize("wrap_in_model, legacy", [(False, False), (True, False), (False, True)],
                         ids=["save_weights", "whole_model", "keras1_names"])
def test_keras_h5_import_matches_keras_semantics(torch, narrow_net, tmp_path, wrap_in_model, legacy):
    keras = keras_layers(narrow_net)
    path = write_keras_h5(tmp_path / "vgg16.h5", keras1_names(keras) if legacy else keras, wrap_in_model)
    x = images((2, 3, 224, 224), seed=5)  # Keras's VGG16 head takes 224x224 images only
    reference = keras_forward(torch, keras, x[:, ::-1].transpose(0, 2, 3, 1))
    # The test's own conversion is faithful: Keras's forward equals the PyTorch network's.
    assert relative_error(reference, torch_output(torch, narrow_net, x)) < RTOL
    model = narrow(weights=path)
    assert relative_error(model.predict(x), reference) < RTOL
    assert model.meta["preprocessing"] == "caffe"


def test_keras_h5_headless_and_caffe_preprocessing(torch, narrow_net, tmp_path):
    keras = keras_layers(narrow_net, include_top=False)
    path = write_keras_h5(tmp_path / "notop.h5", keras)
    model = narrow(include_top=False, weights=path)
    pixels = np.random.default_rng(2).integers(0, 256, (1, 40, 56, 3), dtype=np.uint8)
    # Keras's preprocess_input for VGG16: RGB -> BGR, minus the BGR mean, in 0-255.
    keras_input = pixels[..., ::-1].astype(np.float64) - np.array([103.939, 116.779, 123.68])
    reference = keras_forward(torch, keras, keras_input.astype(np.float32))
    ours = model.predict(imagenet.preprocess(pixels[0], model.meta["preprocessing"], size=None, resize=None))
    assert relative_error(ours.transpose(0, 2, 3, 1), reference) < RTOL


def test_keras_dense_after_flatten_needs_the_map_size(torch, tmp_path):
    """Without an AdaptiveAvgPool2d before the Flatten the (H, W) of the flattened maps
    comes from model.meta['input_shape']; non-square maps cannot be guessed."""
    rng = np.random.default_rng(8)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)  # HWIO
    dense = rng.standard_normal((4 * 4 * 6, 5)).astype(np.float32)  # rows in (H, W, C) order
    keras = [("conv", [("conv/kernel:0", kernel), ("conv/bias:0", np.zeros(4, np.float32))]),
             ("flatten", []),
             ("dense", [("dense/kernel:0", dense), ("dense/bias:0", np.zeros(5, np.float32))])]
    path = write_keras_h5(tmp_path / "small.h5", keras)
    model = fastconv.Sequential([("conv", layers.Conv2d(3, 4, 3)), ("pool", layers.MaxPool2d(2)),
                                 ("flatten", layers.Flatten()), ("dense", layers.Linear(96, 5))])
    with pytest.raises(ValueError, match=r"height and width.*input_shape"):
        load_weights(model, path, preprocessing="torch")
    model.meta["input_shape"] = [3, 10, 14]
    load_weights(model, path, preprocessing="torch")  # RGB weights: no colour flip
    x = images((2, 3, 10, 14), seed=9)
    functional = torch.nn.functional
    maps = functional.max_pool2d(functional.conv2d(torch.from_numpy(x),
                                                   torch.from_numpy(kernel).permute(3, 2, 0, 1)), 2)
    reference = maps.permute(0, 2, 3, 1).reshape(2, -1).numpy() @ dense
    assert relative_error(model.predict(x), reference) < RTOL


# --------------------------------------------------------------------------- errors


def test_weights_of_another_architecture_name_the_layer(torch, tmp_path):
    vgg19 = torch_vgg(torch, models.VGG19_BLOCKS, NARROW_WIDTHS, NARROW_HIDDEN)
    torch.save(vgg19.state_dict(), tmp_path / "vgg19.pth")
    model = narrow()
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"'block4_conv1' \(Conv2d\) expects weight of shape \(32, 16, 3, 3\)"
                                         r".*'features\.16\.weight' has shape \(16, 16, 3, 3\)"):
        load_weights(model, tmp_path / "vgg19.pth")
    assert all(np.array_equal(model.state_dict()[k], v) for k, v in before.items())  # nothing changed
    with pytest.raises(ValueError, match=r"'block1_conv1_bn' \(BatchNorm2d\) takes weight, bias, running_mean"):
        load_weights(narrow(batchnorm=True), tmp_path / "vgg19.pth")


def test_wrong_shape_names_layer_and_both_shapes(narrow_net, tmp_path):
    state = torch_state(narrow_net)
    state["features.10.weight"] = np.zeros((16, 8, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"'block3_conv1' \(Conv2d\) expects weight of shape \(16, 8, 3, 3\), "
                                         r"but the file's 'features\.10\.weight' has shape \(16, 8, 5, 5\)"):
        load_weights(narrow(), state)
    keras = keras_layers(narrow_net)
    keras[-1][1][0] = ("predictions/kernel:0", np.zeros((NARROW_HIDDEN, 10), np.float32))
    with pytest.raises(ValueError, match=r"'predictions' \(Linear\) expects weight of shape \(1000, 64\), "
                                         r"but the file's 'predictions/predictions/kernel:0' has shape \(10, 64\) "
                                         r"\(shape \(64, 10\) in Keras's layout\)"):
        load_weights(narrow(), write_keras_h5(tmp_path / "k.h5", keras))


def test_head_and_headless_mismatches(narrow_net, narrow_pth, tmp_path):
    with pytest.raises(ValueError, match=r"the file ends before layer 'fc1' \(Linear\)"):
        load_weights(narrow(), torch_state(narrow_net.features))
    with pytest.raises(ValueError, match=r"'classifier\.0' has nowhere to go after the model's last layer "
                                         r"'block5_conv3'.*strict=False"):
        load_weights(narrow(include_top=False), narrow_pth)
    load_weights(narrow(include_top=False), narrow_pth, strict=False)


@pytest.mark.parametrize("extension", [".pth", ".safetensors", ".npz", ".h5"])
def test_truncated_files_are_reported_with_their_path(narrow_net, narrow_pth, tmp_path, extension):
    full = tmp_path / f"full{extension}"
    if extension == ".pth":
        shutil.copy(narrow_pth, full)
    elif extension == ".h5":
        write_keras_h5(full, keras_layers(narrow_net))
    else:
        save_weights(narrow(weights=narrow_pth), full)
    cut = tmp_path / f"cut{extension}"
    cut.write_bytes(full.read_bytes()[:os.path.getsize(full) // 2])
    with pytest.raises(ValueError, match=str(cut)):
        load_weights(narrow(), cut)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights(narrow(), tmp_path / "absent.pth")
    (tmp_path / "notes.txt").write_text("these are not weights at all, just some words")
    with pytest.raises(ValueError, match="notes.txt"):
        load_weights(narrow(), tmp_path / "notes.txt")


# --------------------------------------------------------------------------- full size


def test_full_size_vgg16_matches_torch_at_224(torch):
    net = torch_vgg(torch, models.VGG16_BLOCKS, models.VGG_WIDTHS, 4096)
    model = models.vgg16(weights=torch_state(net))
    assert model.num_parameters() == sum(p.numel() for p in net.parameters()) == 138_357_544
    x = images((1, 3, 224, 224), seed=7)
    assert relative_error(model.predict(x), torch_output(torch, net, x)) < RTOL


# --------------------------------------------------------------------------- ImageNet helpers


def test_class_names_are_the_ilsvrc_index():
    names = imagenet.class_names()
    assert len(names) == 1000
    known = {0: "tench", 1: "goldfish", 51: "triceratops", 65: "sea snake", 207: "golden retriever",
             281: "tabby", 340: "zebra", 409: "analog clock", 817: "sports car", 948: "Granny Smith",
             954: "banana", 963: "pizza", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known
    assert all(name == name.strip() and name for name in names)


def test_preprocess_crops_the_centre_and_normalizes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)  # the shorter side is already 256
    x = imagenet.preprocess(image)
    crop = image[16:240, 38:262].transpose(2, 0, 1)[None] / 255.0
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(x, (crop - mean) / std, rtol=1e-6, atol=1e-6)
    caffe = imagenet.preprocess(image, "caffe")
    np.testing.assert_allclose(caffe, crop * 255.0 - np.array([123.68, 116.779, 103.939]).reshape(1, 3, 1, 1),
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(imagenet.deprocess(caffe, "caffe")[0], image[16:240, 38:262])


def test_preprocess_resizes_the_shorter_side():
    flat = np.full((600, 400, 3), (200, 100, 50), dtype=np.uint8)
    assert imagenet.resize_and_crop(flat, size=None).shape == (384, 256, 3)
    x = imagenet.preprocess([flat, flat[:, :, :]], size=224)
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    expected = (np.array([200, 100, 50]) / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    np.testing.assert_allclose(x[0, :, 100, 100], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="preprocessing"):
        imagenet.preprocess(flat, "tensorflow")
    with pytest.raises(TypeError, match="uint8"):
        imagenet.preprocess(flat.astype(np.float32))


def test_decode_ranks_by_probability():
    logits = np.zeros((2, 1000))
    logits[0, [65, 51, 7]] = [5.0, 4.0, 3.0]
    logits[1, 999] = 9.0
    first, second = imagenet.decode(logits, top=3)
    assert [(i, name) for i, name, _ in first] == [(65, "sea snake"), (51, "triceratops"), (7, "cock")]
    exp = np.exp(logits[0] - 5.0)
    assert first[0][2] == pytest.approx(1.0 / exp.sum())
    assert second[0][:2] == (999, "toilet tissue")


# --------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def narrow_model_file(narrow_pth, tmp_path_factory):
    model = narrow(weights=narrow_pth)
    return model, model.save(tmp_path_factory.mktemp("model") / "narrow.npz")


def test_cli_predict_prints_the_top_classes_as_words(narrow_model_file, tmp_path, capsys):
    from PIL import Image

    model, path = narrow_model_file
    pixels = np.random.default_rng(4).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    assert main(["imagenet", "predict", str(tmp_path / "photo.png"), "--weights", str(path),
                 "--resize", "72", "--size", "64", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(tmp_path / "photo.png")
    expected = imagenet.decode(model.predict(imagenet.preprocess(pixels, size=64, resize=72)), top=5)[0]
    assert len(lines) == 6
    for line, (index, name, probability) in zip(lines[1:], expected):
        assert name in line and f"(class {index})" in line and f"{probability:.2%}" in line


def test_cli_convert_writes_weights_that_load(narrow_model_file, tmp_path, capsys):
    model, path = narrow_model_file
    out = tmp_path / "w.safetensors"
    assert main(["imagenet", "convert", "--weights", str(path), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    again = load_weights(narrow(seed=3), out)
    assert all(np.array_equal(again.state_dict()[k], v) for k, v in model.state_dict().items())


def test_cli_reports_a_missing_weights_file(tmp_path, capsys):
    assert main(["imagenet", "predict", "x.png", "--weights", str(tmp_path / "absent.pth")]) == 2
    assert "no weights file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_predict_with_full_size_pytorch_weights(torch, tmp_path, capsys):
    from PIL import Image

    net = torch_vgg(torch, models.VGG16_BLOCKS, models.VGG_WIDTHS, 4096)
    torch.save(net.state_dict(), tmp_path / "vgg16.pth")
    pixels = np.random.default_rng(6).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    assert main(["imagenet", "predict", str(tmp_path / "photo.png"), "--weights", str(tmp_path / "vgg16.pth"),
                 "--arch", "vgg16"]) == 0
    printed = [line.split("(class ")[1].rstrip(")") for line in capsys.readouterr().out.splitlines()[1:]]
    logits = torch_output(torch, net, imagenet.preprocess(pixels))
    assert [int(i) for i in printed] == list(np.argsort(-logits[0], kind="stable")[:5])


RECIPES = {
    "filters": ["--steps", "2", "--size", "32", "--per-layer", "2"],
    "class-model": ["--class", "sea snake", "51", "--steps", "2", "--size", "64", "--result", "{tmp}/r.png"],
    "to-class": ["{tmp}/photo.png", "--class", "triceratops", "--max-steps", "2", "--resize", "72", "--size", "64",
                 "--result", "{tmp}/r.png"],
    "dream": ["{tmp}/photo.png", "--steps", "2", "--octaves", "2", "--resize", "64", "--result", "{tmp}/r.png"],
    "style": ["{tmp}/photo.png", "{tmp}/photo.png", "--steps", "3", "--resize", "40", "--result", "{tmp}/r.png"],
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_cli_recipes_write_their_figures(narrow_model_file, tmp_path, capsys, recipe):
    from PIL import Image

    _, path = narrow_model_file
    photo = np.random.default_rng(5).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    options = [option.format(tmp=tmp_path) for option in RECIPES[recipe]]
    out = tmp_path / "figure.png"
    assert main(["imagenet", recipe, *options, "--weights", str(path), "--threads", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert Image.open(out).size[0] > 100
    if "--result" in options:
        assert Image.open(tmp_path / "r.png").mode == "RGB"
    if recipe == "class-model":
        assert "sea snake (class 65)" in printed and "triceratops (class 51)" in printed
    if recipe == "to-class":
        assert "p(triceratops) went from" in printed


def test_cli_recipes_check_classes_and_layers(narrow_model_file, tmp_path, capsys):
    _, path = narrow_model_file
    common = ["--weights", str(path), "--out", str(tmp_path / "f.png")]
    assert main(["imagenet", "class-model", "--class", "sea snak", *common]) == 2
    assert "did you mean 'sea snake'" in capsys.readouterr().err
    assert main(["imagenet", "class-model", "--class", "1000", *common]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["imagenet", "filters", "--layers", "block9_conv1", *common]) == 2
    assert "no layer 'block9_conv1'" in capsys.readouterr().err
