"""Build the book: stage the sources into _build/src/, then run Sphinx (warnings are errors) into
_build/html/.

    python docs/build.py            # what `make book` runs python docs/build.py --out DIR  # build
    somewhere else (DIR/src, DIR/html); the tests use a temporary folder

Staging reads only committed files and never executes a notebook:
- notebooks/[0-9][0-9]_*.ipynb, in file-name order (a 00_start_here joins the path by existing),
  each copied with its outputs. In the copy, a code cell whose source is hidden in its metadata
  (`"jupyter": {"source_hidden":
  true}`) or that is an nbval check cell (`# NBVAL_CHECK_OUTPUT`) gets MyST-NB's `hide-input` tag:
  its code is folded behind "Show code cell source". Hidden outputs get `hide-output`. A widget
  output (a tqdm bar) is replaced by a static HTML picture of the widget's saved final state, since
  the widget JavaScript would come from another host.
- docs/index.md, the landing page, with two generated parts: the study notes' checklist table from
  README.md (links to notebooks and figures point to the book's pages) and the reading path.
- the library page, api.md: one section per public module of vaelib, from its docstrings (autodoc).
Files are rewritten only when their content changes, so Sphinx rebuilds only what changed.
"""

import argparse
import html
import json
import pkgutil
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
NOTEBOOK_GLOB = "[0-9][0-9]_*.ipynb"
CHECKLIST_HEADING = "## The study notes' checklist"
CHECK_CELL_MARK = "# NBVAL_CHECK_OUTPUT"
NOTEBOOK_LINK = re.compile(r"(\]\(|href=[\"'])(\d\d_\w+)\.ipynb")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def notebooks():
    """The series in reading order."""
    return sorted((REPO / "notebooks").glob(NOTEBOOK_GLOB))


def title(nb):
    """The text of the notebook's first heading (what the page is called)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    raise ValueError("notebook has no heading")


# ----------------------------------------------------------------------------------------------
# notebooks
def add_tag(cell, tag):
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


def widget_html(model_id, state):
    """Static HTML for a saved widget: tqdm's bar (an HBox of HTML label, FloatProgress, HTML
    label) as a <progress> element between its two labels; anything else as a note that it is
    interactive."""
    model = state.get(model_id)
    if model is None:
        return None
    name, values = model["model_name"], model["state"]
    if name == "HBoxModel":
        parts = [
            widget_html(child.removeprefix("IPY_MODEL_"), state)
            for child in values.get("children", [])
        ]
        if any(p is None for p in parts):
            return None
        return '<div class="book-widget book-widget-hbox">' + "".join(parts) + "</div>"
    if name in ("HTMLModel", "LabelModel"):
        text = values.get("value", "")
        return f"<span>{text if name == 'HTMLModel' else html.escape(text)}</span>"
    if name in ("FloatProgressModel", "IntProgressModel"):
        lo, hi, value = values.get("min", 0), values.get("max", 100), values.get("value", 0)
        style = values.get("bar_style") or "info"
        return (
            f'<progress class="book-widget-progress book-widget-{html.escape(style)}" '
            f'max="{hi - lo}" value="{value - lo}"></progress>'
        )
    return None


def markdown_in_details(source):
    """Blank lines after `<summary>…</summary>` and before `</details>`, so that MyST reads the
    solution between them as Markdown (math, code, emphasis) instead of passing it on as raw HTML,
    as CommonMark does with an HTML block that runs on without a blank line. JupyterLab shows both
    forms the same way."""
    source = re.sub(r"(</summary>)[ \t]*\n(?=[ \t]*\S)", r"\1\n\n", source)
    return re.sub(r"(\S[^\n]*)\n([ \t]*</details>)", r"\1\n\n\2", source)


def stage_notebook(path):
    """The notebook's JSON as the book shows it (see the module docstring)."""
    return stage_notebook_json(json.loads(path.read_text(encoding="utf-8")))


def stage_notebook_json(nb):
    """stage_notebook on a notebook already read (a dict, changed in place)."""
    state = nb.get("metadata", {}).pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb["cells"]:
        meta = cell.get("metadata", {})
        if cell["cell_type"] == "markdown":
            cell["source"] = markdown_in_details("".join(cell["source"]))
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if meta.get("jupyter", {}).get("source_hidden") or CHECK_CELL_MARK in source:
            add_tag(cell, "hide-input")
        if meta.get("jupyter", {}).get("outputs_hidden"):
            add_tag(cell, "hide-output")
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            for mime in (
                "text/markdown",
                "text/html",
            ):  # an output's links to notebooks: to their pages
                if mime in data:
                    text = "".join(data[mime]) if isinstance(data[mime], list) else data[mime]
                    data[mime] = NOTEBOOK_LINK.sub(r"\1\2.html", text)
            if WIDGET_VIEW in data:
                static = widget_html(data.pop(WIDGET_VIEW).get("model_id", ""), state)
                if static is None:
                    static = (
                        '<p class="book-widget-note">An interactive widget: run the notebook in '
                        "JupyterLab (<code>make lab</code>) to use it.</p>"
                    )
                data["text/html"] = static
                data.pop("text/plain", None)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


# ----------------------------------------------------------------------------------------------
# landing page
def checklist(readme, pages):
    """The README's checklist section (its intro and table), with links pointing into the book: a
    notebook link to its page, titled by the notebook's heading; a figure link (figures/NN_name.png)
    to the page of notebook NN, which draws it, as "NN name" (so a narrow column can wrap it).

    In a table row, `\\|` is an escaped pipe to GitHub and to MyST alike, also inside $...$, where
    the author meant LaTeX's double bar ‖: there it becomes \\Vert."""
    start = readme.find(CHECKLIST_HEADING)
    if start < 0:
        raise SystemExit(
            f"README.md has no section starting with {CHECKLIST_HEADING!r}: the landing page needs "
            f"it"
        )
    body = readme[start:].split("\n", 1)[1]
    end = re.search(r"^## ", body, flags=re.M)
    body = body[: end.start()] if end else body
    by_number = {p.name[:2]: p.name for p in pages}

    def figure_link(match):
        name = match.group(1)
        if name[:2] not in by_number:
            raise SystemExit(
                f"README.md links to figures/{name}.png, and no notebook {name[:2]}_* exists"
            )
        return f"[{name.replace('_', ' ')}](notebooks/{by_number[name[:2]]})"

    body = re.sub(r"\[[^\]]*\]\((notebooks/[^)]+\.ipynb)\)", r"[](\1)", body)
    body = re.sub(r"\[[^\]]*\]\(figures/([^)]+?)\.png\)", figure_link, body)
    body = re.sub(r"(?<!\\)\$[^$\n]+?\$", lambda m: m.group(0).replace("\\|", "\\Vert "), body)
    return body.strip() + "\n"


def reading_path(pages):
    lines = [f"{i}. [](notebooks/{p.name})" for i, p in enumerate(pages, start=1)]
    return "\n".join(lines) + "\n"


def landing_page(pages):
    template = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    parts = {"checklist": checklist(readme, pages), "reading-path": reading_path(pages)}
    for name, text in parts.items():
        marker = f"<!-- book: {name} -->"
        if marker not in template:
            raise SystemExit(f"docs/index.md lacks the marker {marker}")
        template = template.replace(marker, text.rstrip("\n"))
    return template


# ----------------------------------------------------------------------------------------------
# library page
def public_modules():
    import vaelib

    return sorted(
        m.name for m in pkgutil.iter_modules(vaelib.__path__) if not m.name.startswith("_")
    )


def api_page():
    lines = [
        "# The library: `vaelib`",
        "",
        "Every notebook imports its computations from `vaelib`; this page is its public API, from "
        "the docstrings.",
        "Conventions: `logvar` is log σ²; batch dimensions come first; per-example values are "
        "summed over their",
        "event dimensions and are in nats; float32 and float64 both work.",
        "",
        "```{eval-rst}",
        ".. automodule:: vaelib",
        "   :no-members:",
        "",
        ".. autofunction:: vaelib.quick_mode",
        "```",
        "",
    ]
    for name in public_modules():
        lines += [
            f"## `vaelib.{name}`",
            "",
            "```{eval-rst}",
            f".. automodule:: vaelib.{name}",
            "```",
            "",
        ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# staging, build
def write_if_changed(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def stage(src):
    pages = notebooks()
    if not pages:
        raise SystemExit(f"no notebooks match notebooks/{NOTEBOOK_GLOB}")
    wanted = {src / "index.md": landing_page(pages), src / "api.md": api_page()}
    for path in pages:
        wanted[src / "notebooks" / path.name] = stage_notebook(path)
    for path, text in wanted.items():
        write_if_changed(path, text)
    for figure in sorted(
        (REPO / "figures").glob("*.png")
    ):  # notebooks show some as ![...](../figures/NN_name.png)
        target = src / "figures" / figure.name
        wanted[target] = None
        if not target.exists() or target.read_bytes() != figure.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(figure, target)
    for path in src.rglob("*"):  # a notebook renamed or removed since the last build
        if path.is_file() and path not in wanted:
            path.unlink()
    return pages


def build(out):
    from sphinx.cmd.build import build_main

    src, html_dir = out / "src", out / "html"
    stage(src)
    # -W: warnings are errors; --keep-going: report all of them; -q: only warnings and errors.
    return build_main(
        [
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-c",
            str(DOCS),
            "-d",
            str(out / "doctrees"),
            str(src),
            str(html_dir),
        ]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "_build", help="build folder (default: _build)"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    status = build(args.out.resolve())
    if status == 0:
        index = args.out.resolve() / "html" / "index.html"
        print(f"book built in {time.perf_counter() - start:.0f} s: open {index}")
    return status


if __name__ == "__main__":
    sys.exit(main())
