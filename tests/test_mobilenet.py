"""MobileNetV2: outputs and every gradient against a PyTorch twin in torchvision's
layout, weights imported from a torch.save file by name."""
import numpy as np
import pytest
from test_resnet import compare, imported, randomize_batch_norms

import fastconv
from fastconv.models.mobilenet import INVERTED_RESIDUAL_SETTINGS, _divisible, mobilenet_v2

torch = pytest.importorskip("torch")
nn = torch.nn


def conv_bn_relu6(cin, cout, kernel, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hidden = int(round(cin * t))
        layers = [conv_bn_relu6(cin, hidden, 1)] if t != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class TorchMobileNetV2(nn.Module):
    """torchvision's MobileNetV2, written out here (no torchvision, no download)."""

    def __init__(self, num_classes, dropout):
        super().__init__()
        channels = 32
        features = [conv_bn_relu6(3, channels, 3, 2)]
        for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
            for block in range(n):
                features.append(InvertedResidual(channels, c, s if block == 0 else 1, t))
                channels = c
        features.append(conv_bn_relu6(channels, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_names_and_parameter_count_are_torchvisions():
    theirs = TorchMobileNetV2(1000, 0.2)
    keys = [k for k in theirs.state_dict() if not k.endswith("num_batches_tracked")]
    ours = mobilenet_v2()
    assert list(ours.state_dict()) == keys
    assert ours.num_parameters() == 3_504_872 == sum(p.numel() for p in theirs.parameters())
    assert _divisible(32 * 0.75) == 24 and _divisible(1280 * 1.4) == 1792


@pytest.mark.parametrize("dtype, rtol, atol, modes", [(np.float64, 1e-8, 1e-8, (False, True)),
                                                      (np.float32, 1e-3, 1e-3, (False,))])
def test_mobilenet_v2_matches_pytorch(tmp_path, dtype, rtol, atol, modes):
    torch.manual_seed(2)
    # No dropout: its masks are random, in both frameworks.
    theirs = TorchMobileNetV2(num_classes=12, dropout=0.0)
    randomize_batch_norms(theirs, torch.Generator().manual_seed(4))
    ours = imported(mobilenet_v2(num_classes=12, dropout=0.0, dtype=dtype), theirs, tmp_path, dtype)
    x = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(dtype)
    for training in modes:
        compare(ours, theirs, x, training, rtol, atol)


def test_mobilenet_v2_saves_and_loads(tmp_path):
    model = mobilenet_v2(num_classes=5, seed=0).eval()
    x = np.random.default_rng(6).normal(size=(1, 3, 48, 48)).astype(np.float32)
    loaded = fastconv.load(fastconv.save(model, tmp_path / "mobilenet.npz"))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert loaded["features.2.conv.1.0"].groups == 96
