"""The website, rendered from the session's smoke executions and opened in headless Chromium,
with the network cut off.

On each chapter page: every equation typeset by the bundled MathJax 3, with no TeX error, none
spilling out of the text column, no raw `$$` or `\\(` left; at least one figure, the Colab link,
and the site's search finds the chapter by its title; the same equation checks on the book's own
pages that hold equations. Without Chromium the test skips and says so, except in CI (CI=true),
where it must run.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from conftest import execute_smoke, wait_for_smoke

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
CHAPTERS = [entry["file"] for part in TOC["parts"] for entry in part["chapters"]
            if entry["file"].startswith("notebooks/")]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.site


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/usr/bin/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="module")
def site(build_book, smoke_book) -> Path:
    """Render the site from this session's smoke executions (tests/test_notebooks.py); a chapter
    not executed yet in this session (e.g. when this file runs alone) is executed now."""
    out = smoke_book["out"]
    wait_for_smoke(smoke_book)
    execute_smoke(build_book, smoke_book, build_book.chapters(), reuse=True)
    failed = [name for name, run in smoke_book["runs"].items() if not run["succeeded"]]
    assert not failed, f"chapters failed to execute, so the site cannot be built: {failed}"
    page = build_book.results_page(smoke_book["runs"], out / "_build" / "results", "smoke")
    code = build_book.render(out, {"book/results.md": page})
    text, missing = build_book.table(smoke_book["runs"], out / "_build" / "results")
    print(text)
    assert code == 0, f"the site build failed (exit code {code}); see the captured output"
    assert not missing, f"chapters that stated no result: {missing}"
    return out / "_build" / "html"


def test_every_chapter_page_was_built_with_its_result(site):
    results = site.parent / "results"
    for chapter in CHAPTERS:
        assert (site / f"{chapter}.html").is_file(), chapter
        record = json.loads((results / f"{Path(chapter).name}.json").read_text())
        assert record["mode"] == "smoke"


def test_results_page_lists_every_chapter_with_its_recorded_value(site, build_book):
    """The generated scoreboard: one row per chapter, the value each chapter recorded, and the
    smoke-mode warning (this build's results are not checked)."""
    page = (site / "book" / "results.html").read_text()
    assert "This build ran the chapters in smoke mode" in page
    for chapter in CHAPTERS:
        name = Path(chapter).name
        record = json.loads((site.parent / "results" / f"{name}.json").read_text())
        row = re.search(rf"<tr[^>]*>\s*<td[^>]*>.*?{re.escape(name)}.*?</tr>", page, re.S)
        assert row, f"{name}: no row on the results page"
        assert build_book.format_value(record["value"]) in row.group(0), name


def test_no_page_loads_anything_from_another_host(site):
    remote = re.compile(r"<(?:script|link|img)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"[^>]*>", re.I)
    offenders = {}
    for page in site.rglob("*.html"):
        tags = [t for t in remote.findall(page.read_text(errors="replace"))
                if not re.search(r"rel=\"(?:canonical|alternate)\"", t)]
        if tags:
            offenders[str(page.relative_to(site))] = tags[:3]
    assert not offenders, offenders
    assert (site / "_static" / "mathjax" / "tex-chtml.js").is_file()


@pytest.fixture(scope="module")
def browser(site):
    executable = chromium_path()
    if executable is None:
        message = ("Chromium not found (looked at $CHROMIUM, PATH and /usr/bin/chromium); "
                   "install it (Debian: apt-get install chromium) to run the browser checks")
        if os.environ.get("CI") == "true":
            pytest.fail(message + " -- required in CI")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        context = chromium.new_context()
        blocked: list[str] = []

        def only_local(route):  # the site must work offline: refuse every other host
            if route.request.url.startswith(base):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        context.route("**/*", only_local)
        yield context, base, blocked
        chromium.close()
    server.shutdown()


VISIBLE_TEXT = """() => {
    const article = document.querySelector('article') || document.body;
    const copy = article.cloneNode(true);
    copy.querySelectorAll('pre, code, script, mjx-container').forEach(e => e.remove());
    return copy.innerText;
}"""
# MathJax 3 resolves startup.promise once its first typesetting pass is over (or rejects it).
MATHJAX_STARTED = "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
MATHJAX_DONE = "() => MathJax.startup.promise.then(() => 'typeset', error => 'failed: ' + error)"
# A displayed equation wider than the column must scroll inside it, not spill over its edges
# (at Playwright's default 1280 x 720 window the text column is about 620 px wide).
MATH_STATE = """() => {
    const math = [...document.querySelectorAll('article .math')];
    const column = document.querySelector('article').getBoundingClientRect();
    const spills = [...document.querySelectorAll('article div.math mjx-container')].filter(c => {
        const box = c.getBoundingClientRect();
        return box.left < column.left - 1 || box.right > column.right + 1; });
    return {equations: math.length,
            rendered: math.filter(e => e.querySelector('mjx-container')).length,
            errors: [...document.querySelectorAll('mjx-merror')]
                .map(e => e.getAttribute('data-mjx-error') || e.textContent).slice(0, 5),
            spilling: spills.map(c => c.parentElement.textContent.trim().slice(0, 60))};
}"""


def read_math(page) -> dict:
    """Wait for MathJax's first pass on ``page``; what it left (MATH_STATE, and ``typeset``:
    'typeset' or why not)."""
    page.wait_for_function(MATHJAX_STARTED, polling=250, timeout=180_000)
    typeset = page.evaluate(MATHJAX_DONE)
    return dict(page.evaluate(MATH_STATE), typeset=typeset)


def check_math(name: str, math: dict) -> None:
    assert math["typeset"] == "typeset", f"{name}: MathJax {math['typeset']}"
    assert math["equations"] > 0, f"{name}: no equation on the page"
    assert math["rendered"] == math["equations"], f"{name}: equations MathJax left untypeset: {math}"
    assert not math["errors"], f"{name}: MathJax reports TeX errors: {math['errors']}"
    assert not math["spilling"], f"{name}: equations spill out of the text column: {math['spilling']}"


@pytest.fixture(scope="module")
def chapter_pages(browser) -> dict:
    """Every chapter page opened at once (so their equations typeset in parallel), each read once
    MathJax has finished: what the page shows, for the per-chapter checks below."""
    context, base, blocked = browser
    pages, errors = {}, {}
    for chapter in CHAPTERS:
        page = context.new_page()
        errors[chapter] = []
        page.on("pageerror", lambda e, c=chapter: errors[c].append(str(e)))
        page.goto(base + f"{chapter}.html", wait_until="commit")
        pages[chapter] = page
    seen = {}
    for chapter, page in pages.items():
        page.bring_to_front()  # a background tab's timers are throttled
        page.wait_for_load_state("load", timeout=180_000)
        math = read_math(page)
        repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
        colab = (f"https://colab.research.google.com/github/{repo}/blob/"
                 f"{CONFIG['repository']['branch']}/{chapter}.ipynb")
        seen[chapter] = {
            "math": math,
            "text": page.evaluate(VISIBLE_TEXT),
            "figures": page.evaluate("""() => [...document.querySelectorAll('article img')]
                .filter(img => img.complete && img.naturalWidth > 0).length"""),
            "colab": colab, "colab_links": page.locator(f'a[href="{colab}"]').count(),
            "title": page.locator("article h1").first.inner_text(),
            "errors": errors[chapter],
        }
        page.close()
    return seen


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda c: Path(c).name)
def test_chapter_page_in_a_browser(browser, chapter_pages, chapter):
    context, base, blocked = browser
    name = Path(chapter).name
    seen = chapter_pages[chapter]
    check_math(name, seen["math"])
    text = seen["text"]
    for raw in ("$$", "\\(", "\\[", "\\begin{"):
        around = text[max(text.find(raw) - 80, 0):][:200]
        assert raw not in text, f"{name}: raw math {raw!r} left in the page: ...{around}"
    assert seen["figures"] >= 1, f"{name}: no figure on the page"
    assert seen["colab_links"] >= 1, f"{name}: no Colab link to {seen['colab']}"

    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    words = [w for w in re.findall(r"[A-Za-z]{4,}", seen["title"])]
    page.goto(base + "search.html?q=" + "+".join(words), wait_until="load")
    page.wait_for_function("() => document.querySelector('#search-results .search-summary, "
                           "#search-results p')", timeout=30_000)
    hits = page.eval_on_selector_all("#search-results ul.search li a", "links => links.map(a => a.href)")
    assert any(f"{chapter}.html" in h for h in hits), f"{name}: searching {words} found only {hits[:5]}"
    assert not seen["errors"] + errors, f"{name}: JavaScript errors: {seen['errors'] + errors}"
    assert not blocked, f"pages tried to reach other hosts: {sorted(set(blocked))[:5]}"
    page.close()


PROSE_WITH_MATH = [f"book/{page.stem}" for page in sorted((ROOT / "book").glob("*.md"))
                   if re.search(r"\$[^$\n]+\$", page.read_text())]


@pytest.mark.parametrize("page_name", PROSE_WITH_MATH)
def test_prose_page_equations_in_a_browser(browser, page_name):
    """The book's own pages with equations (notation, scaling out): the same MathJax checks."""
    context, base, blocked = browser
    page = context.new_page()
    page.goto(base + f"{page_name}.html", wait_until="load")
    math = read_math(page)
    page.close()
    check_math(page_name, math)
