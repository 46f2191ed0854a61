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


def vae_architecture(data_dim=784, hidden=400, latent_dim=20):
    """Draw the VAE network D-H-k with a Bernoulli decoder, layer by layer, and return the figure.

    Encoder x (D) -> Linear+ReLU (H) -> mu, logvar (k each); z = mu + sigma * eps; decoder
    z (k) -> Linear+ReLU (H) -> logits (D) -> sigmoid; the loss below. Weight counts are printed in each box.

    Args:
        data_dim, hidden, latent_dim: D, H and k of a one-hidden-layer `vaelib.models.VAE(D, k, (H,))`.
    Returns:
        matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    D, H, k = data_dim, hidden, latent_dim
    blue, green, orange, grey = "#cfe2f3", "#d9ead3", "#fce5cd", "0.92"

    def box(ax, x, y, text, color):
        return ax.text(x, y, text, ha="center", va="center", fontsize=10,
                       bbox=dict(boxstyle="round,pad=0.45", fc=color, ec="0.3"))

    def connect(ax, src, dst, src_side=(1, 0.5), dst_side=(0, 0.5)):
        ax.annotate("", xy=dst_side, xycoords=dst, xytext=src_side, textcoords=src,
                    arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.4, shrinkA=4, shrinkB=4))

    fig, ax = plt.subplots(figsize=(13.5, 4.6))
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
    ax.add_patch(plt.Rectangle((0.095, 0.06), 0.31, 0.88, fc="#eef4fb", ec="none", zorder=-1))
    ax.add_patch(plt.Rectangle((0.555, 0.06), 0.335, 0.88, fc="#fdf3e7", ec="none", zorder=-1))
    ax.text(0.25, 0.9, r"encoder $q_\phi(z\mid x)$", ha="center", fontsize=12)
    ax.text(0.7225, 0.9, r"decoder $p_\theta(x\mid z)$", ha="center", fontsize=12)
    n_x = box(ax, 0.045, 0.5, f"image x\n{D} pixels\nin {{0, 1}}", grey)
    n_h = box(ax, 0.16, 0.5, f"Linear {D}→{H}\n+ ReLU\n{D * H + H:,} weights", blue)
    n_mu = box(ax, 0.33, 0.72, f"Linear {H}→{k}\n" + r"$\mu_\phi(x)$" + f"\n{H * k + k:,} weights", blue)
    n_lv = box(ax, 0.33, 0.28, f"Linear {H}→{k}\n" + r"$\log\sigma^2_\phi(x)$" + f"\n{H * k + k:,} weights", blue)
    n_z = box(ax, 0.48, 0.5, r"$z = \mu + \sigma\odot\varepsilon$" + f"\n{k} numbers", green)
    n_eps = box(ax, 0.48, 0.14, r"$\varepsilon \sim \mathcal{N}(0, I)$" + "\n(or z ~ p(z) to sample)", grey)
    n_h2 = box(ax, 0.62, 0.5, f"Linear {k}→{H}\n+ ReLU\n{k * H + H:,} weights", orange)
    n_l = box(ax, 0.78, 0.5, f"Linear {H}→{D}\nlogits " + r"$\ell_\theta(z)$" + f"\n{H * D + D:,} weights", orange)
    n_p = box(ax, 0.945, 0.5, "sigmoid\n" + r"$\pi_d = p_\theta(x_d{=}1\mid z)$" + f"\n{D} probabilities", grey)
    connect(ax, n_x, n_h)
    connect(ax, n_h, n_mu)
    connect(ax, n_h, n_lv)
    connect(ax, n_mu, n_z, dst_side=(0.3, 1))
    connect(ax, n_lv, n_z, dst_side=(0.3, 0))
    connect(ax, n_eps, n_z, src_side=(0.5, 1), dst_side=(0.5, 0))
    connect(ax, n_z, n_h2)
    connect(ax, n_h2, n_l)
    connect(ax, n_l, n_p)
    ax.text(0.5, 0.005, r"loss $= -\log p_\theta(x\mid z)$ (from the logits) $+\ \mathrm{KL}(q_\phi(z\mid x)\,\|\,\mathcal{N}(0, I))$ "
            r"(closed form from $\mu$, $\log\sigma^2$)", ha="center", fontsize=11)
    ax.set_title(f"The VAE network {D}-{H}-{k} (Bernoulli decoder)", fontsize=13)
    return fig
