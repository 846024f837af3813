"""Sphinx configuration of the windowmetrics docs: the furo theme, MyST Markdown guides, API pages from docstrings.

Build with warnings as errors, from the repository root (CONTRIBUTING.md has the one command that also serves it):
``.venv/bin/sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

import sys
from pathlib import Path

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
