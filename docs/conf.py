"""Sphinx configuration: the guide in MyST Markdown, the API reference from channel.py."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this repository's channel.py

import channel  # noqa: E402

project = "yieldchannel"
author = "the yieldchannel developers"
copyright = "the yieldchannel developers"
release = version = channel.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3  # `page.md#a-heading` links, as GitHub makes them
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = True  # every reference must resolve, or the build (-W) fails
# ... but for the type parameters of the generic classes, and the standard library's
# types, which the build does not fetch (it runs without a network).
TYPE_PARAMETERS = ["T", "T_co", "T_contra", "R", "R_co", "R_contra", "V", "Reply", "P"]
STANDARD_TYPES = ["TracebackType", "AbstractAsyncContextManager"]
nitpick_ignore = [("py:class", name) for name in [*TYPE_PARAMETERS, *STANDARD_TYPES]]

html_theme = "furo"
html_title = f"yieldchannel {release}"
html_static_path: list[str] = []
