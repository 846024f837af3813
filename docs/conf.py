"""Sphinx configuration of the windowmetrics docs: the furo theme, MyST Markdown guides, API pages from docstrings.

Build with warnings as errors, from the repository root (CONTRIBUTING.md has the one command that also serves it):
``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import re
import sys
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the checkout's package, whether or not it is installed

import windowmetrics  # noqa: E402  (after the path above)

project = "windowmetrics"
author = "windowmetrics developers"
copyright = "the windowmetrics developers"
version = release = windowmetrics.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served with the site: formulas render without the internet
    "sphinx_copybutton",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "tools", "figures/*.py"]
root_doc = "index"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # `[text](page.md#a-heading)` links to headings, checked by the build and docs/tools

autodoc_typehints = "description"
autodoc_member_order = "bysource"
# The members that windowmetrics defines or documents, not those of torchmetrics' Metric or torch's Module.
autodoc_default_options = {"members": True, "inherited-members": "Metric,Module", "exclude-members": "extra_repr"}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"windowmetrics {release}"
html_static_path: list[str] = []
html_theme_options = {
    "source_repository": "https://github.com/windowmetrics/windowmetrics/",
    "source_branch": "main",
    "source_directory": "docs/",
}
html_show_sourcelink = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# A public class that SPEC.md names but the package of this checkout does not have yet (it is being added): its
# API page says so in a visible warning box instead of failing the build, and the build log names it. So does a
# figure that docs/figures/make_figures.py can only make with that class, while its PNG is absent; once the class is
# there, a missing PNG fails the build again.
AUTOCLASS = re.compile(r"```\{eval-rst\}\n\.\. autoclass:: windowmetrics\.(\w+)\n(?:   [^\n]*\n)*```", re.MULTILINE)
FIGURES_NEEDING = {"figures/spike.png": "WindowedMax"}
IMAGE = re.compile(r"!\[[^\]]*\]\((figures/[\w.-]+)\)")
_logger = logging.getLogger(__name__)


def _pending_classes(app: Sphinx, docname: str, source: list[str]) -> None:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if hasattr(windowmetrics, name):
            return match.group(0)
        _logger.info(f"windowmetrics.{name} is not in this checkout's package: {docname} shows a placeholder")
        return (
            f":::{{warning}}\n`windowmetrics.{name}` is not in the package this site was built from. The contract"
            " above is the design's (SPEC.md); this page shows its docstring once the class is released.\n:::"
        )

    def replace_figure(match: re.Match[str]) -> str:
        figure, needs = match.group(1), FIGURES_NEEDING.get(match.group(1))
        if needs is None or hasattr(windowmetrics, needs) or (Path(app.srcdir) / figure).exists():
            return match.group(0)
        _logger.info(f"{figure} needs windowmetrics.{needs}, which this package lacks: {docname} shows a placeholder")
        return (
            f":::{{warning}}\nThis figure is made by `python docs/figures/make_figures.py` with"
            f" `windowmetrics.{needs}`, which the package this site was built from does not have yet.\n:::"
        )

    source[0] = IMAGE.sub(replace_figure, AUTOCLASS.sub(replace, source[0]))


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the placeholder of API pages whose class is not in the package yet."""
    app.connect("source-read", _pending_classes)
    return {"parallel_read_safe": True}
