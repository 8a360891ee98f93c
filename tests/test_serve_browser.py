"""The upload page in headless Chromium (Debian's chromium + chromium-driver, Selenium):
pick a photo, see the heatmap appear next to it, take a screenshot."""

from __future__ import annotations

import shutil

import cv2
import pytest

from .test_serve import running_server


def chromium(*more_flags: str):
    """Debian's headless Chromium under Selenium; ``more_flags`` added to the usual ones."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (binary and driver):
        pytest.fail("Debian's chromium and chromium-driver are required (.ci/run installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", *more_flags):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.parametrize("key", [None, "page-test-key-0123456789"], ids=["open", "with-key"])
def test_upload_page_shows_heatmap(fixed_model, photo_set, tmp_path, key):
    """Without keys the page just works; with keys it asks for one once and keeps it in the
    tab's sessionStorage (not localStorage, not a cookie). With two models the page offers
    them (from /readyz) and the one picked answers."""
    import httpx
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    photo = tmp_path / "coffee.jpg"
    cv2.imwrite(str(photo), photo_set["coffee"][:, :, ::-1])
    with running_server(fixed_model, "--model", f"other={fixed_model}",
                        env={"MIDAS_ONNX_API_KEYS": key} if key else None) as base:
        browser = chromium()
        try:
            browser.get(base + "/")
            WebDriverWait(browser, 20).until(lambda b: b.find_element(By.ID, "status").text.startswith("ready"))
            form = browser.find_element(By.ID, "key-form")
            if key:
                WebDriverWait(browser, 10).until(lambda b: form.is_displayed())
                browser.find_element(By.ID, "api-key").send_keys(key + "\n")
                WebDriverWait(browser, 10).until(lambda b: not form.is_displayed())
                assert browser.execute_script("return sessionStorage.getItem('midas-onnx-key')") == key
                assert browser.execute_script("return localStorage.length") == 0
                assert browser.get_cookies() == []
            else:
                assert not form.is_displayed()
            picker = Select(browser.find_element(By.ID, "model"))
            assert [o.get_attribute("value") for o in picker.options] == [fixed_model.stem, "other"]
            assert browser.find_element(By.ID, "model-label").is_displayed()
            picker.select_by_value("other")
            browser.find_element(By.ID, "pick").send_keys(str(photo))
            card = WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.CSS_SELECTOR, ".card[data-state]"))
            assert card.get_attribute("data-state") == "done", card.text
            heat = card.find_element(By.CSS_SELECTOR, "img.heatmap")
            WebDriverWait(browser, 10).until(lambda b: b.execute_script("return arguments[0].naturalWidth", heat) > 0)
            size = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", heat)
            assert size == [600, 400]
            assert card.find_element(By.CSS_SELECTOR, "a.download").get_attribute("download") == "coffee.heatmap.png"
            shot = tmp_path / "upload_page.png"
            assert browser.save_screenshot(str(shot))
            metrics = httpx.get(base + "/metrics", headers={"authorization": f"Bearer {key}"} if key else None).text
            assert 'midas_model_images_total{model="other"} 1.0' in metrics, metrics[-2000:]
        finally:
            browser.quit()
    image = cv2.imread(str(shot))
    assert image is not None and image.shape[1] >= 1000 and image.std() > 10
