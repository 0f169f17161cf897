"""The MLflow UI as a user sees a search, in headless Chromium (slow).

``mlflow ui`` on 127.0.0.1 over the tiny real search's store; Selenium drives Debian's
``chromium`` with ``/usr/bin/chromedriver``. The runs table must show the search's parent run
(with its dataset) and, once its row is expanded, every trial nested under it. The screenshot is
saved in the test's folder, and copied to ``$FUSETUNE_UI_SCREENSHOT_DIR`` when that is set.

Needs ``apt-get install chromium chromium-driver`` and ``pip install selenium``; skipped (with
the reason) without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1600,1000")
RUN_NAME_EXPANDER = "button[data-component-id*='runnamecellrenderer']"
"""The +/- button in a parent run's name cell of MLflow 3's runs table."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny(tiny_search):
    return tiny_search


@pytest.fixture(scope="module")
def mlflow_ui(tiny, tmp_path_factory):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tiny["tracking_uri"],
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path_factory.mktemp("ui"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("mlflow ui did not start within 180 s")
            time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("headless Chromium absent (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium absent (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for_text(driver, texts: list[str], timeout: float = 240) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(1)
    missing = [t for t in texts if t not in body]
    raise AssertionError(f"not shown within {timeout:.0f} s: {missing}; page text: {body[:1500]}")


def test_runs_table_shows_the_search_with_its_nested_trials(tiny, mlflow_ui, browser, tmp_path):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By

    from search.tracking.store import PARENT_RUN_TAG, ROLE_TAG, SEARCH_NAME_TAG

    client = MlflowClient(tiny["tracking_uri"])
    exp = client.get_experiment_by_name("fusetune")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get(SEARCH_NAME_TAG) == tiny["name"] and r.data.tags.get(ROLE_TAG) == "search"]
    trials = [r.info.run_name for r in runs if r.data.tags.get(PARENT_RUN_TAG) == parent.info.run_id
              and r.data.tags.get(ROLE_TAG) == "trial"]
    assert len(trials) == 2
    digest = parent.inputs.dataset_inputs[0].dataset.digest

    # MLflow 3.17's UI lands on the page of its "GenAI | Model training" switch (default GenAI,
    # remembered per browser); the model-training side of it is the runs table
    browser.get(f"{mlflow_ui}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
    body = wait_for_text(browser, [parent.info.run_name, f"{len(runs)} matching runs"])
    assert f"breast-tcga ({digest})" in body               # the dataset input, named by its fingerprint
    assert not any(t in body for t in trials)              # nested: hidden under the collapsed parent
    expander = browser.find_element(By.CSS_SELECTOR, RUN_NAME_EXPANDER)
    expander.click()
    body = wait_for_text(browser, trials, timeout=60)
    lines = body.splitlines()
    assert lines.index(parent.info.run_name) < min(lines.index(t) for t in trials)

    shot = tmp_path / "mlflow-runs.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("FUSETUNE_UI_SCREENSHOT_DIR"):
        dest = Path(os.environ["FUSETUNE_UI_SCREENSHOT_DIR"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, dest / shot.name)
