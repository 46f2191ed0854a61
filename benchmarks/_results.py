"""RESULTS.md: each benchmark owns one section, from its "## " heading up to the next one."""

from vaelib import _atomic


def replace_section(path, heading, section):
    """Write `section` (which starts with `heading`) into the Markdown file `path` in place of the
    old section of that heading, or at the end if there is none; the other sections are kept as they
    are."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = section.rstrip("\n") + "\n"
    start = text.find(heading)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(heading))
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    _atomic.atomic_write(path, lambda f: f.write(text), mode="w")
