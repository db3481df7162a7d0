"""The built book in a real browser, with no internet.

Serves the HTML book (``NBUTILS_BOOK_HTML``, default ``_build/html``) on 127.0.0.1 and opens
every page of ``_toc.yml`` in headless Chromium (``/usr/bin/chromium``, driven by Playwright):
math is typeset by the local MathJax, every image has loaded, every request stayed on
127.0.0.1 and succeeded, saved widgets render, static sliders change the picture, and the
Colab button of each notebook points at that notebook in the repository of ``_config.yml``.

Skipped (with the reason) when there is no built book, no Chromium or no Playwright, unless
``NBUTILS_REQUIRE_BROWSER=1`` (``make test`` sets it): then those are failures.
"""

import functools
import hashlib
import http.server
import os
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("NBUTILS_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Sphinx 7.4 writes an inline script that an extension registers after the builder started
# twice (sphinx-thebe's settings, on every page); the second copy fails to redeclare its
# constants and changes nothing (thebe is off). Every other script error fails the check.
KNOWN_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)
RAW_TEX = ("\\(", "\\)", "\\[", "\\]", "$$", "\\begin{")
LOCAL_HOSTS = {"127.0.0.1"}

# Wait for MathJax's first typesetting pass and for every image (lazy ones included).
SETTLE_JS = """async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const images = Array.from(document.images);
  images.forEach((img) => { img.loading = "eager"; });
  await Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done); img.addEventListener("error", done);
  })));
}"""

# What a reader sees of the maths: untypeset math elements and raw TeX left in the prose.
MATH_JS = """() => {
  const math = Array.from(document.querySelectorAll("span.math, div.math"));
  const untypeset = math.filter((m) => !m.querySelector("mjx-container"))
                        .map((m) => m.textContent.trim().slice(0, 60));
  const main = (document.querySelector("main") || document.body).cloneNode(true);
  main.querySelectorAll("pre, code, script, style, textarea, mjx-container, .highlight")
      .forEach((e) => e.remove());
  return {
    elements: math.length,
    typeset: document.querySelectorAll("mjx-container").length,
    untypeset: untypeset,
    text: main.textContent,
  };
}"""

BROKEN_IMAGES_JS = """() => Array.from(document.images)
  .filter((img) => !(img.complete && img.naturalWidth > 0))
  .map((img) => img.currentSrc || img.src)"""

WIDGETS_JS = """() => ({
  views: document.querySelectorAll(
    'script[type="application/vnd.jupyter.widget-view+json"]').length,
  rendered: document.querySelectorAll(".widget-subarea > *, .jupyter-widgets").length,
})"""


# ----------------------------------------------------------------------------- the book


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_pages() -> list[str]:
    """Every page of _toc.yml (path without suffix), root first."""

    def walk(entries):
        for entry in entries:
            if "file" in entry:
                yield entry["file"]
            yield from walk(entry.get("sections", []) + entry.get("chapters", []))

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    parts = [c for part in toc.get("parts", []) for c in part.get("chapters", [])]
    return [toc["root"], *walk(parts + toc.get("chapters", []))]


def _is_notebook(page: str) -> bool:
    return (ROOT / f"{page}.ipynb").exists()


def _colab_link(page: str) -> str:
    """The Colab address of a notebook page, built from _config.yml as the theme should."""
    config = _config()
    repo = config["repository"]
    slug = urlparse(repo["url"]).path.strip("/").removesuffix(".git")
    path = "/".join(p for p in (repo.get("path_to_book", "").strip("/"), f"{page}.ipynb") if p)
    colab = config["launch_buttons"]["colab_url"].rstrip("/")
    return f"{colab}/github/{slug}/blob/{repo['branch']}/{path}"


def _book_dir() -> Path:
    return Path(os.environ.get("NBUTILS_BOOK_HTML", ROOT / "_build" / "html")).resolve()


def _unavailable() -> str | None:
    """Why the browser check cannot run here, or None."""
    if not (_book_dir() / "index.html").is_file():
        return f"no built book at {_book_dir()} (run `make book`, or set NBUTILS_BOOK_HTML)"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def site():
    """Base URL of the book served on 127.0.0.1 (a free port, a server thread)."""
    reason = _unavailable()
    if reason and os.environ.get("NBUTILS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser check required (NBUTILS_REQUIRE_BROWSER=1) but {reason}")
    if reason:
        pytest.skip(reason)
    handler = functools.partial(_QuietHandler, directory=str(_book_dir()))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def browser(site):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield chromium
        chromium.close()


class Visit:
    """One page opened in a fresh browser page, with everything it asked the network for."""

    def __init__(self, browser, url: str):
        self.requests, self.failed, self.errors = [], [], []
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", self._response)
        self.page.on("pageerror", self._error)
        self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")
        self.page.evaluate(SETTLE_JS)

    def _error(self, error):
        if str(error) not in KNOWN_ERRORS:
            self.errors.append(f"{error}\n{error.stack}")

    def _response(self, response):
        if response.status >= 400:
            self.failed.append(f"{response.url} (HTTP {response.status})")

    def remote(self) -> list[str]:
        """Requests that left 127.0.0.1 (data: and blob: URLs are local by nature)."""
        return [
            u
            for u in self.requests
            if urlparse(u).scheme not in ("data", "blob", "about")
            and urlparse(u).hostname not in LOCAL_HOSTS
        ]


@pytest.fixture(scope="module")
def visit(browser, site):
    """Open a page once per test module; later checks of the same page reuse the visit."""
    opened: dict[str, Visit] = {}

    def open_page(page: str) -> Visit:
        if page not in opened:
            opened[page] = Visit(browser, f"{site}/{page}.html")
        return opened[page]

    yield open_page
    for v in opened.values():
        v.page.close()


# ----------------------------------------------------------------------------- the checks

PAGES = _toc_pages()
NOTEBOOK_PAGES = [p for p in PAGES if _is_notebook(p)]


def test_index_redirects_to_the_introduction(browser, site):
    page = browser.new_page()
    try:
        page.goto(f"{site}/index.html")
        page.wait_for_url(f"**/{PAGES[0]}.html", timeout=10_000)
    finally:
        page.close()


@pytest.mark.parametrize("page", PAGES)
def test_page_loads_everything_locally(visit, page):
    v = visit(page)
    assert not v.remote(), f"{page}: requests left 127.0.0.1 (no internet in CI): {v.remote()}"
    assert not v.failed, f"{page}: failed requests: {v.failed}"
    assert not v.errors, f"{page}: JavaScript errors: {v.errors}"


@pytest.mark.parametrize("page", PAGES)
def test_math_is_typeset(visit, page):
    math = visit(page).page.evaluate(MATH_JS)
    if page == PAGES[0]:
        assert math["elements"] > 0, "the introduction should show displayed equations"
    assert not math["untypeset"], f"{page}: math left untypeset: {math['untypeset'][:5]}"
    assert math["typeset"] >= math["elements"], f"{page}: MathJax output missing: {math}"
    raw = [d for d in RAW_TEX if d in math["text"]]
    assert not raw, f"{page}: raw TeX delimiters {raw} in the visible text (MathJax not loaded?)"


@pytest.mark.parametrize("page", PAGES)
def test_images_have_loaded(visit, page):
    v = visit(page)
    broken = v.page.evaluate(BROKEN_IMAGES_JS)
    assert not broken, f"{page}: images that did not load: {broken}"
    if _is_notebook(page):
        count = v.page.evaluate("() => document.querySelectorAll('main img').length")
        assert count > 0, f"{page}: a notebook page without a single figure (not executed?)"


@pytest.mark.parametrize("page", PAGES)
def test_saved_widgets_render(visit, page):
    v = visit(page)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        v.page.wait_for_function(
            f"() => ({WIDGETS_JS})().rendered >= ({WIDGETS_JS})().views", timeout=15_000
        )
    except PlaywrightTimeout:  # the assertion below says what is missing
        pass
    widgets = v.page.evaluate(WIDGETS_JS)
    assert widgets["rendered"] >= widgets["views"], f"{page}: widgets not rendered: {widgets}"


@pytest.mark.parametrize("page", NOTEBOOK_PAGES)
def test_colab_button_opens_this_notebook(visit, page):
    expected = _colab_link(page)
    colab = _config()["launch_buttons"]["colab_url"].rstrip("/")
    links = visit(page).page.eval_on_selector_all(
        f'a[href^="{colab}"]', "links => links.map((a) => a.href)"
    )
    assert expected in links, f"{page}: Colab link should be {expected}, found {links}"


# What the output area around a slider shows: each image's source and whether it is visible.
PICTURE_JS = """(area) => Array.from(area.querySelectorAll("img"))
  .map((img) => [img.currentSrc || img.src, img.offsetParent !== null])"""


def _picture(area) -> list[tuple[str, bool]]:
    """(short digest of the source, visible) of each image in the area."""
    return [
        (hashlib.sha1(src.encode()).hexdigest()[:12], shown)
        for src, shown in area.evaluate(PICTURE_JS)
    ]


MOVE_JS = """(s) => {
  const top = Number(s.max || 100), bottom = Number(s.min || 0);
  s.value = Number(s.value) === top ? bottom : top;
  s.dispatchEvent(new Event("input", {bubbles: true}));
  s.dispatchEvent(new Event("change", {bubbles: true}));
}"""


@pytest.mark.parametrize("page", PAGES)
def test_static_sliders_change_the_picture(visit, page):
    v = visit(page)
    sliders = v.page.locator("main input[type=range]")
    if sliders.count() == 0:
        pytest.skip(f"{page}: no static slider on this page")
    for i in range(min(sliders.count(), 3)):
        slider = sliders.nth(i)
        area = slider.locator("xpath=ancestor::*[contains(@class, 'output')][1]")
        area = area if area.count() else slider.locator("xpath=..")
        before = _picture(area)
        assert before, f"{page}: slider {i} has no image beside it"
        slider.evaluate(MOVE_JS)
        v.page.wait_for_timeout(200)
        after = _picture(area)
        assert after != before, f"{page}: moving slider {i} did not change the image"
        assert not v.page.evaluate(BROKEN_IMAGES_JS), f"{page}: slider {i} shows a broken image"
