"""The code blocks of README.md and docs/**/*.md, with the HTML comments that say how the tests use them.

- ``<!-- example: NAME (...) -->`` before a ``python`` block: a test of its own runs it on real data
  (:func:`example`); names are unique across the README and the docs.
- ``<!-- skip: REASON -->`` before a ``python`` block: a fragment that cannot run alone; its test is skipped with
  that reason.
- ``<!-- output -->`` before a ``text`` block: what the ``python`` block before it prints, exactly.

Every other ``python`` block runs as it is written (tests/test_docs_examples.py).
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(
    r"^(?:<!-- (?P<marker>[^\n]*?) -->\n)?```(?P<language>[^\n`]*)\n(?P<code>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL
)


def documents() -> list[Path]:
    """The README and every Markdown page of the docs site (not its build)."""
    pages = [path for path in (ROOT / "docs").rglob("*.md") if "_build" not in path.relative_to(ROOT / "docs").parts]
    return [ROOT / "README.md", *sorted(pages)]


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its language, its code, the marker before it, and its printed output."""

    path: Path
    line: int
    language: str
    code: str
    marker: Optional[str]
    output: Optional[str] = None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> Optional[str]:
        if self.marker is not None and self.marker.startswith("skip:"):
            return self.marker.removeprefix("skip:").strip()
        return None

    @property
    def example_name(self) -> Optional[str]:
        if self.marker is not None and self.marker.startswith("example:"):
            return self.marker.removeprefix("example:").split()[0]
        return None


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, each ``python`` block with the output marked after it, if any."""
    text = path.read_text()
    found: list[Block] = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start("code"))  # the fence's line, 1-based
        block = Block(path, line, match["language"].strip(), match["code"], match["marker"])
        if block.marker == "output" and found and found[-1].language == "python":
            previous = found.pop()
            found.append(Block(previous.path, previous.line, "python", previous.code, previous.marker, block.code))
        found.append(block)
    return found


def python_blocks() -> list[Block]:
    """Every ``python`` block of the README and the docs."""
    return [block for path in documents() for block in blocks(path) if block.language == "python"]


def example(name: str) -> dict[str, Any]:
    """Execute the block marked ``<!-- example: NAME ... -->`` and return the names it defines."""
    matches = [block for block in python_blocks() if block.example_name == name]
    assert len(matches) == 1, f"{len(matches)} blocks are marked as example {name!r}, not one"
    (block,) = matches
    namespace: dict[str, Any] = {"__name__": f"docs_example_{name.replace('-', '_')}"}
    exec(compile(block.code, f"{block.where} (example {name})", "exec"), namespace)
    return namespace
