"""Open every page of the built site in headless Chromium, screenshot it, and check that it rendered.

``python docs/tools/check_browser.py HTML_DIR [--screenshots DIR]`` (default ``HTML_DIR/../screenshots``). It drives
the system's Chromium (Debian's ``chromium`` package; ``$CHROMIUM`` names another binary) with Playwright, which
downloads no browser of its own. A page fails when, after its ``load`` event (and MathJax's typesetting, where it has
formulas):

- an ``<img>`` has not loaded (``naturalWidth`` 0), or a file of the site that the page asked for could not be read;
- a stylesheet did not load, or the theme's layout is missing (the page then renders as unstyled text);
- it has no ``<h1>``, no title, or almost no text;
- Markdown, MyST or reStructuredText shows unrendered in its text (:data:`UNRENDERED`: ```` ``` ````, ``:::``,
  ``](``, ``.. ``, ``:param``, ...);
- a formula is left as TeX (a ``.math`` element without MathJax's output);
- a script raised an error.

Exit status 1, with one line per failure, if any page fails; each page's full-length screenshot is written either way.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome")
SKIPPED = ("_static", "_sources", "_images")  # assets, not pages
# Markdown, MyST or reStructuredText (a docstring parsed as Markdown) that shows as text
UNRENDERED = ("```", ":::", "{toctree}", "{eval-rst}", "{include}", "](", "<!--", ".. ", ":param ", ":class:", ":math:")
# Sphinx's generated pages: their content is a list, or comes from a script
GENERATED = ("genindex.html", "search.html")

INSPECT = """() => {
    const images = [...document.images].map(image => ({
        src: image.getAttribute('src'), loaded: image.complete && image.naturalWidth > 0,
    }));
    const sheets = [...document.querySelectorAll('link[rel="stylesheet"]')].map(link => ({
        href: link.getAttribute('href'), loaded: link.sheet !== null,
    }));
    const main = document.querySelector('article') || document.body;
    const prose = main.cloneNode(true);
    prose.querySelectorAll('pre, code, script, style, mjx-container').forEach(element => element.remove());
    const heading = document.querySelector('article h1, main h1, h1');
    const math = [...document.querySelectorAll('.math')];
    return {
        title: document.title,
        h1: heading ? heading.innerText.trim() : '',
        text: prose.innerText,
        images,
        sheets,
        themed: getComputedStyle(document.body).getPropertyValue('--color-background-primary').trim() !== '',
        untypeset: math.filter(element => element.querySelector('mjx-container') === null).length,
        formulas: math.length,
    };
}"""
WAIT_FOR_MATHJAX = """async () => {
    if (document.querySelector('.math') === null) return;
    const ready = () => window.MathJax && window.MathJax.startup && window.MathJax.startup.promise;
    for (let tries = 0; tries < 100 && !ready(); tries++) await new Promise(resolve => setTimeout(resolve, 50));
    if (window.MathJax && window.MathJax.startup) await window.MathJax.startup.promise;
}"""


def chromium() -> str:
    """The Chromium binary: ``$CHROMIUM``, or the first of :data:`CHROMIUM_CANDIDATES` that exists."""
    for candidate in (os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and (Path(candidate).is_file() or shutil.which(candidate)):
            return str(Path(candidate) if Path(candidate).is_file() else shutil.which(candidate))
    raise FileNotFoundError("no Chromium found: apt-get install -y chromium, or set $CHROMIUM")


def pages(html: Path) -> list[Path]:
    """The HTML pages of the built site, assets left out."""
    return [path for path in sorted(html.rglob("*.html")) if not set(path.relative_to(html).parts) & set(SKIPPED)]


def problems_of(
    report: dict[str, Any], errors: list[str], failed_files: list[str], generated: bool = False
) -> list[str]:
    """What is wrong with a page, from :data:`INSPECT`'s report, its script errors and its unreadable files.

    A page that Sphinx generates (:data:`GENERATED`) is checked for its images, styles and scripts only.
    """
    found = [f"image not loaded: {image['src']}" for image in report["images"] if not image["loaded"]]
    found += [f"stylesheet not loaded: {sheet['href']}" for sheet in report["sheets"] if not sheet["loaded"]]
    found += [f"file of the site not read: {url}" for url in failed_files]
    found += [f"script error: {error}" for error in errors]
    if not report["themed"]:
        found.append("the theme's styles are not applied")
    if generated:
        return found
    if not report["title"] or not report["h1"]:
        found.append(f"no title or no <h1> (title {report['title']!r}, h1 {report['h1']!r})")
    if len(report["text"].split()) < 20:
        found.append(f"almost no text: {report['text'][:200]!r}")
    found += [f"unrendered {marker!r} in the text" for marker in UNRENDERED if marker in report["text"]]
    if report["untypeset"]:
        found.append(f"{report['untypeset']} of {report['formulas']} formulas not rendered by MathJax")
    return found


class _Events:
    """A page's script errors, and the files of the site it could not read (the internet is not asked for)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.failed: list[str] = []

    def script_error(self, error: Any) -> None:
        self.errors.append(str(error))

    def request_failed(self, request: Any) -> None:
        if request.url.startswith("file:"):
            self.failed.append(request.url)


def check(html: Path, screenshots: Path, binary: Optional[str] = None) -> dict[str, list[str]]:
    """Open, check and screenshot every page; return the problems by page (relative path), empty when all is well."""
    from playwright.sync_api import sync_playwright  # type: ignore[import-not-found,unused-ignore]

    screenshots.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[str]] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=binary or chromium(), args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for path in pages(html):
            name = str(path.relative_to(html))
            page = context.new_page()
            events = _Events()
            page.on("pageerror", events.script_error)
            page.on("requestfailed", events.request_failed)
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.evaluate(WAIT_FOR_MATHJAX)
            report = page.evaluate(INSPECT)
            screenshot = screenshots / (name.replace("/", "__").removesuffix(".html") + ".png")
            page.screenshot(path=str(screenshot), full_page=True)
            results[name] = problems_of(report, events.errors, events.failed, generated=name in GENERATED)
            page.close()
        browser.close()
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """Check the site; print one line per page, and one per problem."""
    parser = argparse.ArgumentParser(prog="python docs/tools/check_browser.py", description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path, help="the built site (its index.html)")
    parser.add_argument("--screenshots", type=Path, help="folder of the screenshots (default: HTML/../screenshots)")
    options = parser.parse_args(argv)
    if not (options.html / "index.html").exists():
        parser.error(f"{options.html} has no index.html: build the site first")
    screenshots = options.screenshots or options.html.resolve().parent / "screenshots"
    results = check(options.html, screenshots)
    for name, problems in results.items():
        print(f"{'ok  ' if not problems else 'FAIL'} {name}")
        for problem in problems:
            print(f"     {problem}")
    failed = sum(1 for problems in results.values() if problems)
    print(f"check_browser: {len(results)} pages, {failed} failed; screenshots in {screenshots}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
