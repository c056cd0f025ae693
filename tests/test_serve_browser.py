"""The page at `/` in a real headless Chromium (Debian's, through Playwright): behind an API key it asks for the key,
submits a prompt, both canvases fill in concurrently from the event stream, words (not WordPiece pieces), text and
rewards appear, and the layout holds on a 390-px-wide screen. Saves screenshots in the test's folder (and the wide
one to $ENTRGI_SCREENSHOT when set, e.g. docs/images/serve_page.png). Also: CORS as a browser sees it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from entrgi.serve.app import BackgroundServer, create_app  # noqa: E402
from entrgi.serve.engine import ServerLimits, default_pair_engine  # noqa: E402

KEY = "sekrit-key-1234"


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


@pytest.fixture(scope="module")
def engine():
    return default_pair_engine("cpu", ServerLimits(max_tokens=64, timeout_s=120))


def panel_words(page, panel: str) -> list[str]:
    """The canvas as the page draws it: one string per word box (its slots' text, joined)."""
    return page.eval_on_selector_all(f"{panel} .canvas .word",
                                     "ws => ws.map(w => [...w.querySelectorAll('.slot')].map(s => s.textContent)"
                                     ".join(''))")


def test_page_behind_a_key_fills_both_canvases_with_words_and_rewards(browser, engine, tmp_path):
    with BackgroundServer(create_app(engine, api_key=KEY)) as srv:
        page = browser.new_page(viewport={"width": 1280, "height": 700})
        errors: list[str] = []
        urls: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: urls.append(r.url))
        page.goto(srv.url + "/")  # the page, not a JSON 401: it asks for the key
        page.wait_for_function("document.getElementById('key-row').classList.contains('needed')")
        assert page.is_visible("#api-key") and "API key" in page.inner_text("#model-name")
        page.fill("#api-key", KEY)
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
        assert not [u for u in urls if KEY in u]  # the key travels in a header only
        assert "entrgi-default-pair" in page.inner_text("#model-name")
        rewards, spans = {}, {}
        for pid in ("guided", "unguided"):
            panel = f"#{pid}"
            assert page.get_attribute(panel, "data-state") == "done", page.inner_text(panel + " .error")
            final = page.inner_text(panel + " .final").strip()
            assert len(final.split()) >= 3
            rewards[pid] = float(page.inner_text(panel + " .reward-value"))
            slots = page.query_selector_all(panel + " .canvas .slot")
            assert len(slots) == 16 and not page.query_selector_all(panel + " .canvas .slot.masked")
            words = panel_words(page, panel)  # words, not WordPiece pieces: wood ##house ##s -> woodhouses
            assert not [w for w in words if "##" in w]
            assert "".join(words) == final.replace(" ", "") and len(words) <= len(final.split()) + 2
            assert page.evaluate(f"document.querySelectorAll('{panel} svg.curve polyline').length") == 1
            points = page.get_attribute(panel + " svg.curve polyline", "points").split()
            assert len(points) == 16  # one reward estimate per step
            assert page.evaluate(f"JSON.parse(document.querySelector('{panel}').dataset.usage).dllm_forwards") == 16
            note = page.query_selector(panel + " .note")  # the final reward and the last estimate agree, or why not
            last = float(page.inner_text(panel + " .estimate"))
            if note.get_attribute("data-agree") == "true":
                assert rewards[pid] == pytest.approx(last, abs=0.011)
            else:
                assert "re-tokenises" in note.inner_text()
            spans[pid] = [float(page.get_attribute(panel, a)) for a in ("data-first-event", "data-last-event")]
        assert "EntRGi" in page.inner_text("#guided h2")
        # the two panels ran concurrently (guided and plain lanes, step by step), not one after the other
        (g0, g1), (u0, u1) = spans["guided"], spans["unguided"]
        assert u0 < g1 and g0 < u1
        # the page shows what the API returns for the same seed and settings
        import httpx
        body = {"model": engine.model_id, "prompt": "the weather was", "max_tokens": 16, "temperature": 0.7,
                "seed": 0, "sampler": {"steps": 16}, "guidance": {"method": "none"}}
        api = httpx.post(srv.url + "/v1/completions", json=body, timeout=60,
                         headers={"Authorization": f"Bearer {KEY}"}).json()["choices"][0]
        assert page.inner_text("#unguided .final").strip() == api["text"].strip()
        assert rewards["unguided"] == pytest.approx(api["reward"], abs=0.006)
        assert rewards["guided"] > rewards["unguided"]  # guidance raised the reward for this prompt and seed
        assert shot.stat().st_size > 20_000
        # a phone-sized screen: one column, nothing wider than the screen
        page.set_viewport_size({"width": 390, "height": 844})
        narrow = tmp_path / "serve_page_390.png"
        page.screenshot(path=str(narrow), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        guided, plain = page.query_selector("#guided").bounding_box(), page.query_selector("#unguided").bounding_box()
        assert guided["y"] + guided["height"] <= plain["y"] and guided["width"] >= 300
        assert page.query_selector("#go").bounding_box()["x"] + 10 < 390
        assert narrow.stat().st_size > 20_000


def test_cors_as_a_browser_sees_it(browser, engine):
    """A page from another origin may call the API only when the server names that origin (--cors-origin): the
    page of one server (origin A) calls a server that allows A, and a server that allows no origin."""
    with BackgroundServer(create_app(engine)) as closed, \
            BackgroundServer(create_app(engine, cors_origins=[closed.url])) as allowed:
        page = browser.new_page()
        page.goto(allowed.url + "/")
        fetch = ("async (url) => { try { const r = await fetch(url + '/v1/models', {headers: {'Authorization': "
                 "'Bearer x'}}); return r.status; } catch (e) { return 'blocked'; } }")
        assert page.evaluate(fetch, closed.url) == "blocked"  # off by default
        page.goto(closed.url + "/")
        assert page.evaluate(fetch, allowed.url) == 200
