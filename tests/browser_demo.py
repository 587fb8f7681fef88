"""The demo page in headless Chromium (Debian's chromium + chromium-driver +
python3-selenium): fill the form, generate, see progress and a preview
arrive, see the final image and its seed, and save a screenshot; then
inpaint: upload an init image, paint a mask on the canvas, repaint.

usage: browser_demo.py URL SCREENSHOT.png INIT.png   (prints TAP lines, numbered from $TAP_START)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_tap import Tap, chromium, wait_for  # noqa: E402

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

url, shot, init_png = sys.argv[1], sys.argv[2], sys.argv[3]
tap = Tap()
ok = tap.ok
drv = chromium()
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

    # Inpainting: upload an init image, paint a mask on the canvas, repaint.
    Select(el("operation")).select_by_value("image_inpaint")
    el("init-image").send_keys(init_png)
    ok(wait_for(lambda: el("mask-canvas").is_displayed() and el("mask-canvas").size["width"] > 0, 10),
       "choosing inpainting and an init image shows the mask canvas")
    ActionChains(drv).move_to_element_with_offset(el("mask-canvas"), 0, 0).click_and_hold() \
        .move_by_offset(40, 30).move_by_offset(30, 20).release().perform()
    # The page keeps its mask off screen: look at what it sends instead.
    drv.execute_script(
        "window.__bodies = []; var f = window.fetch;"
        "window.fetch = function (u, o) { if (o && o.body) window.__bodies.push(o.body); return f.apply(this, arguments); };")
    el("prompt").clear()
    el("prompt").send_keys("a red door")
    el("generate").click()
    ok(wait_for(lambda: drv.find_element(By.TAG_NAME, "body").get_attribute("data-job-state") == "complete", 240),
       "the inpainting job completes: " + el("job-status").text + " " + el("error").text)
    loaded = drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", el("result"))
    ok(loaded == 64, f"the inpainted image is shown at the init image's size ({loaded} px wide)")
    white = drv.execute_async_script(
        "var done = arguments[0], req = JSON.parse(window.__bodies[window.__bodies.length - 1]);"
        "var img = new Image(); img.onload = function () {"
        "  var c = document.createElement('canvas'); c.width = img.width; c.height = img.height;"
        "  var g = c.getContext('2d'); g.drawImage(img, 0, 0);"
        "  var d = g.getImageData(0, 0, c.width, c.height).data, n = 0;"
        "  for (var i = 0; i < d.length; i += 4) if (d[i] > 127) n++;"
        "  done([req.operation, c.width, c.height, n]); };"
        "img.onerror = function () { done(null); };"
        "img.src = 'data:image/png;base64,' + req.mask_image;")
    ok(white and white[0] == "image_inpaint" and white[1] == 64 and white[2] == 64 and 0 < white[3] < 64 * 64,
       f"the request carries the painted mask at the image's size (operation, w, h, white pixels: {white})")
finally:
    drv.quit()
sys.exit(1 if tap.failed else 0)
