"""A headless Chromium driven by Selenium, for the tests that open a page
in a real browser (the HTML report, the live explorer).

The test skips, saying what is missing, when Selenium, Chromium or its
driver is not installed; CI installs all three and turns such a skip into a
failure (tests/ci_skips.py).
"""
import shutil

import pytest


def headless_chromium(window: str = "1280,1000", arguments: tuple[str, ...] = ()):
    """A started driver with a ``window`` of "width,height" pixels, the
    browser's console log kept, and ``arguments`` added to Chromium's command
    line; the caller quits it."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("needs a Chromium browser and its driver (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     f"--window-size={window}", *arguments):
        options.add_argument(argument)
    options.binary_location = chromium
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(driver_path), options=options)
    except WebDriverException as error:
        pytest.skip(f"Chromium did not start: {error.msg}")
