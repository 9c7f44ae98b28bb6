"""Drives launch.serve's page in headless Chromium (Debian's chromium and chromium-driver).

The slow page test uses it, and it takes the documentation's screenshot of a running server:

    python -m tests.browser --url http://127.0.0.1:8000 --photo runs/demo/data/photos/test/00003.png \\
        --character character0 --crop-side 56 --out docs/images/serve.png
"""

from __future__ import annotations

import argparse
from pathlib import Path


def drive_page(url: str, photo: Path, character: str, crop_side: int | None = None,
               screenshot: Path | None = None, size: tuple[int, int] = (1180, 1020), timeout: float = 60) -> dict:
    """Chooses ``photo``, moves the crop-side slider to ``crop_side`` (through every side in between,
    as a dragged slider does), picks ``character``, presses Cartoonize and waits for the five
    result cells; saves ``screenshot``; returns the status line and the crop view's size."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        wait = WebDriverWait(driver, timeout)
        driver.get(url + "/")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#characters label"))
        driver.find_element(By.ID, "file").send_keys(str(Path(photo).resolve()))
        wait.until(lambda d: d.find_element(By.ID, "go").is_enabled())
        if crop_side is not None:  # as a person moves the slider: an input event per step
            driver.execute_script("const s = document.getElementById('side');"
                                  "for (let v = Number(s.max); v >= arguments[0]; v--) {"
                                  "  s.value = v; s.dispatchEvent(new Event('input')); }", crop_side)
        labels = driver.find_elements(By.CSS_SELECTOR, "#characters label")
        [label for label in labels if label.text == character][0].click()
        driver.find_element(By.ID, "go").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result img")) == 5)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        view = driver.find_element(By.ID, "crop")
        return {"status": driver.find_element(By.ID, "status").text,
                "canvas": [int(view.get_attribute("width")), int(view.get_attribute("height"))]}
    finally:
        driver.quit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--photo", required=True)
    p.add_argument("--character", required=True)
    p.add_argument("--crop-side", type=int)
    p.add_argument("--out", required=True, help="screenshot PNG")
    a = p.parse_args()
    print(drive_page(a.url, Path(a.photo), a.character, a.crop_side, Path(a.out))["status"])


if __name__ == "__main__":
    main()
