"""A pytest plugin for CI: with FASTCONV_NO_SKIPS=1 (.ci/run sets it) a skipped
test fails, unless its reason is one of the few that depend on the machine
rather than on what CI installs. CI installs PyTorch, Captum, torchattacks,
Chromium, Fashion-MNIST and the rest, so a test that skips there has found its
oracle or its browser missing: that is a failure of the set-up, not a pass."""
import os

import pytest

# Reasons a skip may have in CI, each a fact about the machine or about data
# the project cannot ship.
ALLOWED_IN_CI = (
    "this CPU runs every variant",             # no variant to refuse on a CPU with AVX-512
    "this CPU runs the baseline variant only",  # no wider variant to compare with
    "the real MNIST is not at",                 # the canonical files are not redistributed
    "the CIFAR-10 JPEG copy is not at",         # the same for the CIFAR-10 images
)


def skip_reason(report):
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or os.environ.get("FASTCONV_NO_SKIPS") != "1" or hasattr(report, "wasxfail"):
        return
    reason = skip_reason(report)
    if not any(allowed in reason for allowed in ALLOWED_IN_CI):
        report.outcome = "failed"
        report.longrepr = f"skipped, but CI is set up to run this test (FASTCONV_NO_SKIPS=1): {reason}"
