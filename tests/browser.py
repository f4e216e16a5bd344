"""Helpers for the end-to-end tests that drive the real app in headless Chromium.

Waits follow Streamlit's own Playwright tests: the app root carries the script state in
``data-test-script-state`` ("initial", "running", "notRunning", ...) and the connection in
``data-test-connection-state``. Every helper waits for a condition, never a fixed time.

A rerun is proven by the server's answer: every context made with ``new_context`` counts the
websocket messages its pages receive (``window.__vggFrames``). Watching the script state alone
missed fast reruns: React can render "running" and "notRunning" in one batch, so the attribute
never changes in the page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

APP = '[data-testid="stApp"]'
APP_CONNECTED = f'{APP}[data-test-connection-state="CONNECTED"]'
APP_IDLE = f'{APP}[data-test-script-state="notRunning"]'
EXCEPTION = '[data-testid="stException"]'
NAV_LINK = '[data-testid="stSidebarNav"] a'

# Counts changes of the script state from now on, so a rerun that starts and ends quickly
# is still seen (waiting for "notRunning" alone would pass before the rerun began).
_WATCH_SCRIPT_STATE = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    window.__vggScriptStateChanges = 0;
    if (window.__vggObserver) window.__vggObserver.disconnect();
    window.__vggObserver = new MutationObserver(() => { window.__vggScriptStateChanges += 1; });
    window.__vggObserver.observe(app, {attributes: true, attributeFilter: ["data-test-script-state"]});
}"""


# Counts the messages every websocket of the page receives (Streamlit's are the server's answers).
_COUNT_FRAMES = """(() => {
    window.__vggFrames = 0;
    const Native = window.WebSocket;
    window.WebSocket = class extends Native {
        constructor(...args) {
            super(...args);
            this.addEventListener("message", () => { window.__vggFrames += 1; });
        }
    };
})();"""


def new_context(browser: Browser, **options: object) -> BrowserContext:
    """A fresh browser context (1400×900 unless ``options`` say otherwise) whose pages count the
    server's websocket messages (see the module's text)."""
    context = browser.new_context(**{"viewport": {"width": 1400, "height": 900}, **options})
    context.add_init_script(_COUNT_FRAMES)
    return context


def wait_for_app(page: Page, timeout_ms: float = 60_000) -> None:
    """Wait until the app is connected and its script has finished running."""
    page.wait_for_selector(APP_CONNECTED, state="attached", timeout=timeout_ms)
    page.wait_for_selector(APP_IDLE, state="attached", timeout=timeout_ms)


def run_and_wait(page: Page, action: Callable[[], object], timeout_ms: float = 60_000) -> None:
    """Do ``action`` (a click, a key press), wait for the rerun it causes to start and end: the
    server's answer arrived (or the script state changed), and the script is idle again."""
    page.evaluate(_WATCH_SCRIPT_STATE)
    before = page.evaluate("() => window.__vggFrames ?? 0")
    action()
    page.wait_for_function("n => window.__vggScriptStateChanges > 0 || (window.__vggFrames ?? 0) > n", arg=before,
                           timeout=timeout_ms)
    wait_for_app(page, timeout_ms)


def open_app(page: Page, base_url: str, timeout_ms: float = 60_000) -> None:
    """Load the app's default page and wait for its first run to end."""
    page.goto(base_url)
    wait_for_app(page, timeout_ms)


def assert_no_exception(page: Page) -> None:
    """Fail, quoting them, if the page shows any exception element."""
    exceptions = page.locator(EXCEPTION)
    count = exceptions.count()
    assert count == 0, f"{count} exception element(s) on {page.url}: {exceptions.all_inner_texts()}"


def nav_links(page: Page) -> list[str]:
    """The page titles listed in the sidebar navigation, in order."""
    return [_link_title(text) for text in page.locator(NAV_LINK).all_inner_texts()]


def _link_title(text: str) -> str:
    # A Material icon renders as its ligature name ("account_tree") before the title.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def goto_page(page: Page, base_url: str, title: str, timeout_ms: float = 60_000) -> None:
    """Open the page called ``title`` through the sidebar navigation (loads the app if needed)."""
    if not page.url.startswith(base_url):
        open_app(page, base_url, timeout_ms)
    link = page.locator(NAV_LINK).filter(has=page.get_by_text(title, exact=True))
    expect(link).to_have_count(1)
    # A click that lands while a fragment reruns can start no rerun of its own (seen on a loaded
    # machine): a try that causes none within a few seconds is repeated, as set_number does.
    current = page.locator(f'{NAV_LINK}[aria-current="page"]')
    for attempt in range(3):
        try:
            run_and_wait(page, link.click, 10_000 if attempt < 2 else timeout_ms)
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            if any(re.search(rf"{re.escape(title)}$", t) for t in current.all_inner_texts()):  # opened, unseen
                wait_for_app(page, timeout_ms)
                break
    expect(page.locator(f'{NAV_LINK}[aria-current="page"]')).to_have_text(re.compile(rf"{re.escape(title)}$"))


def select_option(page: Page, label: str, option: str | re.Pattern[str], timeout_ms: float = 60_000) -> None:
    """Choose ``option`` (its text, or a pattern) in the selectbox labelled ``label``; wait for the rerun."""
    box = page.locator('[data-testid="stSelectbox"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=label)
    )
    expect(box).to_have_count(1)
    box.locator('[role="combobox"]').click()
    dropdown = page.locator('[data-testid="stSelectboxVirtualDropdown"]')
    choice = dropdown.get_by_role("option").filter(has_text=option)
    expect(choice).to_have_count(1)
    run_and_wait(page, choice.click, timeout_ms)


def wait_for_plotly(page: Page, count: int = 1, timeout_ms: float = 60_000) -> None:
    """Wait until at least ``count`` plotly charts have drawn their SVG (plotly draws lazily)."""
    page.wait_for_function(
        "n => document.querySelectorAll('.js-plotly-plot .main-svg').length >= n",
        arg=count,
        timeout=timeout_ms,
    )


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``tests/artifacts/<name>.png`` and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def run_tag(run_id: str) -> str:
    """The random tag that ends a run's id and its readable name (``RunInfo.label``)."""
    return run_id.rsplit("-", 1)[-1]
