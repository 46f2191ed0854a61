"""Sphinx configuration of the book (`make book`): MyST-NB renders the committed notebooks, never
executing them.

The sources are staged by docs/build.py into _build/src/ (notebooks, the landing page, the API
page); this file is read from docs/ (sphinx-build -c docs). Everything the pages load is served from
the site itself: MathJax 3 is copied from the sphinx-mathjax-offline wheel, the theme bundles its
fonts and icons, and widget JavaScript from a CDN is switched off (docs/build.py renders saved
progress bars as static HTML instead).
"""

import importlib.metadata
import re
import shutil
import sys
from pathlib import Path

project = "vae-notebooks"
author = "the vae-notebooks authors"
copyright = "the vae-notebooks authors"
html_title = "The VAE from first principles"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
]

root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
suppress_warnings = []

# Notebooks: render the committed outputs, never execute.
nb_execution_mode = "off"
nb_ipywidgets_js = {}  # no require.js / widget manager from a CDN
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3


sys.path.insert(0, str(Path(__file__).resolve().parent))  # docs/book_anchors.py
myst_heading_slug_func = (
    "book_anchors.jupyterlab_anchor"  # JupyterLab's anchors: notebook links work unchanged
)
nb_code_prompt_show = "Show code cell {type}"
nb_code_prompt_hide = "Hide code cell {type}"

# The library page: Google-style docstrings ("Args:", "Returns:"), in source order.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
default_role = "literal"  # `name` in a docstring is code
highlight_language = (
    "none"  # a docstring's literal block is plain text (notebook cells say their language)
)

# MathJax 3, served from _static/mathjax (copied below), never from another host.
mathjax_path = "mathjax/tex-chtml.js"
MATHJAX_PARTS = ["tex-chtml.js", "output/chtml", "input/tex/extensions", "ui"]


def mathjax_dir():
    dist = importlib.metadata.distribution("sphinx-mathjax-offline")
    return Path(dist.locate_file("sphinx-mathjax-offline/static/mathjax"))


def copy_mathjax(app, exc):
    if exc is not None or app.builder.format != "html":
        return
    src, dst = mathjax_dir(), Path(app.outdir) / "_static" / "mathjax"
    for part in MATHJAX_PARTS:
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, dirs_exist_ok=True)
        else:
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / part, dst / part)


def drop_namedtuple_aliases(app, what, name, obj, options, lines):
    """A NamedTuple field's generated docstring ("Alias for field number 0") says nothing to a
    reader."""
    if len(lines) == 1 and lines[0].startswith("Alias for field number"):
        lines.clear()


STRUCTURED = re.compile(r"^\s*([-*+] |\d+[.)] |#\. |:[^:]+:|\.\. |>>>)")


def indent_of(line):
    return len(line) - len(line.lstrip())


def plain_text_blocks(app, what, name, obj, options, lines):
    """vaelib's docstrings are plain text: an indented line under a paragraph is a displayed formula
    or a list, which reStructuredText reads as an error ("Unexpected indentation") or as a
    definition list that runs its lines together (and must end in a blank line). Show such a block
    as written: a literal block (after an otherwise empty "::" paragraph, which shows nothing),
    ended by a blank line. Lists, fields (napoleon's Args/Returns), directives and doctests are left
    alone."""
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and nxt.strip()
            and indent_of(nxt) > indent_of(line)
            and not STRUCTURED.match(line)
            and not line.rstrip().endswith("::")
        ):
            block = i + 1
            while block < len(lines) and (
                not lines[block].strip() or indent_of(lines[block]) > indent_of(line)
            ):
                block += 1
            out += ["", " " * indent_of(line) + "::", ""]
            out += lines[i + 1 : block]
            if block < len(lines) and lines[block - 1].strip():
                out.append("")
            i = block
            continue
        i += 1
    lines[:] = out


INLINE_LITERAL = re.compile(r"(``.*?``|`[^`]*`)")


def escape_bars(app, what, name, obj, options, lines):
    """vaelib's docstrings write math as plain text: |x| is an absolute value, not a
    reStructuredText substitution. Escape every | outside literal blocks (after "::") and `inline
    code`, where a backslash would show; a docstring that means a table or a substitution would have
    to say so in a literal block."""
    literal_indent = None
    for i, line in enumerate(lines):
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None and line.strip() and indent <= literal_indent:
            literal_indent = None
        if literal_indent is None:
            lines[i] = "".join(
                part if INLINE_LITERAL.fullmatch(part) else part.replace("|", "\\|")
                for part in INLINE_LITERAL.split(line)
            )
            if line.rstrip().endswith("::"):
                literal_indent = indent


def setup(app):
    app.connect("build-finished", copy_mathjax)
    app.connect("autodoc-process-docstring", drop_namedtuple_aliases)
    app.connect("autodoc-process-docstring", plain_text_blocks)
    app.connect("autodoc-process-docstring", escape_bars)


# Theme: sphinx-book-theme with previous/next links at the foot of every page, a search box, no
# launch buttons (they point to other hosts) and no repository buttons.
html_theme = "sphinx_book_theme"
html_theme_options = {
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "home_page_in_toc": True,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # the search field sits in the sidebar; no second one in a header bar
}
html_static_path = ["_static"]
html_css_files = ["book.css"]
html_copy_source = False
html_show_search_summary = (
    False  # summaries are fetched, which file:// pages may not do: the search page would fail
)
html_show_sourcelink = False
html_last_updated_fmt = None
