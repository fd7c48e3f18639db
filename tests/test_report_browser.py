"""The morning page of a real tiny night on FFmpeg media: rebuilt by ``sleep.py report``,
self-contained (no network, no external URL, under 10 MB), and, in headless Chromium, free of
console errors, every image decoded, no sideways scroll on a 390 px phone.

The browser tests are skipped when playwright or a Chromium binary is missing
(``sudo apt-get install chromium``).
"""
from __future__ import annotations

import datetime as dt
import json
import shutil

import pytest
from conftest import make_media, run_cli

from core.config import CONFIG_DIR, load_config
from core.errors import LockHeld
from core.lock import NightLock
from core.paths import Paths

DAY = dt.date(2026, 2, 3)
EARLIER = dt.date(2026, 2, 2)
# Fewer steps than tiny.yaml: the page needs every stage's output, not good models.
CHEAP = ["models.jepa.steps=20", "models.cpc.min_steps=10", "models.cpc.max_steps=10",
         "models.align.min_steps=20", "models.align.max_steps=20", "models.sae.min_steps=20",
         "models.sae.max_steps=20", "models.reconstruct.min_steps=20", "models.reconstruct.max_steps=20",
         "dream.steps=20"]
VIEWPORTS = {"desktop": (1280, 900), "phone": (390, 844)}
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; media-src data:; font-src data:"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A root with one tiny night (a good recording and a file that is not media), plus an
    earlier night's summary for the page to set tonight against; returns ``(paths, page)``."""
    from pipeline.runner import run_night

    paths = Paths.at(tmp_path_factory.mktemp("report") / "root")
    raw = paths.raw(DAY)
    make_media(raw / "walk.mp4", seconds=9)
    (raw / "notes.mp4").write_text("not a video")
    outcome = run_night(DAY, load_config(CONFIG_DIR / "tiny.yaml", CHEAP), paths, device="cpu")
    assert outcome.ok, outcome.errors
    # An earlier night as its report left it: tonight's figures, its curves shifted up.
    summary = json.loads((paths.report(DAY) / "summary.json").read_text())
    earlier = {**summary, "date": EARLIER.isoformat()}
    vision = dict(summary["metrics"]["vision"])
    vision["loss_curve"] = [v + 0.1 for v in vision["loss_curve"]]
    earlier["metrics"] = {**summary["metrics"], "vision": vision}
    paths.report(EARLIER).mkdir(parents=True)
    (paths.report(EARLIER) / "summary.json").write_text(json.dumps(earlier))
    page = paths.report(DAY) / "index.html"
    page.unlink()
    result = run_cli("report", "--date", DAY.isoformat(), "--root", str(paths.root),
                     "--config", str(CONFIG_DIR / "tiny.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"report: {page}"
    return paths, page


def test_report_command_rebuilds_the_page_with_earlier_nights_overlaid(night):
    paths, page = night
    html = page.read_text()
    assert page.is_file() and "Training curves against the last week" in html
    curves = html[html.index('id="curves"'):html.index('id="health"')]
    assert "the 1 night(s) before it in grey" in curves and f"<title>{EARLIER}</title>" in curves
    summary = json.loads((paths.report(DAY) / "summary.json").read_text())
    assert summary["stages"]["ingest"]["status"] == "done"


def test_page_opens_with_the_day_then_learning_then_trust(night):
    _, page = night
    html = page.read_text()
    order = [html.index(f'id="{key}"') for key in ("headline", "day", "learning", "trust")]
    assert order == sorted(order)
    assert html.index('id="dream"') < html.index('id="learning"') < html.index('id="vision"')
    assert html.index('id="trust"') < html.index('id="ingest"') < html.index('id="timings"')
    assert "notes.mp4" in html and "Disk used" in html and "Model versions" in html


def test_page_forbids_network_loads_and_names_no_external_url(night):
    _, page = night
    # The SVG namespace is a name, not an address: nothing is fetched from it.
    html = page.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in html.replace("&#39;", "'")
    for needle in ("http://", "https://", "//cdn", "<link", "@import", "<script"):
        assert needle not in html


def test_tiny_night_report_is_well_under_10_mb(night):
    _, page = night
    size = page.stat().st_size
    print(f"report of a 9 s tiny night: {size / 1e6:.3f} MB ({page})")
    assert 10_000 < size < 1_000_000


def test_report_command_refuses_a_night_not_in_the_ledger(night):
    paths, _ = night
    result = run_cli("report", "--date", "2026-02-04", "--root", str(paths.root))
    assert result.returncode == 2
    assert "no night of 2026-02-04 in the ledger" in result.stderr


def test_report_is_refused_while_that_night_runs(night):
    from report.build import rebuild_report

    paths, _ = night
    with NightLock(paths.lock, f"night {DAY}"), pytest.raises(LockHeld, match="running now"):
        rebuild_report(DAY, load_config(CONFIG_DIR / "tiny.yaml"), paths)


# -- in headless Chromium ---------------------------------------------------------------

def _chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    path = shutil.which("chromium") or shutil.which("chromium-headless-shell")
    if path is None:
        pytest.skip("no Chromium binary on PATH (sudo apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.mark.browser
@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_page_loads_offline_without_errors_and_fits_the_screen(night, browser, viewport):
    paths, page = night
    width, height = VIEWPORTS[viewport]
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_offline(True)
    requests, errors = [], []

    def route(r):
        if r.request.url == page.as_uri():
            r.continue_()
        else:
            requests.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    tab = context.new_page()
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(page.as_uri(), wait_until="load")
    # Some sections mark their images loading="lazy": scroll through the page so every one loads.
    for y in range(0, tab.evaluate("document.documentElement.scrollHeight") + height, height // 2):
        tab.evaluate(f"window.scrollTo(0, {y})")
        tab.wait_for_timeout(20)
    for _ in range(150):  # polled from here: wait_for_function's eval would meet the page's CSP
        if tab.evaluate("Array.from(document.images).every(i => i.complete)"):
            break
        tab.wait_for_timeout(100)
    tab.evaluate("window.scrollTo(0, 0)")
    images = tab.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    scroll_width = tab.evaluate("document.documentElement.scrollWidth")
    shot = paths.report(DAY) / f"screenshot-{viewport}.png"
    tab.screenshot(path=str(shot), full_page=True)
    context.close()
    print(f"{viewport} screenshot: {shot} ({shot.stat().st_size} bytes); {len(images)} images; "
          f"scrollWidth {scroll_width}")
    assert requests == [] and errors == []
    assert images and all(complete and natural > 0 for complete, natural, _ in images), images
    assert scroll_width <= width + 1
    assert shot.stat().st_size > 10_000


def test_headline_is_the_top_highlight_else_the_verdict():
    from report.headline import headline

    summary = {"stages": {"ingest": {"status": "done", "seconds": 2.0}},
               "ingest": {"footage_seconds": 5400, "clips": 1800, "processed": [{}] * 30, "failed": [{}]},
               "episodes": {"episodes": [{}] * 12, "highlights": [
                   {"clip_id": 7, "when": "2026-02-03T14:05:09", "reasons": ["unlike any earlier day", "loud"]}]}}
    top = headline(summary)
    assert top.line == "14:05 · clip 7: unlike any earlier day"
    assert dict(top.facts) | {"night took": None} == {"recorded": "1.5 h", "clips": "1800", "files": "30 (1 skipped)",
                                                      "episodes": "12", "highlights": "1", "night took": None}
    del summary["episodes"]
    assert headline(summary).line == "Every stage completed."
