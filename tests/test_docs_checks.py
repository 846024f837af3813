"""The docs' own checks catch what they say they catch: docs/tools/check_links.py and docs/tools/check_browser.py.

Each runs on a small site written here, with one good page and the faults it must report. The browser check needs
Playwright (docs/requirements.txt) and Chromium (Debian's ``chromium``); without them it is skipped, saying so.
.ci/run runs this file again after installing both.
"""

import base64
import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
# A 1x1 PNG
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WORDS = " ".join(["words"] * 30)


def tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_tools_{name}", ROOT / "docs" / "tools" / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_link_check_reports_missing_pages_anchors_and_repository_files(tmp_path: Path) -> None:
    links = tool("check_links")
    site = tmp_path / "html"
    (site / "api").mkdir(parents=True)
    (site / "index.html").write_text(
        '<h1 id="top">Top</h1><a href="api/page.html#here">ok</a><a href="api/page.html#gone">anchor</a>'
        '<a href="nowhere.html">page</a><a href="#top">self</a><img src="figure.png">'
        f'<a href="{links.DOCS_BASE}api/page.html#here">site</a><a href="{links.DOCS_BASE}api/page.html#lost">site</a>'
        f'<a href="{links.REPOSITORY_BASE}blob/main/README.md">file</a>'
        f'<a href="{links.REPOSITORY_BASE}blob/main/NOPE.md?plain=true">file</a>'
        f'<a href="{links.REPOSITORY_BASE}blob/main/CONTRIBUTING.md#ci">heading</a>'
        f'<a href="{links.REPOSITORY_BASE}blob/main/CONTRIBUTING.md#no-such-heading">heading</a>'
        '<a href="https://example.org/">external</a><a href="mailto:someone@example.org">mail</a>'
    )
    (site / "api" / "page.html").write_text('<p id="here">here</p><a href="../index.html#top">back</a>')
    errors = links.broken_links(site, ROOT)
    assert len(errors) == 6, errors
    for fault in ("api/page.html#gone", "nowhere.html", "figure.png", "page.html#lost", "NOPE.md", "no-such-heading"):
        assert sum(fault in error for error in errors) == 1, (fault, errors)


def test_the_link_check_reads_markdown_links_and_bare_site_urls(tmp_path: Path) -> None:
    links = tool("check_links")
    site = tmp_path / "html"
    site.mkdir()
    (site / "index.html").write_text('<h1 id="a">A</h1>')
    markdown = tmp_path / "NOTES.md"
    markdown.write_text(
        f"# Notes\n\nSee {links.DOCS_BASE}.\nAnd [a]({links.DOCS_BASE}index.html#a), [b]({links.DOCS_BASE}gone.html),"
        " [notes](#notes), [missing](#missing), [file](NOTES.md), [other](OTHER.md).\n"
    )
    errors = links.broken_links(site, tmp_path, [markdown])
    assert len(errors) == 3, errors
    for fault in ("gone.html", "#missing", "OTHER.md"):
        assert sum(fault in error for error in errors) == 1, (fault, errors)


def chromium_or_skip() -> str:
    pytest.importorskip("playwright", reason="the browser check needs Playwright: pip install -r docs/requirements.txt")
    try:
        return str(tool("check_browser").chromium())
    except FileNotFoundError:
        pytest.skip("the browser check needs Chromium (apt-get install -y chromium)")


THEMED = "<style>body { --color-background-primary: white; }</style>"


def test_the_browser_check_passes_a_rendered_page_and_reports_a_missing_image_and_unrendered_text(
    tmp_path: Path,
) -> None:
    binary = chromium_or_skip()
    browser = tool("check_browser")
    site = tmp_path / "html"
    site.mkdir()
    (site / "pixel.png").write_bytes(PIXEL)
    page = "<title>{title}</title>{style}<body><article><h1>{title}</h1><p>{text}</p>{img}</article></body>"
    (site / "index.html").write_text(page.format(title="Good", style=THEMED, text=WORDS, img='<img src="pixel.png">'))
    (site / "broken.html").write_text(
        page.format(title="Broken", style=THEMED, text=f"{WORDS} ```python :::{{note}}", img='<img src="gone.png">')
    )
    (site / "bare.html").write_text(page.format(title="Bare", style="", text="a few words", img=""))
    results = browser.check(site, tmp_path / "shots", binary=binary)
    assert results["index.html"] == []
    broken = "\n".join(results["broken.html"])
    assert "image not loaded: gone.png" in broken
    assert "unrendered '```'" in broken
    assert "unrendered ':::'" in broken
    bare = "\n".join(results["bare.html"])
    assert "the theme's styles are not applied" in bare
    assert "almost no text" in bare
    assert {path.name for path in (tmp_path / "shots").iterdir()} == {"index.png", "broken.png", "bare.png"}


def test_chromium_is_found_where_debian_installs_it() -> None:
    if shutil.which("chromium") is None and not Path("/usr/lib/chromium/chromium").exists():
        pytest.skip("Chromium is not installed here")
    assert Path(tool("check_browser").chromium()).exists()
