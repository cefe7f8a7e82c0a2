"""Make the README's and the site's pictures from real runs on the bundled sample, not by hand.

    python docs/scripts/pictures.py            # ~10 min on 2 CPU cores the first time (the two runs), then ~1 min

It runs (or resumes, or reuses) the demo's transfer run (``configs/demo.gin``) and the sample's triplet run
(``configs/triplet.gin``), then writes to ``docs/images/``:

- ``serve_demo.png``: ``tailor serve`` over both runs, a test-year photo dropped on its page in Debian's Chromium
  (the same browser the tests drive): its top-5 categories and its look-alikes in the catalog;
- ``report_demo.png``: the top of the demo run's ``report.html``;
- ``similar_sheet.png``: ``tailor similar``'s contact sheet for the same photo;
- ``triplet_tsne.png``: the triplet run's t-SNE map.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "docs" / "images"
RUNS = REPO / "experiments"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
#: a test-year product (2011): a navy blue men's shirt, never seen in training
QUERY = REPO / "data" / "sample" / "images" / "15970.jpg"


def tailor(*args: str) -> None:
    """Run the ``tailor`` command of this checkout, failing loudly."""
    subprocess.run([sys.executable, "-m", "tailor", *args], cwd=REPO, check=True)


def ensure_runs() -> tuple[Path, Path]:
    """The demo's transfer run and the triplet run, made when missing (a rerun resumes or reuses them)."""
    if not (RUNS / "splits" / "train_top20.csv").is_file():
        tailor("splits", "data/styles.csv", "experiments/splits", "--images", "data/sample/images")
    runs = {"demo": "configs/demo.gin", "triplet": "configs/triplet.gin"}
    for name, config in runs.items():
        if not (RUNS / name / "results.json").is_file():
            tailor("run", "-c", config)
    return RUNS / "demo", RUNS / "triplet"


def browser(profile: Path, width: int, height: int):
    """Headless Chromium through Selenium (``make browser`` installs it)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        raise SystemExit("the pictures need Debian's Chromium and its driver: run `make browser`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--hide-scrollbars",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_picture(demo: Path, triplet: Path, work: Path) -> Path:
    """The service's page over both runs, after a photo was dropped on it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = free_port()
    log = open(work / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "tailor", "serve", str(demo), "--search", str(triplet),
                               "--port", str(port)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit(f"tailor serve did not start: {(work / 'serve.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as answer:
                    if json.loads(answer.read())["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.5)
        driver = browser(work / "profile-serve", 1200, 1300)
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(url + "/")
            wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            driver.find_element(By.ID, "files").send_keys(str(QUERY))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".prediction .bar"))
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similar .tile")) >= 5)
            time.sleep(1.0)  # the thumbnails finish loading
            out = IMAGES / "serve_demo.png"
            driver.save_screenshot(str(out))
            return out
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def report_picture(demo: Path, work: Path) -> Path:
    """The top of the demo run's self-contained report, opened from disk."""
    driver = browser(work / "profile-report", 1200, 1100)
    try:
        driver.get((demo / "report.html").resolve().as_uri())
        time.sleep(1.0)
        out = IMAGES / "report_demo.png"
        driver.save_screenshot(str(out))
        return out
    finally:
        driver.quit()


def similar_picture(triplet: Path) -> Path:
    """``tailor similar``'s contact sheet for the query photo."""
    out = IMAGES / "similar_sheet.png"
    tailor("similar", str(triplet), str(QUERY), "--k", "10", "--out", str(out))
    return out


def tsne_picture(triplet: Path) -> Path:
    out = IMAGES / "triplet_tsne.png"
    shutil.copyfile(triplet / "tsne.png", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    demo, triplet = ensure_runs()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        made = [similar_picture(triplet), tsne_picture(triplet), report_picture(demo, work),
                serve_picture(demo, triplet, work)]
    for path in made:
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
