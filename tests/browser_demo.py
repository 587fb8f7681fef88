"""The demo page in headless Chromium (Debian's chromium + chromium-driver +
python3-selenium): fill the form, generate, see progress and a preview
arrive, see the final image and its seed, and save a screenshot.

usage: browser_demo.py URL SCREENSHOT.png   (prints TAP lines, numbered from $TAP_START)
"""
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

url, shot = sys.argv[1], sys.argv[2]
n = int(os.environ.get("TAP_START", "0"))
failed = 0


def ok(cond, what):
    global n, failed
    n += 1
    print(("ok" if cond else "not ok") + f" {n} - browser: {what}", flush=True)
    failed += 0 if cond else 1


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


opts = Options()
for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1400"):
    opts.add_argument(a)
opts.binary_location = "/usr/bin/chromium"
drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
try:
    drv.get(url)
    el = lambda i: drv.find_element(By.ID, i)
    ok(wait_for(lambda: "status-ready" in el("ready-status").get_attribute("class"), 20),
       "the page shows the service as ready: " + el("ready-status").text)
    ok(wait_for(lambda: el("model").get_attribute("value") == "tiny", 10), "the model list is filled from /v1/models")
    el("prompt").send_keys("a lighthouse at dusk")
    for field, value in (("steps", "12"), ("width", "64"), ("height", "64"), ("seed", "1234")):
        drv.execute_script("arguments[0].value = arguments[1];", el(field), value)
    el("generate").click()
    ok(wait_for(lambda: float(el("progress").get_attribute("value")) > 0, 20), "the progress bar moves")
    ok(wait_for(lambda: el("preview").get_attribute("src").startswith("data:image/png"), 120),
       "a live preview appears")
    ok(wait_for(lambda: drv.find_element(By.TAG_NAME, "body").get_attribute("data-job-state") == "complete", 240),
       "the job completes")
    src = el("result").get_attribute("src") or ""
    loaded = drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", el("result"))
    ok(src.startswith("data:image/png") and loaded == 64, f"the result image is shown ({loaded} px wide)")
    ok(el("seed-out").text == "1234", "the seed is shown: " + el("seed-out").text)
    ok(el("progress").get_attribute("value") in ("100", "100.0"), "the progress bar ends at 100%")
    drv.save_screenshot(shot)
finally:
    drv.quit()
sys.exit(1 if failed else 0)
