"""`cvkit serve`'s page in a real browser (issue 19): Debian's chromium, headless, driven by Selenium
through Debian's chromium-driver. Open the page, upload images, see each one's predicted label, and
an error on the card of a file that is not an image. CI installs chromium (.ci/run); elsewhere the
test is skipped with the line that installs it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil

import pytest

from conftest import REPO, train_run
from cvkit_plugins.demo import make_shapes

spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
serve_load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_load)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
INSTALL = "needs Debian's chromium and its driver: sudo apt-get install -y chromium chromium-driver"
if not (CHROMIUM and DRIVER) and os.environ.get("CI"):  # .ci/run installs them: CI never skips this test
    raise RuntimeError(f"the browser test {INSTALL}")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason=INSTALL)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason='needs selenium: pip install -e ".[test]"')
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,800", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.slow
def test_upload_an_image_and_see_its_label(browser, tmp_path, cli):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=1, size=32, seed=7, classes=("circle", "square", "star"))
    run = train_run(tmp_path / "run", str(root), "--model", "net", "--epochs", "1", "--batch-size", "3",
                    "--workers", "0")
    images = sorted((root / "val").rglob("*.png"))[:2]
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not a picture")
    want = {r["path"]: r["predictions"][0]["label"] for r in json.loads(
        cli("predict", *map(str, images), "-c", str(run), "--top-k", "3", "--json", "--device", "cpu",
            "--precision", "fp32").out)}
    with serve_load.running_server(run, "--top-k", "3", "--device", "cpu", "--precision", "fp32") as (_, url, _log):
        browser.get(url)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: "net · 3 classes" in d.find_element(By.ID, "model").text)
        chooser = browser.find_element(By.ID, "files")
        chooser.send_keys("\n".join(str(p) for p in [*images, not_image]))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card.done")) == 3)
        cards = {c.get_attribute("data-file"): c for c in browser.find_elements(By.CSS_SELECTOR, ".card")}
        for path in images:
            card = cards[path.name]
            labels = [e.text for e in card.find_elements(By.CSS_SELECTOR, ".label")]
            assert len(labels) == 3 and labels[0] == want[str(path)]
            assert card.find_element(By.TAG_NAME, "img").get_property("naturalWidth") == 32  # the thumbnail shows
        error = cards["notes.png"].find_element(By.CSS_SELECTOR, ".error").text
        assert error.startswith("notes.png: not a readable image")
        browser.save_screenshot(str(tmp_path / "page.png"))
        problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "/predict" not in e["message"]]
    assert not problems, problems  # no script error, nothing blocked by the page's Content-Security-Policy
