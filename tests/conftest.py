import importlib
import os

import numpy as np
import pytest
import threadpoolctl

import fastconv
from fastconv import backend as backend_module


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "every_isa: run once per instruction-set variant of the compiled kernels that "
        "this CPU supports (fastconv.set_isa); FASTCONV_ISA=name runs only that one",
    )
    config.addinivalue_line(
        "markers",
        "widest_isa_only: in an every_isa module, run on the variant the machine picks by itself "
        "(the one its users and the benchmarks run), not once per variant",
    )


def isa_variants():
    """The variants the every_isa tests run: FASTCONV_ISA's alone when it names
    one (the kernels have already refused a bad value), else every variant this
    build has and this CPU runs, widest first."""
    from fastconv import _kernels

    forced = os.environ.get("FASTCONV_ISA", "").strip()
    if forced and forced != "auto":
        return (forced,)
    return _kernels.isa_supported()


def pytest_generate_tests(metafunc):
    # Module scope: pytest then runs a module's tests variant by variant,
    # switching once per variant rather than once per test.
    if (metafunc.definition.get_closest_marker("every_isa") is not None
            and metafunc.definition.get_closest_marker("widest_isa_only") is None):
        metafunc.parametrize("isa_variant", isa_variants(), indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def isa_variant(request):
    """The instruction-set variant an every_isa test runs on (its parameter),
    restored afterwards; None, and nothing switched, for other tests. Module
    scope, because hypothesis refuses function-scoped fixtures in its tests."""
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    previous = fastconv.set_isa(name)
    try:
        yield name
    finally:
        fastconv.set_isa(previous)


@pytest.fixture(params=["numpy", "compiled"])
def backend(request, monkeypatch):
    """Run the test on each kernel backend, then restore whatever was selected before.

    The compiled backend is not optional: if fastconv._kernels does not
    import, its tests fail.
    """
    monkeypatch.setattr(backend_module, "_current", backend_module._current)
    fastconv.set_backend(request.param)
    return request.param


@pytest.fixture(scope="module")
def numpy_backend_one_thread():
    """Run a module on the NumPy kernels (the oracle) with one BLAS/OpenMP thread,
    then restore the backend selected before."""
    previous = backend_module._current
    fastconv.set_backend("numpy")
    # threadpoolctl limits only the thread pools already loaded: load
    # scikit-learn's OpenMP runtime first.
    for module in ("sklearn.cluster", "sklearn.manifold"):
        importlib.import_module(module)
    with threadpoolctl.threadpool_limits(1):
        yield
    backend_module._current = previous


@pytest.fixture(scope="session")
def fit_briefly():
    """fit_briefly(model, x, y, steps, lr): Adam on seeded random mini-batches of 32,
    for the small models the analysis tests look inside; returns the model in eval mode."""
    from fastconv import optim
    from fastconv.nn import losses

    def fit(model, x, y, steps, lr):
        opt = optim.Adam(model, lr=lr)
        loss = losses.CrossEntropyLoss()
        rng = np.random.default_rng(1)
        for _ in range(steps):
            idx = rng.integers(0, len(x), 32)
            model.zero_grad()
            loss(model.forward(x[idx]), y[idx])
            model.backward(loss.backward())
            opt.step()
        return model.eval()

    return fit


@pytest.fixture(scope="module")
def mnist():
    """The MNIST sample bundled with the package."""
    from fastconv.data import load_dataset

    return load_dataset("mnist-sample")


@pytest.fixture(scope="module")
def digit_model(mnist, fit_briefly):
    """tests/nets.py's digit net trained for 200 steps on the MNIST sample,
    once per module (tests may change it; each module starts from the same)."""
    from nets import digit_net

    from fastconv.analysis import Normalizer

    model = digit_net()
    normalize = Normalizer.from_model(model)
    fit_briefly(model, normalize(mnist.x_train[:4000]), mnist.y_train[:4000], steps=200, lr=3e-3)
    accuracy = np.mean(model.predict(normalize(mnist.x_test[:300])).argmax(axis=1) == mnist.y_test[:300])
    assert accuracy > 0.85, f"the digit model did not learn (accuracy {accuracy})"
    return model


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch is the oracle of this test (pip install fastconv[test])")
    # one thread: the oracle's small ops are far slower when its pool competes for a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture
def copy_to_torch(torch):
    """copy_to_torch(model, twin): load the model's state into a torch module whose
    state_dict lists the same tensors in the same order (num_batches_tracked aside)."""

    def copy(model, twin):
        ours = model.state_dict()
        theirs = twin.state_dict()
        keys = [k for k in theirs if not k.endswith("num_batches_tracked")]
        assert len(keys) == len(ours), (keys, list(ours))
        for their_key, (our_key, value) in zip(keys, ours.items()):
            assert tuple(theirs[their_key].shape) == value.shape, (their_key, our_key)
            theirs[their_key] = torch.from_numpy(np.array(value))
        twin.load_state_dict(theirs, strict=True)
        return dict(zip(ours, keys))

    return copy


@pytest.fixture(scope="module")
def one_thread_per_module():
    """One OpenMP and one BLAS thread for a whole module, restored afterwards:
    for tests that measure memory or run their own threads."""
    before = fastconv.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=None):
        fastconv.set_num_threads(1)
        yield
    fastconv.set_num_threads(before)


# Under FASTCONV_NO_SKIPS=1 (CI), a skip that CI's set-up should have
# prevented is a failure (tests/ci_skips.py).
from ci_skips import pytest_runtest_makereport  # noqa: E402, F401
