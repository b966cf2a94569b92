"""Headless Chromium (Debian `chromium` + `chromium-driver`) driven through Selenium's WebDriver."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

OUTPUT = Path(os.environ.get("FLEETGEN_TEST_OUTPUT", Path(__file__).parent / "output"))


def _binaries() -> tuple[str, str]:
    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chrome is None or driver is None:
        pytest.skip("headless Chromium needs the Debian packages chromium and chromium-driver "
                    "(scripts/system-deps.sh installs them)")
    return chrome, driver


@contextmanager
def chromium(profile: Path, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    chrome, driver_path = _binaries()
    options = Options()
    options.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-extensions", "--no-first-run", f"--user-data-dir={profile}",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout: float = 30.0, what: str = "the page") -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        errors = driver.get_log("browser")
        raise AssertionError(f"timed out waiting for {what} at {driver.current_url}; console: {errors}") from None


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """Console entries at warning level or above since the last call (the log drains)."""
    return [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
