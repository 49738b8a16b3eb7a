"""Sphinx configuration: the user guides (Markdown) and an API reference built
from the docstrings. Build with ``python -m sphinx -W -b html docs build/docs``."""
import os
import sys

# `python -m sphinx` puts the current folder first on the import path; run from
# the checkout, autodoc would then import its uncompiled source folder instead
# of the installed package. Document what is installed.
_checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _checkout]

project = "fastconv"
author = "the fastconv authors"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "report/*.html"]

# Members in the order the source lists them, documented from their docstrings;
# names a module does not export through __all__ stay out of the reference.
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = True

# Links between the Markdown pages; headings get anchors for "page.md#heading".
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]

html_theme = "alabaster"
html_static_path: list = []
