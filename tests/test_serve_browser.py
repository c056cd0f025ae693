"""The page at `/` in a real headless Chromium (Debian's, through Playwright): submit a prompt, both canvases fill
in from the event stream, text and rewards appear. Saves a screenshot in the test's folder (and to
$ENTRGI_SCREENSHOT when set, e.g. docs/images/serve_page.png)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from entrgi.serve.app import BackgroundServer, create_app  # noqa: E402
from entrgi.serve.engine import ServerLimits, default_pair_engine  # noqa: E402


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no chromium on PATH: .ci/run installs Debian's `chromium`")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_page_fills_both_canvases_with_text_and_rewards(browser, tmp_path):
    engine = default_pair_engine("cpu", ServerLimits(max_tokens=64, timeout_s=120))
    with BackgroundServer(create_app(engine)) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 660})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(srv.url + "/")
        page.wait_for_function("document.getElementById('model-name').textContent.includes('entrgi-default-pair')")
        page.fill("#prompt", "the weather was")
        page.select_option("#method", "entrgi")
        page.click("#go")
        page.wait_for_function("['guided', 'unguided'].every(id => "
                               "['done', 'error'].includes(document.getElementById(id).dataset.state))",
                               timeout=120_000)
        shot = tmp_path / "serve_page.png"
        page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("ENTRGI_SCREENSHOT"):
            Path(os.environ["ENTRGI_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, os.environ["ENTRGI_SCREENSHOT"])
        assert not errors
        for pid in ("guided", "unguided"):
            panel = f"#{pid}"
            assert page.get_attribute(panel, "data-state") == "done", page.inner_text(panel + " .error")
            final = page.inner_text(panel + " .final").strip()
            assert len(final.split()) >= 3
            reward = float(page.inner_text(panel + " .reward-value"))
            slots = page.query_selector_all(panel + " .canvas .slot")
            assert len(slots) == 16 and not page.query_selector_all(panel + " .canvas .slot.masked")
            assert page.evaluate(f"document.querySelectorAll('{panel} svg.curve polyline').length") == 1
            points = page.get_attribute(panel + " svg.curve polyline", "points").split()
            assert len(points) == 16  # one reward estimate per step
            assert page.evaluate(f"JSON.parse(document.querySelector('{panel}').dataset.usage).dllm_forwards") == 16
            if pid == "guided":
                guided_reward = reward
            else:
                plain_reward = reward
        assert "EntRGi" in page.inner_text("#guided h2")
        # the page shows what the API returns for the same seed and settings
        import httpx
        body = {"model": engine.model_id, "prompt": "the weather was", "max_tokens": 16, "temperature": 0.7,
                "seed": 0, "sampler": {"steps": 16}, "guidance": {"method": "none"}}
        api = httpx.post(srv.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
        assert page.inner_text("#unguided .final").strip() == api["text"]
        assert plain_reward == pytest.approx(api["reward"], abs=0.006)
        assert guided_reward > plain_reward  # guidance raised the reward for this prompt and seed
        assert shot.stat().st_size > 20_000
