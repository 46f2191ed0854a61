"""One figure style for the whole series, and `savefig(fig, name)` into the repository's figures/.

Call `use_style()` once at the top of a notebook. In quick mode (VAELIB_QUICK=1, set by `make test`)
`savefig` writes into a temporary folder outside the repository, so tests never dirty figures/.
"""

import os
import re
import tempfile
from pathlib import Path

import matplotlib

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "lines.linewidth": 1.8,
    "image.cmap": "viridis",
    "axes.prop_cycle": matplotlib.cycler(
        color=["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f"]
    ),
}

_NAME = re.compile(r"^[0-9]{2}_[A-Za-z0-9_\-]+$")


def use_style():
    """Apply the series' matplotlib style (rcParams) for the rest of the session."""
    matplotlib.rcParams.update(STYLE)


def figures_dir():
    """Where savefig writes: $VAELIB_FIGURES, else a temporary folder in quick mode, else <repo>/figures."""
    from vaelib import quick_mode

    if os.environ.get("VAELIB_FIGURES"):
        return Path(os.environ["VAELIB_FIGURES"])
    if quick_mode():
        return Path(tempfile.gettempdir()) / "vaelib-figures-quick"
    return Path(__file__).resolve().parent.parent / "figures"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def savefig(fig, name):
    """Save `fig` as figures/<name>.png (atomically) and return the path written.

    Args:
        fig: a matplotlib Figure.
        name: "NN_short_name": the notebook number, then a name (letters, digits, _ or -), no extension.
    Returns:
        pathlib.Path of the PNG.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name must look like 'NN_short_name' (notebook number, then letters/digits/_/-), got {name!r}")
    out_dir = figures_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".png", dir=out_dir)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", metadata={"Software": None})
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a figure is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
