"""ResNets: outputs and every gradient against PyTorch twins in torchvision's layout,
weights imported from a torch.save file by name."""
import numpy as np
import pytest

import fastconv
from fastconv.models import resnets as resnet

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


# --------------------------------------------------------------------------- PyTorch twins
# Written here in torchvision's module layout (same attribute names, so the same
# state_dict keys), so that the tests need neither torchvision nor a download.
# Unlike torchvision, each ReLU is a module of its own (no weights, so the keys
# are the same): Captum's hooks need every module to run once per pass.

class BasicBlock(nn.Module):
    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample
        self.relu_out = nn.ReLU()

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.relu, self.relu2, self.relu_out = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu_out(out + shortcut)


class TorchResNet(nn.Module):
    def __init__(self, depth, num_classes):
        super().__init__()
        counts, bottleneck = resnet.IMAGENET_DEPTHS[depth]
        block, expansion = (Bottleneck, 4) if bottleneck else (BasicBlock, 1)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, (count, width) in enumerate(zip(counts, (64, 128, 256, 512)), start=1):
            blocks = []
            for index in range(count):
                stride = 2 if stage > 1 and index == 0 else 1
                down = None
                if stride != 1 or cin != width * expansion:
                    down = nn.Sequential(nn.Conv2d(cin, width * expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(width * expansion))
                blocks.append(block(cin, width, stride, down))
                cin = width * expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class OptionABlock(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.stride, self.pad = stride, width - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad))
        return F.relu(out + shortcut)


class TorchCifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for index in range(n):
                blocks.append(OptionABlock(cin, width, 2 if stage > 1 and index == 0 else 1))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


def randomize_batch_norms(module, generator):
    """Running statistics and affine parameters away from their initial 0 and 1,
    so that evaluation mode tests them."""
    for child in module.modules():
        if isinstance(child, nn.BatchNorm2d):
            with torch.no_grad():
                child.weight.uniform_(0.5, 1.5, generator=generator)
                child.bias.normal_(0, 0.2, generator=generator)
                child.running_mean.normal_(0, 0.2, generator=generator)
                child.running_var.uniform_(0.5, 1.5, generator=generator)


def compare(ours, theirs, x, training, rtol, atol):
    """Forward and backward of both in the given mode: outputs, input gradients, every
    parameter gradient, and the running statistics a training pass updates."""
    ours.train(training)
    theirs.train(training)
    y = ours(x)
    dy = np.random.default_rng(1).normal(size=y.shape).astype(x.dtype)
    ours.zero_grad()
    dx = ours.backward(dy)
    theirs.zero_grad()
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=rtol, atol=atol)
    torch_params = dict(theirs.named_parameters())
    grads = ours.gradients()
    assert set(grads) == set(torch_params)
    # A batch norm in training mode whose output goes, through a linear layer,
    # into another one gets a bias gradient of exactly zero in exact arithmetic
    # (the second normalization removes every channel's mean); both frameworks
    # give rounding noise there, so each gradient is compared on the scale of
    # the largest one where its own is that small.
    largest = max(np.abs(p.grad.numpy()).max() for p in torch_params.values())
    for key, grad in grads.items():
        expected = torch_params[key].grad.numpy()
        scale = max(np.abs(expected).max(), 1e-6 * largest) + 1e-30
        np.testing.assert_allclose(grad / scale, expected / scale, rtol=0, atol=atol, err_msg=key)
    torch_state = theirs.state_dict()
    for key, value in ours.state_dict().items():
        np.testing.assert_allclose(value, torch_state[key].numpy(), rtol=rtol, atol=atol, err_msg=key)


def imported(ours, theirs, tmp_path, dtype):
    path = tmp_path / "weights.pth"
    torch.save(theirs.state_dict(), path)
    fastconv.load_weights(ours, path)
    if dtype == np.float64:
        theirs.double()
    return ours


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-9, 1e-9), (np.float32, 2e-4, 2e-4)])
@pytest.mark.parametrize("training", [True, False])
def test_resnet20_matches_pytorch(tmp_path, dtype, rtol, atol, training):
    torch.manual_seed(0)
    theirs = TorchCifarResNet(20)
    randomize_batch_norms(theirs, torch.Generator().manual_seed(1))
    ours = imported(resnet.resnet20(seed=0, dtype=dtype), theirs, tmp_path, dtype)
    x = np.random.default_rng(2).normal(size=(4, 3, 32, 32)).astype(dtype)
    compare(ours, theirs, x, training, rtol, atol)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("dtype, rtol, atol, modes", [(np.float64, 1e-8, 1e-8, (False, True)),
                                                      (np.float32, 1e-3, 1e-3, (False,))])
def test_imagenet_resnets_match_pytorch(tmp_path, depth, dtype, rtol, atol, modes):
    torch.manual_seed(depth)
    theirs = TorchResNet(depth, num_classes=20)
    randomize_batch_norms(theirs, torch.Generator().manual_seed(3))
    ours = imported(resnet.resnet(depth, num_classes=20, dtype=dtype), theirs, tmp_path, dtype)
    # 64x64 rather than 224x224 keeps the test fast; every layer still sees a map.
    x = np.random.default_rng(4).normal(size=(2, 3, 64, 64)).astype(dtype)
    for training in modes:
        compare(ours, theirs, x, training, rtol, atol)


@pytest.mark.parametrize("depth", [18, 50])
def test_imagenet_resnets_train_in_float32_as_accurately_as_pytorch(tmp_path, depth):
    """In training mode the last stages normalize over a handful of values (2x2
    maps, batch 2), which float32 resolves poorly: PyTorch's own float32 input
    gradient is a few percent off the float64 one there. So the float32
    training pass is held to the float64 result within twice PyTorch's float32 error."""
    torch.manual_seed(depth)
    theirs = TorchResNet(depth, num_classes=20)
    randomize_batch_norms(theirs, torch.Generator().manual_seed(3))
    ours = imported(resnet.resnet(depth, num_classes=20, dtype=np.float32), theirs, tmp_path, np.float32)
    exact = TorchResNet(depth, num_classes=20)
    exact.load_state_dict(theirs.state_dict())
    exact.double()
    x = np.random.default_rng(4).normal(size=(2, 3, 64, 64)).astype(np.float32)
    y = ours.train()(x)
    dy = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
    dx = ours.backward(dy, param_grads=False)
    results = {}
    for name, net, dtype in (("float32", theirs, torch.float32), ("float64", exact, torch.float64)):
        tx = torch.tensor(x, dtype=dtype, requires_grad=True)
        ty = net.train()(tx)
        ty.backward(torch.tensor(dy, dtype=dtype))
        results[name] = (ty.detach().numpy(), tx.grad.numpy())

    def error(value, truth):
        return np.abs(value - truth).max() / np.abs(truth).max()

    for ours_value, torch32, truth in zip((y, dx), results["float32"], results["float64"]):
        assert error(ours_value, truth) <= 2 * error(torch32, truth) + 1e-6


def test_torchvision_names_and_parameter_counts():
    assert resnet.resnet18().num_parameters() == 11_689_512
    assert resnet.resnet34().num_parameters() == 21_797_672
    assert resnet.resnet50().num_parameters() == 25_557_032
    assert resnet.resnet20().num_parameters() == 269_722
    theirs = TorchResNet(18, 1000)
    torch_keys = [k for k in theirs.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(resnet.resnet18().state_dict()) == torch_keys


def test_block_outputs_are_named_after_the_blocks():
    model = resnet.resnet20(seed=0)
    x = np.random.default_rng(5).normal(size=(1, 3, 32, 32)).astype(np.float32)
    block = model.forward(x, until="layer3.2")
    assert block.shape == (1, 64, 8, 8) and block.min() >= 0
    assert model.inputs("layer2.0.add") == ("layer2.0.bn2", "layer2.0.shortcut")


def test_a_mismatched_weights_file_names_the_first_wrong_key(tmp_path):
    theirs = TorchResNet(18, 1000)
    state = theirs.state_dict()
    renamed = {("layer1.0.conv9.weight" if k == "layer1.0.conv1.weight" else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    model = resnet.resnet18()
    before = model.state_dict()
    with pytest.raises(ValueError, match="has 'layer1.0.conv9.weight', which the model does not have"):
        fastconv.load_weights(model, tmp_path / "renamed.pth")
    narrow = dict(state)
    narrow["fc.weight"] = narrow["fc.weight"][:10]
    torch.save(narrow, tmp_path / "narrow.pth")
    with pytest.raises(ValueError, match=r"'fc.weight' of shape \(10, 512\); the model's is \(1000, 512\)"):
        fastconv.load_weights(model, tmp_path / "narrow.pth")
    del narrow["fc.weight"]
    torch.save(narrow, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="has no 'fc.weight'"):
        fastconv.load_weights(model, tmp_path / "missing.pth")
    for key, value in model.state_dict().items():  # nothing changed
        np.testing.assert_array_equal(value, before[key])


@pytest.mark.parametrize("depth", [7, 21, 0])
def test_cifar_depth_must_be_6n_plus_2(depth):
    with pytest.raises(ValueError, match=f"6n \\+ 2 layers.*got depth {depth}|depth must be a positive"):
        resnet.cifar_resnet(depth)


# --------------------------------------------------------------------------- Captum on resnet18

def relative_error(ours, theirs):
    theirs = np.asarray(theirs, dtype=np.float64)
    return float(np.abs(np.asarray(ours, dtype=np.float64) - theirs).max() / max(np.abs(theirs).max(), 1e-300))


@pytest.fixture(scope="module")
def resnet18_pair(tmp_path_factory):
    """Our float64 resnet18 with random weights in evaluation mode, its PyTorch twin, two images, targets."""
    pytest.importorskip("captum", reason="Captum is not installed (pip install captum)")
    torch.manual_seed(18)
    twin = TorchResNet(18, num_classes=10)
    randomize_batch_norms(twin, torch.Generator().manual_seed(5))
    ours = imported(resnet.resnet18(num_classes=10, dtype=np.float64), twin, tmp_path_factory.mktemp("r18"),
                    np.float64).eval()
    twin.eval()
    x = np.random.default_rng(6).normal(size=(2, 3, 48, 48))
    return ours, twin, x, [3, 7]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
def test_attributions_on_resnet18_match_captum(resnet18_pair):
    from captum import attr

    from fastconv.analysis import attribution as fa
    from fastconv.analysis.attribution.methods import default_gradcam_layer

    ours, twin, x, target = resnet18_pair
    xt = torch.from_numpy(x)
    baseline = np.full_like(x, 0.1)
    pairs = {
        "saliency": (fa.Saliency(ours).attribute(x, target), attr.Saliency(twin).attribute(xt, target=target)),
        "guided backprop": (fa.GuidedBackprop(ours).attribute(x, target),
                            attr.GuidedBackprop(twin).attribute(xt, target=target)),
        "deconvnet": (fa.Deconvnet(ours).attribute(x, target), attr.Deconvolution(twin).attribute(xt, target=target)),
        "integrated gradients": (
            fa.IntegratedGradients(ours).attribute(x, target, baseline=baseline, steps=4, method="gausslegendre"),
            attr.IntegratedGradients(twin).attribute(xt, baselines=torch.from_numpy(baseline), target=target,
                                                     n_steps=4, method="gausslegendre")),
    }
    for relu in (False, True):
        pairs[f"grad-cam relu={relu}"] = (
            fa.GradCAM(ours).layer_map(x, target, relu=relu),
            attr.LayerGradCam(twin, twin.layer4[1]).attribute(xt, target=target, relu_attributions=relu))
    pairs["guided grad-cam"] = (fa.GuidedGradCAM(ours, "layer3.1").attribute(x, target),
                                attr.GuidedGradCam(twin, twin.layer3[1]).attribute(xt, target=target))
    pairs["occlusion"] = (fa.Occlusion(ours).attribute(x, target, patch=24, stride=24, fill=0.0),
                          attr.Occlusion(twin).attribute(xt, sliding_window_shapes=(3, 24, 24), strides=(3, 24, 24),
                                                         baselines=0.0, target=target))
    assert default_gradcam_layer(ours) == "layer4.1"
    for name, (mine, theirs) in pairs.items():
        assert relative_error(mine, theirs.detach().numpy()) < 1e-4, name
