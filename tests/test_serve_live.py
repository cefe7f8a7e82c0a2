"""A live `tailor serve` on loopback, as a user starts it: driven by a real browser (Debian's Chromium through
Selenium), stopped with SIGTERM mid-request, and run as several worker processes that share enrolments."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, sample_images

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL_HINT = ("the browser test needs Debian's Chromium and its driver: run `make browser` "
                "(apt-get install chromium chromium-driver) and test again")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``tailor serve *args`` on a free loopback port, ready when ``/health`` answers."""

    def __init__(self, *args: str, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "tailor", "serve", *args, "--port", str(self.port)],
                                        cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.process.poll() is None, f"tailor serve exited: {log.read_text()[-3000:]}"
            try:
                if self.get("/health")["status"] == "ok":
                    return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"tailor serve did not start: {log.read_text()[-3000:]}")

    def get(self, route: str) -> dict:
        with urllib.request.urlopen(self.url + route, timeout=30) as answer:
            return json.loads(answer.read())

    def post_images(self, route: str, paths: list[Path], fields: dict[str, str] | None = None) -> tuple[int, dict]:
        """A multipart POST of ``paths`` (form field ``images``) with the standard library alone."""
        boundary = "tailor-test-boundary"
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in (fields or {}).items()]
        for path in paths:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'
                         f'Content-Type: image/jpeg\r\n\r\n'.encode() + path.read_bytes() + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + route, data=body, method="POST",
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def stop(self) -> bool:
        """SIGTERM, then whether the server shut down cleanly (uvicorn finishes, then re-raises the signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60) in (0, -signal.SIGTERM) and "Finished server process" in self.log.read_text()


@pytest.fixture
def own_run(probe_run, tmp_path) -> Path:
    return Path(shutil.copytree(probe_run, tmp_path / "run"))


def _browser(tmp_path: Path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail(INSTALL_HINT)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1500", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_a_person_classifies_finds_look_alikes_and_enrolls_in_a_real_browser(own_run, search_run, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    watch = sample_images("Watches", 1, last=True)[0]
    shoes = sample_images("Sports Shoes", 3)
    server = LiveServer(str(own_run), "--search", str(search_run), log=tmp_path / "serve.log")
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 60)
        driver.get(server.url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        assert "run run" in driver.find_element(By.ID, "run-info").text and "look-alikes" in \
            driver.find_element(By.ID, "run-info").text

        def top1_on_page(image: Path) -> str:
            driver.execute_script("document.getElementById('files').value = ''")  # a new pick, not one more file
            driver.find_element(By.ID, "files").send_keys(str(image))
            card = wait.until(lambda d: next((c for c in d.find_elements(By.CSS_SELECTOR, ".prediction")
                                              if c.find_element(By.CSS_SELECTOR, ".file").text == image.name), None))
            return card.get_attribute("data-top1")

        status, api = server.post_images("/predict", [watch])
        assert status == 200
        assert top1_on_page(watch) == api["predictions"][0]["top"][0]["label"]
        bars = driver.find_elements(By.CSS_SELECTOR, ".prediction .bar")
        assert len(bars) == 3  # three trained categories: every one shown as a bar
        tiles = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#similar .tile"))
        assert len(tiles) == 12
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('#similar img')].every(i => i.complete && i.naturalWidth > 0)"))

        driver.find_element(By.ID, "enroll-name").send_keys("Sports Shoes")
        driver.find_element(By.ID, "enroll-files").send_keys("\n".join(str(p) for p in shoes))
        driver.find_element(By.ID, "enroll-submit").click()
        wait.until(lambda d: "enrolled Sports Shoes from 3 images" in d.find_element(By.ID, "enroll-status").text)
        assert driver.find_element(By.CSS_SELECTOR, "#enrolled-list .enrolled-name").text == "Sports Shoes"
        assert server.get("/classes")["enrolled"] == ["Sports Shoes"]

        assert top1_on_page(shoes[1]) == "Sports Shoes"
        screenshot = tmp_path / "serve.png"
        driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 20_000
        if os.environ.get("TAILOR_SCREENSHOT"):  # a copy of the test's own screenshot, to look at
            shutil.copy(screenshot, os.environ["TAILOR_SCREENSHOT"])
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors
    finally:
        driver.quit()
        assert server.stop()
    assert (own_run / "enrolled.pt").is_file()


def test_sigterm_lets_the_request_in_flight_finish(probe_run, tmp_path):
    # each batch waits 2 s for company: the request is still in the server when SIGTERM arrives
    server = LiveServer(str(probe_run), "-p", "serve.settings.max_wait=2.0", log=tmp_path / "serve.log")
    answers: list = []
    request = threading.Thread(target=lambda: answers.append(
        server.post_images("/predict", sample_images("Watches", 1))))
    request.start()
    time.sleep(0.7)
    assert server.stop()
    request.join(60)
    assert answers and answers[0][0] == 200 and answers[0][1]["predictions"][0]["top"]


def test_worker_processes_share_enrolled_categories(own_run, tmp_path):
    server = LiveServer(str(own_run), "--workers", "2", log=tmp_path / "serve.log")
    try:
        status, answer = server.post_images("/enroll", sample_images("Sports Shoes", 3), {"name": "Sports Shoes"})
        assert status == 201, answer
        for _ in range(8):  # whichever process answers has read the new enrolled.pt
            assert server.get("/classes")["enrolled"] == ["Sports Shoes"]
            status, answer = server.post_images("/predict?k=4", sample_images("Watches", 1))
            assert status == 200 and "Sports Shoes" in [t["label"] for t in answer["predictions"][0]["top"]]
    finally:
        assert server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert log.count("Started server process") == 2, log[-2000:]
