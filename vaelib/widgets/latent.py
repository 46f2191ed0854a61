"""The latent-space explorer: a point z of a 2-D latent space, its decoded image, the prior there,
the nearest codes (09)."""

import math

import numpy as np
import torch

from vaelib import _validate
from vaelib.distributions import log_normal
from vaelib.networks import in_eval_mode
from vaelib.widgets._common import (
    FigureImage,
    as_float,
    decoded_mean,
    explorer,
    load_ipywidgets,
    pre_text,
    to_model,
)


@in_eval_mode
@torch.no_grad()
def latent_codes(model, x):
    """Encoder means mu(x) of a VAE with a 2-D latent space.  x: (N, D) -> (N, 2) float64 numpy
    array."""
    from vaelib.models import VAE

    if not isinstance(model, VAE) or model.latent_dim != 2:
        raise ValueError(f"model must be a vaelib.models.VAE with latent_dim 2, got {model!r:.80}")
    return model.encode(to_model(model, x))[0].double().cpu().numpy()


@in_eval_mode
@torch.no_grad()
def latent_readout(model, z, codes, n_neighbours=5):
    """What the decoder and the prior say at a latent point z, and which training codes lie nearest.

    Args:
        model: a vaelib.models.VAE with latent_dim 2.
        z: a pair of floats (z1, z2).
        codes: (N, 2) numpy array of training codes (latent_codes(model, x_train)).
        n_neighbours: how many nearest codes to return.
    Returns:
        dict: decoded (D,) numpy, the mean of p(x | z) (pixel probabilities for a Bernoulli
            decoder);
        log_prior (float) log N(z; 0, I) in nats; prior_density (float); neighbours (n,) indices
        into codes, nearest first; distances (n,) their Euclidean distances.
    """
    z1, z2 = (as_float("z", float(v)) for v in z)
    codes = np.asarray(codes, dtype=float)
    if codes.ndim != 2 or codes.shape[1] != 2 or len(codes) == 0:
        raise ValueError(f"codes must have shape (N >= 1, 2), got {codes.shape}")
    zt = torch.tensor([z1, z2], dtype=torch.float64)
    log_prior = log_normal(
        zt, torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    ).item()
    decoded = decoded_mean(model, zt[None])[0].numpy()
    dist = np.hypot(codes[:, 0] - z1, codes[:, 1] - z2)
    n = min(n_neighbours, len(codes))
    nearest = np.argpartition(dist, n - 1)[:n]
    nearest = nearest[np.argsort(dist[nearest], kind="stable")]
    return {
        "decoded": decoded,
        "log_prior": log_prior,
        "prior_density": math.exp(log_prior),
        "neighbours": nearest,
        "distances": dist[nearest],
    }


@in_eval_mode
@torch.no_grad()
def interpolation_path(model, x_a, x_b, n=10):
    """Decode the straight line between the encoder means of two images.

    Args:
        model: a VAE; x_a, x_b: (D,) images; n: points on the path, t = 0 .. 1.
    Returns:
        z (n, k) numpy path, decoded (n, D) numpy means of p(x | z).
    """
    _validate.count("n", n, minimum=2)
    ends = model.encode(to_model(model, torch.stack([x_a, x_b])))[0].double().cpu()  # (2, k)
    t = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]  # (n, 1)
    z = (1 - t) * ends[0] + t * ends[1]  # (n, k)
    return z.numpy(), decoded_mean(model, z).numpy()


def latent_explorer(
    model, x_train, x_test, labels=None, pair=(0, 1), n_codes=2000, n_neighbours=5, image_shape=None
):
    """Two sliders choose a point z of a 2-D latent space: its decoded image, the prior density
    there and the nearest training codes (with their images); two test images set an interpolation
    path (notebook 09).

    Args:
        model: a VAE with latent_dim 2.
        x_train: (N, D) training images (their codes are the scatter and the neighbours; the first
            n_codes are used).
        x_test: (M, D) test images for the interpolation path.
        labels: optional (N,) integer labels of x_train, to colour the scatter.
        pair: indices into x_test of the two ends of the path.
    Returns:
        ipywidgets.VBox (see the module docstring).
    """
    from vaelib.plotting import make_grid, resolve_image_shape

    widgets = load_ipywidgets()
    shape = resolve_image_shape(x_train.shape[-1], image_shape)
    x_codes = x_train[:n_codes]
    codes = latent_codes(model, x_codes)
    style = {"description_width": "initial"}
    a, b = pair
    controls = {
        "z1": widgets.FloatSlider(
            value=0.0, min=-3.5, max=3.5, step=0.05, description="z₁", style=style
        ),
        "z2": widgets.FloatSlider(
            value=0.0, min=-3.5, max=3.5, step=0.05, description="z₂", style=style
        ),
        "a": widgets.BoundedIntText(
            value=a,
            min=0,
            max=len(x_test) - 1,
            description="path from test image",
            style=style,
            layout=widgets.Layout(width="220px"),
        ),
        "b": widgets.BoundedIntText(
            value=b,
            min=0,
            max=len(x_test) - 1,
            description="to",
            style=style,
            layout=widgets.Layout(width="130px"),
        ),
    }
    fig = FigureImage((11.0, 5.0))
    gs = fig.fig.add_gridspec(2, 3, height_ratios=[3, 1.1], width_ratios=[1.25, 1, 1])
    ax_s = fig.fig.add_subplot(gs[0, 0])
    ax_d = fig.fig.add_subplot(gs[0, 1])
    ax_n = fig.fig.add_subplot(gs[0, 2])
    ax_p = fig.fig.add_subplot(gs[1, :])
    grid = np.linspace(-3.5, 3.5, 141)
    G1, G2 = np.meshgrid(grid, grid)
    ax_s.contour(
        G1,
        G2,
        np.exp(-0.5 * (G1**2 + G2**2)) / (2 * math.pi),
        levels=5,
        colors="0.6",
        linewidths=0.7,
    )
    colours = None if labels is None else np.asarray(labels)[: len(codes)]
    ax_s.scatter(
        codes[:, 0],
        codes[:, 1],
        c=colours,
        cmap="tab10" if colours is not None else None,
        s=4,
        alpha=0.5,
        color=None if colours is not None else "C0",
    )
    (near_pts,) = ax_s.plot(
        [], [], "o", ms=7, mfc="none", mec="k", mew=1.2, label="nearest training codes"
    )
    (path_line,) = ax_s.plot([], [], ".-", color="C3", lw=1.5, label="interpolation path")
    (z_pt,) = ax_s.plot([], [], "X", ms=12, color="k", mec="w", label="z")
    ax_s.set(
        xlim=(-3.5, 3.5),
        ylim=(-3.5, 3.5),
        aspect="equal",
        xlabel="z₁",
        ylabel="z₂",
        title="training codes μ(x), prior contours",
    )
    ax_s.legend(loc="upper left", fontsize=7)
    im_d = ax_d.imshow(np.zeros(shape), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    im_n = ax_n.imshow(
        make_grid(np.zeros((n_neighbours, math.prod(shape))), shape, ncols=2),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    im_p = ax_p.imshow(
        make_grid(np.zeros((12, math.prod(shape))), shape, ncols=12),
        cmap="gray",
        vmin=0,
        vmax=1,
        interpolation="nearest",
    )
    for ax in (ax_d, ax_n, ax_p):
        ax.set(xticks=[], yticks=[])
        ax.grid(False)
    ax_n.set_title(f"{n_neighbours} nearest training images", fontsize=10)
    ax_d.set_title("mean of p(x | z) at z", fontsize=10)
    ax_p.set_title(
        "path: test image a, decoded points t = 0 … 1 (10 steps), test image b", fontsize=10
    )
    fig.fig.tight_layout()
    fig.animate(z_pt, near_pts, path_line, im_d, im_n, im_p)
    readout_html = widgets.HTML()
    path_cache = {}

    def update(v):
        r = latent_readout(model, (v["z1"], v["z2"]), codes, n_neighbours=n_neighbours)
        ends = (v["a"], v["b"])
        if ends not in path_cache:
            path_cache.clear()
            path_cache[ends] = interpolation_path(model, x_test[ends[0]], x_test[ends[1]], n=10)
        z_path, decoded_path = path_cache[ends]
        z_pt.set_data([v["z1"]], [v["z2"]])
        near_pts.set_data(codes[r["neighbours"], 0], codes[r["neighbours"], 1])
        path_line.set_data(z_path[:, 0], z_path[:, 1])
        im_d.set_data(r["decoded"].reshape(shape))
        im_n.set_data(make_grid(x_codes[r["neighbours"]].double().numpy(), shape, ncols=2))
        row = np.concatenate(
            [
                x_test[ends[0]].double().numpy()[None],
                decoded_path,
                x_test[ends[1]].double().numpy()[None],
            ]
        )
        im_p.set_data(make_grid(row, shape, ncols=12))
        readout_html.value = pre_text(
            [
                f"path from test image {ends[0]} to test image {ends[1]}",
                f"z = ({v['z1']:+.2f}, {v['z2']:+.2f});  log p(z) = {r['log_prior']:.4f} nats,  "
                f"p(z) = {r['prior_density']:.4g}",
                "nearest training codes: "
                + ", ".join(
                    f"#{int(i)} at {d:.3f}"
                    + ("" if labels is None else f" (label {int(np.asarray(labels)[i])})")
                    for i, d in zip(r["neighbours"], r["distances"])
                ),
            ]
        )
        return dict(r, path=z_path)

    return explorer(controls, fig, readout_html, update)
