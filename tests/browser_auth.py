"""The demo page against a service with API keys, in headless Chromium (as
tests/browser_demo.py), driven by tests/test_auth.sh with its test engine:
without a key the page says so; the key field is sent as a Bearer header on
the API calls and the stream (read with fetch, since EventSource cannot
send headers) and kept in localStorage; a cancelled or failed job clears
the previous result; the size inputs take the API's minimum of 64.

usage: browser_auth.py URL KEY   (prints TAP lines, numbered from $TAP_START)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_tap import Tap, chromium, wait_for  # noqa: E402

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

url, key = sys.argv[1], sys.argv[2]
tap = Tap()
ok = tap.ok
drv = chromium()
try:
    el = lambda i: drv.find_element(By.ID, i)
    state = lambda: drv.find_element(By.TAG_NAME, "body").get_attribute("data-job-state")

    def generate(prompt, steps):
        el("prompt").clear()
        el("prompt").send_keys(prompt)
        for field, value in (("steps", str(steps)), ("width", "64"), ("height", "64")):
            drv.execute_script("arguments[0].value = arguments[1];", el(field), value)
        el("generate").click()

    def result_shown():
        return drv.execute_script("return !arguments[0].hidden && !!arguments[0].getAttribute('src')", el("result"))

    drv.get(url)
    ok(el("width").get_attribute("min") == "64" and el("height").get_attribute("min") == "64",
       "the size inputs take the API's minimum, 64")
    ok(wait_for(lambda: "API key" in el("model").text, 10), "without a key the model list asks for one: " + el("model").text)
    generate("no key", 3)
    ok(wait_for(lambda: state() == "error", 10) and "needs a key" in el("error").text,
       "a submit without a key shows the 401's message: " + el("error").text)

    el("api-key").send_keys(key + Keys.TAB)
    ok(wait_for(lambda: el("model").get_attribute("value") == "sd15", 10), "with the key the models load")
    ok(drv.execute_script("return localStorage.getItem('sdworker.apiKey')") == key, "the key is kept in localStorage")
    drv.refresh()
    ok(wait_for(lambda: el("api-key").get_attribute("value") == key, 5) and
       wait_for(lambda: el("model").get_attribute("value") == "sd15", 10),
       "after a reload the key is back in its field and used")

    generate("a lighthouse", 4)
    ok(wait_for(lambda: state() == "complete", 30) and result_shown(),
       "a job runs to its result through the keyed stream: " + el("job-status").text + " " + el("error").text)
    ok(el("progress").get_attribute("value") in ("100", "100.0"), "the progress bar ends at 100%")

    generate("a long one", 150)
    ok(wait_for(lambda: el("job-status").text.startswith("Running"), 20), "a long job runs: " + el("job-status").text)
    el("cancel").click()
    ok(wait_for(lambda: state() == "cancelled", 10) and not result_shown() and el("seed-out").text == "–",
       "cancel clears the previous result")

    generate("another", 3)
    ok(wait_for(lambda: state() == "complete", 30) and result_shown(), "a new result")
    generate("please fail", 5)
    ok(wait_for(lambda: state() == "error", 30) and not result_shown() and
       "asked to fail" in el("error").text, "a failed job shows its error and clears the previous result")

    drv.execute_script("arguments[0].value = ''; arguments[0].dispatchEvent(new Event('change'));", el("api-key"))
    ok(drv.execute_script("return localStorage.getItem('sdworker.apiKey')") is None, "clearing the field forgets the key")
finally:
    drv.quit()
sys.exit(1 if tap.failed else 0)
