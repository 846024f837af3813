"""Check every link of the built docs site and of the README, offline: ``python docs/tools/check_links.py HTML_DIR``.

Sphinx's ``linkcheck`` needs the internet; this needs nothing but the build and the checkout. It checks:

- in every page of the built site, every ``href`` and ``src`` that stays inside the site: the file it names exists,
  and its ``#anchor``, if any, is an ``id`` of that page;
- every link, in the site or in README.md and CONTRIBUTING.md, into the site's published base URL
  (:data:`DOCS_BASE`): it is mapped to the built page and checked the same way;
- every link to a file of the repository (:data:`REPOSITORY_BASE` + ``blob/main/`` or ``tree/main/``, or a relative
  link in CONTRIBUTING.md): the file exists in the checkout, and a ``#anchor`` into a Markdown file is one of its
  headings, as GitHub names them.

Other external links are counted, not followed. Exit status 1, with one line per broken link, if any is broken.
"""

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urldefrag

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS_BASE = "https://windowmetrics.readthedocs.io/en/latest/"
REPOSITORY_BASE = "https://github.com/windowmetrics/windowmetrics/"
MARKDOWN = ("README.md", "CONTRIBUTING.md")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)|(?<![(\[])(https?://[^\s)>*`]+)")
IGNORED_SCHEMES = ("mailto:", "javascript:", "data:", "tel:")


@dataclass
class Page:
    """The ids and the links of one HTML page."""

    ids: set[str] = field(default_factory=set)
    links: list[str] = field(default_factory=list)


class _PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, Optional[str]]]) -> None:
        values = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if values.get(name):
                self.page.ids.add(str(values[name]))
        for name in ("href", "src"):
            link = values.get(name)
            if link is not None and not (tag == "link" and values.get("rel") in ("preconnect", "dns-prefetch")):
                self.page.links.append(link)


def parse_page(path: Path) -> Page:
    """Read the ids and links of an HTML file."""
    parser = _PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.page


def github_anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file (lower case, punctuation dropped, spaces to -)."""
    anchors: set[str] = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        elif not in_fence and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


class Checker:
    """Checks links against the built site in ``html`` and the repository checkout in ``root``."""

    def __init__(self, html: Path, root: Path = ROOT) -> None:
        self.html, self.root = html.resolve(), root.resolve()
        self.pages = {path.resolve(): parse_page(path) for path in sorted(self.html.rglob("*.html"))}
        self.errors: list[str] = []
        self.counts = {"internal": 0, "anchors": 0, "site URL": 0, "repository": 0, "external, not followed": 0}

    def check_target(self, where: str, link: str, target: Path, fragment: str) -> None:
        """Check that ``target`` exists and, for a page of the site, has the id ``fragment``."""
        if target.is_dir() and target.resolve().is_relative_to(self.html):
            target = target / "index.html"
        if not target.exists():
            self.errors.append(f"{where}: {link}: no file {target}")
            return
        if not fragment:
            return
        self.counts["anchors"] += 1
        if target.suffix == ".html":
            page = self.pages.get(target.resolve()) or parse_page(target)
            if fragment not in page.ids:
                self.errors.append(f"{where}: {link}: {target.relative_to(self.html)} has no id {fragment!r}")
        elif target.suffix == ".md" and fragment not in github_anchors(target):
            self.errors.append(f"{where}: {link}: {target.relative_to(self.root)} has no heading {fragment!r}")

    def check_absolute(self, where: str, link: str) -> None:
        """Check a link into the site's base URL or the repository; count any other."""
        address, fragment = urldefrag(link)
        address = address.split("?")[0]  # furo's link to a page's source asks for ?plain=true
        if address.startswith(DOCS_BASE):
            self.counts["site URL"] += 1
            self.check_target(where, link, self.html / unquote(address.removeprefix(DOCS_BASE)), fragment)
            return
        for kind in ("blob/main/", "tree/main/"):
            if address.startswith(REPOSITORY_BASE + kind):
                self.counts["repository"] += 1
                path = unquote(address.removeprefix(REPOSITORY_BASE + kind))
                self.check_target(where, link, self.root / path, fragment)
                return
        self.counts["external, not followed"] += 1

    def check_site(self) -> None:
        """Check every link of every page of the built site."""
        for path, page in self.pages.items():
            where = str(path.relative_to(self.html))
            for link in page.links:
                if link.startswith(("http://", "https://")):
                    self.check_absolute(where, link)
                elif link.startswith("//"):
                    self.counts["external, not followed"] += 1
                elif not link.startswith(IGNORED_SCHEMES):
                    self.counts["internal"] += 1
                    address, fragment = urldefrag(link)
                    address = address.split("?")[0]
                    target = (path.parent / unquote(address)).resolve() if address else path
                    if not target.is_relative_to(self.html):
                        self.errors.append(f"{where}: {link}: leads out of the site")
                    else:
                        self.check_target(where, link, target, fragment)

    def check_markdown(self, path: Path) -> None:
        """Check the links of a Markdown file of the repository (README.md, CONTRIBUTING.md)."""
        where = str(path.relative_to(self.root))
        for match in MARKDOWN_LINK.finditer(path.read_text(encoding="utf-8")):
            link = match.group(1) or match.group(2)
            if link.startswith(("http://", "https://")):
                self.check_absolute(where, link.rstrip(".,;:"))
            elif not link.startswith(IGNORED_SCHEMES):
                self.counts["repository"] += 1
                address, fragment = urldefrag(link)
                self.check_target(where, link, (path.parent / unquote(address)) if address else path, fragment)


def main(argv: list[str]) -> int:
    """Check the site built in ``argv[0]`` and the repository's Markdown files; print a summary."""
    if len(argv) != 1 or not Path(argv[0], "index.html").exists():
        print("usage: python docs/tools/check_links.py HTML_DIR (a built site, with its index.html)", file=sys.stderr)
        return 2
    checker = Checker(Path(argv[0]))
    checker.check_site()
    for name in MARKDOWN:
        checker.check_markdown(ROOT / name)
    counts = ", ".join(f"{count} {kind}" for kind, count in checker.counts.items())
    print(f"check_links: {len(checker.pages)} pages and {', '.join(MARKDOWN)}: {counts}")
    for error in checker.errors:
        print(f"broken link: {error}")
    return 1 if checker.errors else 0


def broken_links(html: Path, root: Path = ROOT, markdown: Sequence[Path] = ()) -> list[str]:
    """The broken links of the site built in ``html`` and of the given Markdown files (for the tests)."""
    checker = Checker(html, root)
    checker.check_site()
    for path in markdown:
        checker.check_markdown(path)
    return checker.errors


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
