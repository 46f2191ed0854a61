"""One figure style for the series, `savefig`, and the plots a VAE project needs.

Call `use_style()` once at the top of a notebook. `savefig(fig, "NN_name")` is for the series' own
figures (into figures/: the repository's when vaelib runs from its checkout, else ./figures under
the current folder; $VAELIB_FIGURES overrides; a temporary folder in quick mode, VAELIB_QUICK=1, so
tests never dirty figures/). Any other name is a path, written where you say: `savefig(fig,
"out/samples.png")`.

Plots (each returns its matplotlib Figure; pass `ax=` to draw into your own axes):
    image_grid(images)            a grid of images, e.g. model.sample(64) latent_scatter(z, labels)
    2-D codes coloured by class label latent_manifold(model)        decoded images on a grid of
    equal prior mass, for a 2-D latent kl_per_unit(kl)               bar chart of the KL per latent
    unit, from vaelib.evaluate.kl_per_unit
    traversals(model, x)          decoded images along each latent unit, the others held fixed
    rate_distortion(rates, distortions, betas)   distortion against rate across a beta sweep
Their numbers come from plain functions (`make_grid`, `manifold_codes`, `traversal_codes`) that are
tested on their own.

One colour convention for images, here and in the command line's `sample`: dark ink on white
(matplotlib's "gray_r"): pixel value 0 (or less) is white, 1 (or more) black, as one draws digits
and clothes on paper; the colour range is [0, 1] for data and decoder means in [0, 1].

(Longer than most modules: one function a figure the series draws, each short on its own.)
"""

import math
import os
import re
import tempfile
from pathlib import Path

import matplotlib
import numpy as np

from vaelib import _atomic

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
        color=[
            "#1f77b4",
            "#d62728",
            "#2ca02c",
            "#ff7f0e",
            "#9467bd",
            "#8c564b",
            "#17becf",
            "#7f7f7f",
        ]
    ),
}

_NAME = re.compile(r"^[0-9]{2}_[A-Za-z0-9_\-]+$")
_PACKAGE_DIR = Path(__file__).resolve().parent


def use_style():
    """Apply the series' matplotlib style (rcParams) for the rest of the session."""
    matplotlib.rcParams.update(STYLE)


def _repo_root():
    """The repository checkout vaelib runs from (editable install), or None when vaelib is
    installed."""
    root = _PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir():
        return root
    return None


def figures_dir():
    """Where savefig writes "NN_name" figures: $VAELIB_FIGURES, else a temporary folder in quick
    mode, else the repository's figures/ when vaelib runs from its checkout, else ./figures under
    the current folder."""
    from vaelib import quick_mode

    if os.environ.get("VAELIB_FIGURES"):
        return Path(os.environ["VAELIB_FIGURES"])
    if quick_mode():
        return Path(tempfile.gettempdir()) / "vaelib-figures-quick"
    root = _repo_root()
    return root / "figures" if root is not None else Path.cwd() / "figures"


def _target(fig, name):
    """The path `savefig` writes for `name`, checked."""
    if isinstance(name, str) and _NAME.match(name):
        return figures_dir() / f"{name}.png"
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name must be a str or path, got {type(name).__name__}")
    text = os.fspath(name)
    if not text or text.endswith(("/", os.sep)) or Path(text).name in ("", ".", ".."):
        raise ValueError(f"name must be a file name or path such as 'samples.png', got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        raise ValueError(
            f"name {text!r} is a folder; give a file name such as {str(path / 'figure.png')!r}"
        )
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    formats = fig.canvas.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise ValueError(
            f"name {text!r} has the extension {path.suffix!r}; expected one of "
            f"{', '.join('.' + f for f in sorted(formats))} (or none for .png)"
        )
    resolved = path.resolve()
    if resolved == _PACKAGE_DIR or _PACKAGE_DIR in resolved.parents:
        raise ValueError(
            f"name {text!r} points inside the vaelib package ({_PACKAGE_DIR}); write your figures "
            "elsewhere"
        )
    return path


def savefig(fig, name):
    """Save `fig` (atomically: no half-written file) and return the path written.

    Args:
        fig: a matplotlib Figure.
        name: "NN_short_name" (notebook number, then letters, digits, _ or -; no extension) for the
            series' own figures, written to `figures_dir()` as PNG; anything else is a file path,
            relative to the current folder or absolute, written as given (folders created; the
            format from its extension, .png if none).
    Returns:
        pathlib.Path of the file.
    """
    if not hasattr(fig, "savefig") or not hasattr(fig, "canvas"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    path = _target(fig, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix[1:].lower()
    # No "Software" stamp in PNGs, so a re-run leaves byte-identical files when nothing changed.
    metadata = {"metadata": {"Software": None}} if fmt == "png" else {}
    # a tight bounding box always, not only under use_style (whose rcParams ask for it): no label
    # or legend outside the axes is cut off.
    if matplotlib.rcParams["savefig.bbox"] != "tight":
        metadata["bbox_inches"] = "tight"
    _atomic.atomic_write(path, lambda f: fig.savefig(f, format=fmt, **metadata))
    return path


def vae_architecture(data_dim=784, hidden=400, latent_dim=20):
    """Draw the VAE network D-H-k with a Bernoulli decoder, layer by layer, and return the figure.

    Encoder x (D) -> Linear+ReLU (H) -> mu, logvar (k each); z = mu + sigma * eps; decoder z (k) ->
    Linear+ReLU (H) -> logits (D) -> sigmoid; the loss below. Weight counts are printed in each box.

    Args:
        data_dim, hidden, latent_dim: D, H and k of a one-hidden-layer `vaelib.models.VAE(D, k,
            (H,))`.
    Returns:
        matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    D, H, k = data_dim, hidden, latent_dim
    blue, green, orange, grey = "#cfe2f3", "#d9ead3", "#fce5cd", "0.92"

    def box(ax, x, y, text, color):
        return ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=10,
            bbox=dict(boxstyle="round,pad=0.45", fc=color, ec="0.3"),
        )

    def connect(ax, src, dst, src_side=(1, 0.5), dst_side=(0, 0.5)):
        ax.annotate(
            "",
            xy=dst_side,
            xycoords=dst,
            xytext=src_side,
            textcoords=src,
            arrowprops=dict(arrowstyle="-|>", color="0.25", lw=1.4, shrinkA=4, shrinkB=4),
        )

    fig, ax = plt.subplots(figsize=(13.5, 4.6))
    ax.set(xlim=(0, 1), ylim=(0, 1))
    ax.axis("off")
    ax.add_patch(plt.Rectangle((0.095, 0.06), 0.31, 0.88, fc="#eef4fb", ec="none", zorder=-1))
    ax.add_patch(plt.Rectangle((0.555, 0.06), 0.335, 0.88, fc="#fdf3e7", ec="none", zorder=-1))
    ax.text(0.25, 0.9, r"encoder $q_\phi(z\mid x)$", ha="center", fontsize=12)
    ax.text(0.7225, 0.9, r"decoder $p_\theta(x\mid z)$", ha="center", fontsize=12)
    n_x = box(ax, 0.045, 0.5, f"image x\n{D} pixels\nin {{0, 1}}", grey)
    n_h = box(ax, 0.16, 0.5, f"Linear {D}→{H}\n+ ReLU\n{D * H + H:,} weights", blue)
    n_mu = box(
        ax, 0.33, 0.72, f"Linear {H}→{k}\n" + r"$\mu_\phi(x)$" + f"\n{H * k + k:,} weights", blue
    )
    n_lv = box(
        ax,
        0.33,
        0.28,
        f"Linear {H}→{k}\n" + r"$\log\sigma^2_\phi(x)$" + f"\n{H * k + k:,} weights",
        blue,
    )
    n_z = box(ax, 0.48, 0.5, r"$z = \mu + \sigma\odot\varepsilon$" + f"\n{k} numbers", green)
    n_eps = box(
        ax, 0.48, 0.14, r"$\varepsilon \sim \mathcal{N}(0, I)$" + "\n(or z ~ p(z) to sample)", grey
    )
    n_h2 = box(ax, 0.62, 0.5, f"Linear {k}→{H}\n+ ReLU\n{k * H + H:,} weights", orange)
    n_l = box(
        ax,
        0.78,
        0.5,
        f"Linear {H}→{D}\nlogits " + r"$\ell_\theta(z)$" + f"\n{H * D + D:,} weights",
        orange,
    )
    n_p = box(
        ax,
        0.945,
        0.5,
        "sigmoid\n" + r"$\pi_d = p_\theta(x_d{=}1\mid z)$" + f"\n{D} probabilities",
        grey,
    )
    connect(ax, n_x, n_h)
    connect(ax, n_h, n_mu)
    connect(ax, n_h, n_lv)
    connect(ax, n_mu, n_z, dst_side=(0.3, 1))
    connect(ax, n_lv, n_z, dst_side=(0.3, 0))
    connect(ax, n_eps, n_z, src_side=(0.5, 1), dst_side=(0.5, 0))
    connect(ax, n_z, n_h2)
    connect(ax, n_h2, n_l)
    connect(ax, n_l, n_p)
    ax.text(
        0.5,
        0.005,
        r"loss $= -\log p_\theta(x\mid z)$ (from the logits) $+\ \mathrm{KL}(q_\phi(z\mid "
        r"x)\,\|\,\mathcal{N}(0, I))$ "
        r"(closed form from $\mu$, $\log\sigma^2$)",
        ha="center",
        fontsize=11,
    )
    ax.set_title(f"The VAE network {D}-{H}-{k} (Bernoulli decoder)", fontsize=13)
    return fig


# -- plots
# ------------------------------------------------------------------------------------------


def _numpy(name, a):
    """A tensor (any device, with or without grad) or array-like as a float64 numpy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array or tensor of numbers, got {type(a).__name__}"
        ) from None
    return a


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def resolve_image_shape(D, image_shape=None):
    """(H, W) of images of D pixels: `image_shape` checked against D, or the square one when it is
    None.

    Raises ValueError when H W != D, or when image_shape is None and D is not a square number.
    """
    if image_shape is None:
        side = math.isqrt(D)
        if side * side != D:
            raise ValueError(
                f"images have D = {D} pixels, not a square number: pass image_shape=(H, W)"
            )
        return side, side
    H, W = image_shape
    if H * W != D:
        raise ValueError(
            f"image_shape {tuple(image_shape)} has {H * W} pixels but the images have D = {D}"
        )
    return H, W


def make_grid(images, image_shape=None, ncols=None, pad=1):
    """Tile images into one array, row by row, with `pad` pixels of NaN (drawn as background)
    between them.

    Args:
        images: (N, D) flattened images or (N, H, W); tensor or array.
        image_shape: (H, W) for flattened images; None for square images (H = W = sqrt(D)).
        ncols: images per row; None for ceil(sqrt(N)).
        pad: pixels between images.
    Returns:
        (rows (H + pad) - pad, ncols (W + pad) - pad) float64 array; image i sits at row i // ncols,
        column i % ncols.
    """
    a = _numpy("images", images)
    if a.ndim == 3:
        image_shape, a = a.shape[1:], a.reshape(a.shape[0], -1)
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"images must have shape (N, D) or (N, H, W) with N >= 1, got {a.shape}")
    N, D = a.shape
    H, W = resolve_image_shape(D, image_shape)
    ncols = math.ceil(math.sqrt(N)) if ncols is None else ncols
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols must be an int >= 1, got {ncols!r}")
    rows = math.ceil(N / ncols)
    grid = np.full((rows * (H + pad) - pad, ncols * (W + pad) - pad), np.nan)
    for i, img in enumerate(a.reshape(N, H, W)):
        r, c = divmod(i, ncols)
        grid[r * (H + pad) : r * (H + pad) + H, c * (W + pad) : c * (W + pad) + W] = img
    return grid


def image_grid(
    images,
    image_shape=None,
    ncols=None,
    pad=1,
    ax=None,
    title=None,
    cmap="gray_r",
    vmin=None,
    vmax=None,
):
    """Show images (e.g. `model.sample(64)` or a data batch) as one grid; return the Figure.

    Args:
        images: (N, D) or (N, H, W), tensor or array.
        image_shape: (H, W) for non-square flattened images.
        ncols: images per row (default ceil(sqrt(N))).
        pad: pixels between images.
        ax: draw into these axes instead of a new figure.
        title: axes title.
        cmap: colour map (default "gray_r": the series' convention, 0 white and 1 black, module
            docstring).
        vmin, vmax: colour range; default [0, 1] when all pixels lie there (probabilities), else the
            data range.
    The new figure is sized to the grid (about 6 inches on its longer side, images never drawn
    larger than 0.08 inch per pixel), so a row of images is a strip, not a square with margins.
    Returns:
        matplotlib Figure.
    """
    grid = make_grid(images, image_shape, ncols, pad)
    if vmin is None and vmax is None and np.nanmin(grid) >= 0 and np.nanmax(grid) <= 1:
        vmin, vmax = 0.0, 1.0
    fig, ax = _new_axes(ax, grid_figsize(grid.shape, title=bool(title)))
    ax.imshow(grid, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def grid_figsize(shape, title=False, longer=6.0, most=0.08):
    """(width, height) in inches of a figure showing an image grid of `shape` (rows, cols) pixels:
    `longer` inches on the longer side, at most `most` inches per pixel, plus room for a title."""
    rows, cols = shape
    scale = min(longer / max(rows, cols), most)  # inches per pixel
    return cols * scale + 0.2, rows * scale + 0.2 + (0.35 if title else 0.0)


def latent_scatter(z, labels=None, dims=(0, 1), ax=None, title=None, s=6, alpha=0.7):
    """Codes z (e.g. the encoder means of test images) as points, coloured by class label; return
    the Figure.

    Args:
        z: (N, k) codes, k >= 2; tensor or array.
        labels: optional (N,) integer class labels: one colour each (tab10/tab20), with a legend.
        dims: the two latent dimensions to plot.
        ax, title: as in `image_grid`; s, alpha: marker size and opacity.
    Returns:
        matplotlib Figure.
    """
    z = _numpy("z", z)
    if z.ndim != 2 or z.shape[1] < 2:
        raise ValueError(f"z must have shape (N, k) with k >= 2, got {z.shape}")
    i, j = dims
    if not (0 <= i < z.shape[1] and 0 <= j < z.shape[1]) or i == j:
        raise ValueError(
            f"dims must be two different latent dimensions in [0, {z.shape[1]}), got {dims}"
        )
    own_axes = ax is None
    fig, ax = _new_axes(ax, (5.5, 5))
    if labels is None:
        ax.scatter(z[:, i], z[:, j], s=s, alpha=alpha, linewidths=0)
    else:
        labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
        if labels.shape != (z.shape[0],):
            raise ValueError(f"labels must have shape (N,) = ({z.shape[0]},), got {labels.shape}")
        classes = np.unique(labels)
        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for n, c in enumerate(classes):
            keep = labels == c
            ax.scatter(
                z[keep, i],
                z[keep, j],
                s=s,
                alpha=alpha,
                linewidths=0,
                color=cmap(n % cmap.N),
                label=str(c),
            )
        if (
            own_axes
        ):  # beside the plot; inside it when drawing into your axes (it might cover a neighbour)
            ax.legend(title="label", markerscale=3, loc="center left", bbox_to_anchor=(1.0, 0.5))
        else:
            ax.legend(title="label", markerscale=3, loc="best", fontsize="small", ncols=2)
    ax.set(xlabel=f"$z_{i + 1}$", ylabel=f"$z_{j + 1}$", title=title or "")
    ax.set_aspect("equal", adjustable="datalim")
    return fig


def manifold_codes(n):
    """An n x n grid of 2-D codes of equal prior mass: coordinates at the standard normal quantiles
    (i + 1/2) / n.

    Under z ~ N(0, I_2) each grid point stands for 1/n^2 of the prior mass (Kingma & Welling 2013,
    fig. 4). Row r, column c holds z = (q_c, q_{n-1-r}) with q_i = Phi^{-1}((i + 1/2) / n): z_1
    grows to the right, z_2 upwards, as on a plot.

    Returns:
        (n, n, 2) float64 numpy array.
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    q = torch.special.ndtri(
        (torch.arange(n, dtype=torch.float64) + 0.5) / n
    ).numpy()  # (n,) increasing
    z1, z2 = np.meshgrid(q, q[::-1])  # (n, n) each: columns vary z_1, rows z_2 from the top down
    return np.stack([z1, z2], axis=-1)


def latent_manifold(model, n=15, image_shape=None, ax=None, title=None, cmap="gray_r"):
    """Decode an n x n grid of equal prior mass (`manifold_codes`) of a VAE with a 2-D latent;
    return the Figure.

    Each image is the decoder's mean E[x | z] (pixel probabilities for a Bernoulli model). Tick
    labels give the codes' coordinates.

    Args:
        model: a vaelib.models.VAE with latent_dim 2.
        n: grid points per axis.
        image_shape, ax, title, cmap: as in `image_grid`.
    Returns:
        matplotlib Figure.
    """
    import torch

    from vaelib.models import VAE
    from vaelib.networks import device_dtype, eval_mode

    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.models.VAE, got {type(model).__name__}")
    if model.latent_dim != 2:
        raise ValueError(
            "latent_manifold needs a 2-D latent space, the model has latent_dim = "
            f"{model.latent_dim}"
        )
    codes = manifold_codes(n)  # (n, n, 2)
    device, dtype = device_dtype(model)
    with torch.no_grad(), eval_mode(model):
        z = torch.from_numpy(codes.reshape(-1, 2)).to(device, dtype)  # (n*n, 2)
        images = model.decode_mean(z)  # (n*n, D)
    H, W = resolve_image_shape(model.data_dim, image_shape)
    fig = image_grid(images, (H, W), ncols=n, pad=0, ax=ax, title=title, cmap=cmap)
    ax = fig.axes[0] if ax is None else ax
    ax.set_axis_on()
    ax.grid(False)
    step = max(1, n // 5)
    ticks = list(range(0, n, step))
    ax.set_xticks([c * W + (W - 1) / 2 for c in ticks], [f"{codes[0, c, 0]:.2f}" for c in ticks])
    ax.set_yticks([r * H + (H - 1) / 2 for r in ticks], [f"{codes[r, 0, 1]:.2f}" for r in ticks])
    ax.set(xlabel="$z_1$", ylabel="$z_2$")
    return fig


def kl_per_unit(kl, ax=None, title=None, threshold=None):
    """Bar chart of the KL term per latent unit (from `vaelib.evaluate.kl_per_unit`); return the
    Figure.

    Args:
        kl: (k,) KL of each unit in nats, tensor or array.
        ax, title: as in `image_grid`.
        threshold: optional value drawn as a dashed line (e.g. a level below which you call a unit
            collapsed).
    Returns:
        matplotlib Figure.
    """
    kl = _numpy("kl", kl)
    if kl.ndim != 1 or kl.shape[0] == 0:
        raise ValueError(f"kl must have shape (k,) with k >= 1, got {kl.shape}")
    fig, ax = _new_axes(ax, (max(4.0, 0.3 * len(kl) + 2), 3.5))
    units = np.arange(1, len(kl) + 1)
    ax.bar(units, kl, color="#1f77b4")
    if threshold is not None:
        ax.axhline(threshold, color="#7f7f7f", linestyle="--", linewidth=1)
    ax.set(
        xlabel="latent unit",
        ylabel="KL (nats)",
        title=title or f"KL per unit (total {kl.sum():.2f} nats)",
    )
    ax.set_xticks(units if len(kl) <= 32 else units[:: math.ceil(len(kl) / 16)])
    return fig


def traversal_codes(z0, dims, n=7, span=None):
    """Codes for a latent traversal: row r varies unit dims[r] over n values, the others stay z0's.

    The values are standard normal quantiles Phi^{-1}((i + 1/2) / n), as in `manifold_codes` (equal
    prior mass between them), or evenly spaced in [-span, span] when span is given.

    Args:
        z0: (k,) the code held fixed (e.g. the encoder mean of an image, or zeros: the prior mean).
        dims: sequence of latent units to vary.
        n: values per unit.
        span: None for the quantiles, else the largest |value|.
    Returns:
        codes (len(dims), n, k) and values (n,), float64 numpy arrays.
    """
    import torch

    z0 = _numpy("z0", z0)
    if z0.ndim != 1:
        raise ValueError(f"z0 must have shape (k,), got {z0.shape}")
    k = z0.shape[0]
    dims = [int(d) for d in dims]
    if not dims or any(not 0 <= d < k for d in dims):
        raise ValueError(f"dims must be latent units in [0, {k}), got {dims}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if span is None:
        values = torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).numpy()
    else:
        values = np.linspace(-float(span), float(span), n)
    codes = np.repeat(np.repeat(z0[None, None], len(dims), 0), n, 1)  # (R, n, k)
    for r, d in enumerate(dims):
        codes[r, :, d] = values
    return codes, values


def traversals(
    model, x=None, dims=None, n=7, span=None, image_shape=None, ax=None, title=None, cmap="gray_r"
):
    """Latent traversals: decode codes that vary one latent unit at a time; return the Figure.

    Row r shows E[x | z] (`model.decode_mean`) for z = z0 with unit dims[r] set to each of n values
    (`traversal_codes`): standard normal quantiles, so each row walks through the prior from its
    5 % to its 95 % point and beyond. z0 is the encoder mean of the image x, or 0 (the prior mean)
    without x. Runs in eval mode (`vaelib.networks.eval_mode`). A unit whose row does not change is
    unused (its KL is near 0: `vaelib.evaluate.kl_per_unit`).

    Args:
        model: a vaelib.models.VAE.
        x: optional (D,) or (1, D) image whose code is held fixed.
        dims: latent units to vary (default: all, at most 16: the first 16).
        n: values per unit; span: as in `traversal_codes`.
        image_shape, ax, title, cmap: as in `image_grid`.
    Returns:
        matplotlib Figure; rows labelled by unit, columns by value.
    """
    import torch

    from vaelib.models import VAE
    from vaelib.networks import device_dtype, eval_mode

    if not isinstance(model, VAE):
        raise TypeError(f"model must be a vaelib.models.VAE, got {type(model).__name__}")
    device, dtype = device_dtype(model)
    H, W = resolve_image_shape(model.data_dim, image_shape)
    with torch.no_grad(), eval_mode(model):
        if x is None:
            z0 = np.zeros(model.latent_dim)
        else:
            xt = torch.as_tensor(x).to(device, dtype).reshape(-1, model.data_dim)
            if xt.shape[0] != 1:
                raise ValueError(f"x must be one image (D,) or (1, D), got {tuple(np.shape(x))}")
            z0 = model.encode(xt)[0][0].double().cpu().numpy()  # (k,) the encoder mean
        dims = list(range(min(model.latent_dim, 16))) if dims is None else list(dims)
        codes, values = traversal_codes(z0, dims, n, span)  # (R, n, k)
        z = torch.from_numpy(codes.reshape(-1, model.latent_dim)).to(device, dtype)
        images = model.decode_mean(z)  # (R n, D)
    fig = image_grid(images, (H, W), ncols=n, pad=1, ax=ax, title=title, cmap=cmap)
    ax = fig.axes[0] if ax is None else ax
    ax.set_axis_on()
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xticks([c * (W + 1) + (W - 1) / 2 for c in range(n)], [f"{v:.2g}" for v in values])
    ax.set_yticks(
        [r * (H + 1) + (H - 1) / 2 for r in range(len(dims))], [f"z{d + 1}" for d in dims]
    )
    ax.tick_params(length=0, labelsize=8)
    ax.set_xlabel(
        "value of the varied unit (standard normal quantiles)" if span is None else "value"
    )
    return fig


def rate_distortion(rates, distortions, betas=None, ax=None, title=None, label=None):
    """Distortion against rate across a beta sweep (Alemi et al. 2018, fig. 1); return the Figure.

    Each point is one model: rate = mean KL(q(z | x) || p(z)), distortion = mean -E_q[log p(x |
    z)], both in nats (`vaelib.evaluate.rate_distortion`). The dashed lines are of equal ELBO = -(R
    + D): along them the ELBO cannot tell the models apart; beta = 1 is the best ELBO.

    Args:
        rates, distortions: (M,) each, tensor, array or list.
        betas: optional (M,) KL weights, written beside the points.
        ax, title: as in `image_grid`; label: legend label of the curve.
    Returns:
        matplotlib Figure.
    """
    r, d = _numpy("rates", rates), _numpy("distortions", distortions)
    if r.ndim != 1 or r.shape != d.shape or r.shape[0] == 0:
        raise ValueError(
            f"rates and distortions must have the same shape (M,), got {r.shape} and {d.shape}"
        )
    fig, ax = _new_axes(ax, (5.5, 4.2))
    order = np.argsort(r)
    ax.plot(r[order], d[order], marker="o", label=label)
    total = r + d
    lo, hi = np.nanmin(total), np.nanmax(total)
    for c in np.linspace(lo, hi, 3) if hi > lo else [lo]:
        xs = np.array([0.0, c])
        ax.plot(xs, c - xs, color="0.6", linestyle="--", linewidth=0.8, zorder=0)
    if betas is not None:
        b = _numpy("betas", betas)
        if b.shape != r.shape:
            raise ValueError(f"betas must have shape {r.shape}, got {b.shape}")
        for ri, di, bi in zip(r, d, b):
            ax.annotate(
                f"β={bi:g}", (ri, di), textcoords="offset points", xytext=(5, 4), fontsize=8
            )
    pad_r, pad_d = 0.08 * (np.ptp(r) or 1.0), 0.08 * (np.ptp(d) or 1.0)
    ax.set_xlim(max(0.0, r.min() - pad_r), r.max() + pad_r)
    ax.set_ylim(d.min() - pad_d, d.max() + pad_d)
    ax.set(
        xlabel="rate: KL(q(z|x) || p(z)) (nats)",
        ylabel="distortion: -E_q log p(x|z) (nats)",
        title=title or "Rate-distortion across β (dashed: equal ELBO)",
    )
    if label:
        ax.legend()
    return fig
