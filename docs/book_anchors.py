"""Heading anchors for the book (an importable module, so Sphinx can pickle the setting that names
it)."""


def jupyterlab_anchor(text):
    """A heading's anchor as JupyterLab makes it (spaces to hyphens, case and punctuation kept), so
    the links between notebooks
    (04_the_kl_identity.ipynb#6.-When-no-Gaussian-is-exact:-the-non-linear-model) work here too."""
    return text.strip().replace(" ", "-")
