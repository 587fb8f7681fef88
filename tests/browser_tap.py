"""What the headless-Chromium page tests share (tests/browser_demo.py,
tests/browser_auth.py): TAP lines numbered on from $TAP_START, a polling
wait, and Debian's chromium through chromium-driver."""
import os
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service


class Tap:
    def __init__(self):
        self.n = int(os.environ.get("TAP_START", "0"))
        self.failed = 0

    def ok(self, cond, what):
        self.n += 1
        print(("ok" if cond else "not ok") + f" {self.n} - browser: {what}", flush=True)
        self.failed += 0 if cond else 1


def wait_for(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if pred():
                return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


def chromium():
    opts = Options()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1200,1400"):
        opts.add_argument(a)
    opts.binary_location = "/usr/bin/chromium"
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
