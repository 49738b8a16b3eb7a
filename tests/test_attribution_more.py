"""Attribution beyond gradients (input x gradient, DeepLIFT, gradient SHAP, LRP,
layer conductance) against Captum on the same weights, their defining
properties, and the quality metrics: deletion/insertion curves and the
cascading randomization sanity check."""

import numpy as np
import pytest
from test_analysis_attribution import bars, relative_error, rgb_net, torch_twin

import fastconv.analysis as fa
from fastconv.analysis.attribution import lrp, metrics
from fastconv.nn import graph as G
from fastconv.nn import layers as L
from fastconv.nn.losses import softmax
from fastconv.nn.model import Sequential

pytestmark = pytest.mark.usefixtures("numpy_backend_one_thread")


def residual_net(seed=4, dtype=np.float64):
    """A small Graph: max-pool, conv-relu, a residual block (conv-bn-relu-conv)
    added to its input, relu, global average pooling, linear."""
    rng = np.random.default_rng(seed)
    g = G.Graph()
    g.add("pool", L.MaxPool2d(2))
    g.add("conv1", L.Conv2d(3, 4, 3, padding=1, seed=rng, dtype=dtype))
    g.add("relu1", L.ReLU())
    g.add("conv2", L.Conv2d(4, 4, 3, padding=1, seed=rng, dtype=dtype))
    g.add("bn2", L.BatchNorm2d(4, dtype=dtype))
    g.add("relu2", L.ReLU())
    g.add("conv3", L.Conv2d(4, 4, 3, padding=1, seed=rng, dtype=dtype))
    g.add("add", G.Add(), "conv3", "relu1")
    g.add("relu3", L.ReLU())
    g.add("gap", L.GlobalAvgPool2d())
    g.add("fc", L.Linear(4, 3, seed=rng, dtype=dtype))
    bn = g.layer("bn2")
    bn.buffers["running_mean"][...] = rng.normal(0, 0.2, 4)
    bn.buffers["running_var"][...] = rng.uniform(0.5, 2.0, 4)
    bn.params["weight"][...] = rng.uniform(0.5, 1.5, 4)
    bn.params["bias"][...] = rng.normal(0, 0.1, 4)
    return g.eval()


def residual_twin(model):
    """The PyTorch twin of residual_net, each ReLU a module and the sum Captum's Addition_Module."""
    torch = pytest.importorskip("torch")
    from captum.attr._utils.custom_modules import Addition_Module

    nn = torch.nn

    class Twin(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.relu1 = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
            self.conv2, self.bn2, self.relu2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
            self.conv3, self.add, self.relu3 = nn.Conv2d(4, 4, 3, padding=1), Addition_Module(), nn.ReLU()
            self.pool, self.gap = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            a = self.relu1(self.conv1(self.pool(x)))
            b = self.conv3(self.relu2(self.bn2(self.conv2(a))))
            return self.fc(self.gap(self.relu3(self.add(b, a))).flatten(1))

    twin = Twin().double().eval()
    state = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in model.state_dict().items()}
    missing, unexpected = twin.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return twin


@pytest.fixture(scope="module")
def cases(torch):
    """(our float64 model, its twin, inputs, targets) for a Sequential with batch
    norm and max pooling, and a Graph with a residual sum.

    In neither does a max-pooling layer read a ReLU's output directly: there
    Captum's DeepLIFT misses its own summation to delta (see
    test_deeplift_sums_to_delta_where_relu_feeds_max_pooling)."""
    pytest.importorskip("captum", reason="Captum is not installed (pip install captum)")
    seq = rgb_net(dtype=np.float64)
    graph = residual_net()
    x_seq = np.random.default_rng(22).normal(size=(3, 3, 12, 12))
    x_graph = np.random.default_rng(23).normal(size=(2, 3, 8, 8))
    return {"sequential": (seq, torch_twin(seq), x_seq, [0, 3, 1]),
            "graph": (graph, residual_twin(graph), x_graph, [2, 0])}


CASES = ["sequential", "graph"]


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", CASES)
def test_input_x_gradient_and_deeplift_match_captum(cases, case):
    import torch
    from captum import attr

    model, twin, x, target = cases[case]
    xt = torch.from_numpy(x)
    ours = fa.InputXGradient(model).attribute(x, target)
    theirs = attr.InputXGradient(twin).attribute(xt, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    baseline = np.random.default_rng(5).normal(0, 0.3, x.shape)
    ours, delta = fa.DeepLift(model).attribute(x, target, baseline=baseline, return_convergence_delta=True)
    theirs = attr.DeepLift(twin).attribute(xt, baselines=torch.from_numpy(baseline), target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    # Summation to delta holds exactly for these layers, and differs from the gradient.
    np.testing.assert_allclose(delta, 0, atol=1e-9)
    assert relative_error(ours, (x - baseline) * fa.Gradient(model).attribute(x, target)) > 1e-3


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", CASES)
def test_gradient_shap_matches_captum_on_the_same_draws(cases, case, monkeypatch):
    """Captum draws with np.random.choice (baselines), torch.normal (noise) and
    np.random.uniform (alphas); they are replaced, for its one call, by our draws
    laid out as Captum lays out its samples (example-major)."""
    import torch
    from captum import attr

    model, twin, x, target = cases[case]
    refs = np.random.default_rng(6).normal(0, 0.5, (4,) + x.shape[1:])
    samples, stdevs, seed = 5, 0.2, 11
    index, noise, alphas = fa.GradientShap.draw(len(x), samples, len(refs), x.shape[1:], stdevs, seed)
    ours = fa.GradientShap(model).attribute(x, target, baselines=refs, samples=samples, stdevs=stdevs, seed=seed)
    monkeypatch.setattr(np.random, "choice", lambda k, size: index.reshape(-1)[:size])
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: alphas.reshape(-1)[:size])
    monkeypatch.setattr(torch, "normal", lambda mean, std: torch.from_numpy(noise.reshape((-1,) + x.shape[1:])))
    theirs = attr.GradientShap(twin).attribute(torch.from_numpy(x), baselines=torch.from_numpy(refs),
                                               target=target, n_samples=samples, stdevs=stdevs)
    monkeypatch.undo()
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    again = fa.GradientShap(model).attribute(x, target, baselines=refs, samples=samples, stdevs=stdevs, seed=seed)
    np.testing.assert_array_equal(again, ours)


def flatten_into_linear(twin):
    """A copy of the twin for Captum's LRP, which has no rule for nn.Flatten
    (relevance passes through a reshape unchanged, as ours does): each Linear
    flattens its own input and the Flatten modules go."""
    import copy

    import torch

    class FlatLinear(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x.flatten(1))

    def rebuild(module):
        if isinstance(module, torch.nn.Sequential):
            kept = [(name, rebuild(child)) for name, child in module.named_children()
                    if not isinstance(child, torch.nn.Flatten)]
            return torch.nn.Sequential(OrderedDict(kept))
        if type(module) is torch.nn.Linear:
            flat = FlatLinear(module.in_features, module.out_features).double()
            flat.load_state_dict(module.state_dict())
            flat.rule = EpsilonRule()
            return flat
        return module

    from collections import OrderedDict

    from captum.attr._utils.lrp_rules import EpsilonRule

    return rebuild(copy.deepcopy(twin))


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", CASES)
def test_lrp_epsilon_and_alpha_beta_match_captum(cases, case):
    import torch
    from captum import attr
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule

    model, twin, x, target = cases[case]
    xt = torch.from_numpy(x)
    twin = flatten_into_linear(twin)
    ours, lost = lrp.LRP(model).attribute(x, target, return_relevance_lost=True)
    theirs = attr.LRP(twin).attribute(xt, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4
    # What the biases took: zero once they are (the sequential net's batch norm keeps its shift).
    assert np.all(np.abs(lost) > 1e-6)
    # alpha=1, beta=0 on the weighted layers whose input is never negative (a
    # ReLU's, not a batch norm's): Captum clips the weights only, which is the
    # same rule for such inputs. The others keep the epsilon rule.
    weighted = [name for name, layer in model.named_layers() if isinstance(layer, (L.Conv2d, L.Linear))]
    seen = {}
    handles = [model.layer(name).register_forward_hook(lambda layer, a, z, name=name: seen.update({name: a}))
               for name in weighted]
    model.forward(x)
    for handle in handles:
        handle.remove()
    positive = [name for name in weighted if seen[name].min() >= 0]
    assert len(positive) >= 2, positive
    ours = lrp.LRP(model, rules={name: lrp.AlphaBeta(1, 0) for name in positive}).attribute(x, target)
    for name in weighted:
        getattr(twin, name).rule = Alpha1_Beta0_Rule(set_bias_to_zero=True) if name in positive else EpsilonRule()
    theirs = attr.LRP(twin).attribute(xt, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4


@pytest.mark.torch
@pytest.mark.filterwarnings("ignore::UserWarning:captum")
@pytest.mark.parametrize("case", CASES)
def test_layer_conductance_and_layer_gradcam_match_captum(cases, case):
    import torch
    from captum import attr

    model, twin, x, target = cases[case]
    xt = torch.from_numpy(x)
    layer = "conv2"
    baseline = np.full_like(x, 0.1)
    for method in ("gausslegendre", "riemann_right"):
        ours = fa.LayerConductance(model, layer).attribute(x, target, baseline=baseline, steps=12, method=method)
        theirs = attr.LayerConductance(twin, getattr(twin, layer)).attribute(
            xt, baselines=torch.from_numpy(baseline), target=target, n_steps=12, method=method)
        assert relative_error(ours, theirs.detach().numpy()) < 1e-4, method
    ours = fa.GradCAM(model, layer).layer_map(x, target, relu=False)
    theirs = attr.LayerGradCam(twin, getattr(twin, layer)).attribute(xt, target=target)
    assert relative_error(ours, theirs.detach().numpy()) < 1e-4


# -- defining properties ------------------------------------------------------------------

def test_deeplift_sums_to_delta_where_relu_feeds_max_pooling():
    rng = np.random.default_rng(1)
    model = Sequential([L.Conv2d(3, 4, 3, padding=1, seed=rng, dtype=np.float64), L.ReLU(), L.MaxPool2d(2),
                        L.GlobalAvgPool2d(), L.Linear(4, 3, seed=rng, dtype=np.float64)]).eval()
    x = rng.normal(size=(4, 3, 8, 8))
    baseline = rng.normal(0, 0.3, x.shape)
    attributions, delta = fa.DeepLift(model).attribute(x, [0, 1, 2, 0], baseline=baseline,
                                                       return_convergence_delta=True)
    np.testing.assert_allclose(delta, 0, atol=1e-12)
    logits, base = model.forward(x), model.forward(baseline)
    np.testing.assert_allclose(attributions.reshape(4, -1).sum(axis=1),
                               (logits - base)[np.arange(4), [0, 1, 2, 0]], rtol=1e-10)
    # With the baseline equal to x nothing changes: every attribution is zero.
    np.testing.assert_array_equal(fa.DeepLift(model).attribute(x, 0, baseline=x), 0)


def test_lrp_conserves_relevance_without_biases_and_alpha_beta_splits_by_sign():
    rng = np.random.default_rng(0)
    model = Sequential([("conv1", L.Conv2d(2, 3, 3, bias=False, dtype=np.float64, seed=rng)), ("relu", L.ReLU()),
                        ("pool", L.AvgPool2d(2)), ("flat", L.Flatten()),
                        ("fc", L.Linear(3 * 3 * 3, 4, bias=False, dtype=np.float64, seed=rng))]).eval()
    x = rng.normal(size=(3, 2, 8, 8))
    target = [0, 1, 2]
    logits = model.forward(x)[np.arange(3), target]
    relevance, lost = lrp.LRP(model, lrp.Epsilon(0.0)).attribute(x, target, return_relevance_lost=True)
    np.testing.assert_allclose(relevance.reshape(3, -1).sum(axis=1), logits, rtol=1e-10)
    np.testing.assert_allclose(lost, 0, atol=1e-10)
    # alpha=2, beta=1 still conserves (alpha - beta = 1), and differs from epsilon.
    ab = lrp.LRP(model, lrp.AlphaBeta(2, 1, epsilon=0.0)).attribute(x, target)
    np.testing.assert_allclose(ab.reshape(3, -1).sum(axis=1), logits, rtol=1e-8)
    assert not np.allclose(ab, relevance)
    # z^B on the first layer also conserves when the input lies in its box.
    box = lrp.LRP(model, lrp.Epsilon(0.0), rules={"conv1": lrp.ZBox(-4.0, 4.0, epsilon=0.0)})
    zb = box.attribute(np.clip(x, -4, 4), target)
    np.testing.assert_allclose(zb.reshape(3, -1).sum(axis=1),
                               model.forward(np.clip(x, -4, 4))[np.arange(3), target], rtol=1e-8)


def test_bad_arguments_are_clear_errors():
    model = rgb_net(dtype=np.float64)
    with pytest.raises(ValueError, match="alpha=1.5"):
        lrp.AlphaBeta(1.5, 0)
    with pytest.raises(ValueError, match="'relu1'"):
        lrp.LRP(model, rules={"relu1": lrp.Epsilon()})
    with pytest.raises(TypeError, match="'eps'"):
        lrp.LRP(model, "eps")
    with pytest.raises(ValueError, match="LogSoftmax"):
        lrp.LRP(Sequential([L.Flatten(), L.Linear(4, 2, dtype=np.float64), L.LogSoftmax()]))
    x = np.zeros((1, 3, 12, 12))
    with pytest.raises(ValueError, match=r"baselines must be shaped"):
        fa.GradientShap(model).attribute(x, 0, baselines=np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="does not broadcast"):
        fa.DeepLift(model).attribute(x, 0, baseline=np.zeros((2, 3, 5, 5)))
    with pytest.raises(ValueError, match="'sideways'"):
        metrics.perturbation_curve(model, x, 0, x, mode="sideways")
    with pytest.raises(ValueError, match="'relu1' has no parameters"):
        metrics.cascading_randomization(model, fa.Saliency, x, 0, layers=["relu1"])


# -- quality metrics on a trained model --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(fit_briefly):
    """The bar model of test_analysis_attribution (horizontal vs vertical bars), trained."""
    from test_analysis_attribution import bar_net

    x, y, _ = bars(512, seed=0)
    model = fit_briefly(bar_net(), x, y, steps=150, lr=3e-3)
    x_test, y_test, _ = bars(24, seed=31)
    assert np.mean(model.predict(x_test).argmax(axis=1) == y_test) > 0.9
    return model, x_test, y_test.tolist()


def test_deletion_and_insertion_rank_a_faithful_map_above_a_random_one(trained):
    model, x, y = trained
    maps = {"integrated-gradients": fa.IntegratedGradients(model).attribute(x, y, steps=16),
            "lrp": lrp.LRP(model).attribute(x, y),
            "random": np.random.default_rng(0).normal(size=x.shape).astype(x.dtype)}
    deletion = {k: metrics.perturbation_curve(model, x, y, v, "deletion", steps=16) for k, v in maps.items()}
    insertion = {k: metrics.perturbation_curve(model, x, y, v, "insertion", steps=16) for k, v in maps.items()}
    curve = deletion["random"]
    assert curve.scores.shape == (len(x), 17) and curve.fractions[0] == 0 and curve.fractions[-1] == 1
    # The first point is the model's own probability, the last the baseline's.
    first = softmax(model.predict(x).astype(np.float64))[np.arange(len(x)), y]
    np.testing.assert_allclose(curve.scores[:, 0], first, rtol=1e-6)
    for name in ("integrated-gradients", "lrp"):
        assert deletion[name].auc.mean() < deletion["random"].auc.mean() - 0.1, name
        assert insertion[name].auc.mean() > insertion["random"].auc.mean() + 0.1, name


def test_cascading_randomization_decorrelates_gradient_maps(trained):
    model, x, y = trained
    check = metrics.cascading_randomization(model, fa.Saliency, x[:8], y[:8], seed=0)
    assert check.layers == [name for name, layer in reversed(model.named_layers()) if layer.params]
    assert check.correlations.shape == (len(check.layers), 8)
    assert check.maps.shape == (len(check.layers) + 1, 8, 24, 24)
    # Once every layer is random the maps share little rank order with the trained
    # model's, and less than after the top layer alone.
    assert check.mean[-1] < 0.4
    assert check.mean[-1] < check.mean[0]
    # The trained model is untouched: its maps are the first ones compared.
    np.testing.assert_array_equal(metrics.pixel_map(fa.Saliency(model).attribute(x[:8], y[:8]), "abs"), check.maps[0])
