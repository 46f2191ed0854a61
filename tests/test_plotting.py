"""plotting: savefig writes atomically where asked (series names into figures/, outside the repo in
    quick mode, any other name as a path); the plots return figures whose drawn data is checked
    against the numbers they show.

Oracles: scipy.stats.norm.ppf for the manifold grid, the model's own decoder for the manifold
    images, the
input arrays for the image grid, scatter and bar chart."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402

from vaelib import plotting  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def small_figure():
    plotting.use_style()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    ax.set(title="t", xlabel="z", ylabel="log p (nats)")
    return fig


def test_savefig_writes_png_to_override_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = small_figure()
    path = plotting.savefig(fig, "01_example")
    plt.close(fig)
    assert path == tmp_path / "01_example.png"
    assert mpimg.imread(path).ndim == 3  # a decodable PNG
    assert [p.name for p in tmp_path.iterdir()] == ["01_example.png"]  # no temporary file left


def test_quick_mode_writes_nowhere_in_the_repository(monkeypatch):
    monkeypatch.delenv("VAELIB_FIGURES", raising=False)
    monkeypatch.setenv("VAELIB_QUICK", "1")
    fig = small_figure()
    path = plotting.savefig(fig, "99_quick_mode_probe")
    plt.close(fig)
    assert REPO not in path.resolve().parents
    assert not (REPO / "figures" / "99_quick_mode_probe.png").exists()


def test_default_dir_is_repo_figures(monkeypatch):
    monkeypatch.delenv("VAELIB_FIGURES", raising=False)
    monkeypatch.delenv("VAELIB_QUICK", raising=False)
    assert plotting.figures_dir() == REPO / "figures"


@pytest.mark.parametrize(
    "name, written",
    [
        ("example", "example.png"),
        ("01_bad name", "01_bad name.png"),
        ("out/deep/fig.pdf", "out/deep/fig.pdf"),
        ("plots/x.svg", "plots/x.svg"),
        ("01_x.png", "01_x.png"),
    ],
    ids=["no-extension", "space", "pdf-in-new-folders", "svg", "series-like-with-extension"],
)
def test_any_other_name_is_a_path_written_where_asked(name, written, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "VAELIB_FIGURES", str(tmp_path / "series")
    )  # must not be used for these names
    fig = small_figure()
    path = plotting.savefig(fig, name)
    plt.close(fig)
    assert path.resolve() == (tmp_path / written).resolve()
    head = path.read_bytes()[:5]
    assert head == {".png": b"\x89PNG\r", ".pdf": b"%PDF-", ".svg": b"<?xml"}[path.suffix]
    assert not (tmp_path / "series").exists()
    assert not [
        p for p in path.parent.iterdir() if p.name.startswith(".")
    ]  # no temporary file left


def test_absolute_path_and_pathlike(tmp_path):
    fig = small_figure()
    assert plotting.savefig(fig, tmp_path / "a.png") == tmp_path / "a.png"
    assert plotting.savefig(fig, str(tmp_path / "b")) == tmp_path / "b.png"
    plt.close(fig)
    assert mpimg.imread(tmp_path / "b.png").ndim == 3


@pytest.mark.parametrize(
    "name, error, match",
    [
        ("", ValueError, r"name must be a file name or path"),
        ("out/", ValueError, r"name must be a file name or path"),
        ("x.notaformat", ValueError, r"extension '.notaformat'; expected one of .*\.png"),
        (3, TypeError, r"name must be a str or path, got int"),
    ],
    ids=["empty", "folder-slash", "extension", "type"],
)
def test_bad_names_are_rejected(name, error, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = small_figure()
    with pytest.raises(error, match=match):
        plotting.savefig(fig, name)
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []


def test_existing_folder_and_package_folder_are_refused(tmp_path):
    fig = small_figure()
    with pytest.raises(ValueError, match=r"is a folder"):
        plotting.savefig(fig, tmp_path)
    with pytest.raises(ValueError, match=r"points inside the vaelib package"):
        plotting.savefig(fig, plotting._PACKAGE_DIR / "oops.png")
    plt.close(fig)
    assert not (plotting._PACKAGE_DIR / "oops.png").exists()


def test_installed_vaelib_writes_series_figures_under_the_current_folder(tmp_path, monkeypatch):
    """Installed (not run from its checkout), vaelib never writes next to itself in
    site-packages."""
    site = tmp_path / "site-packages" / "vaelib"
    site.mkdir(parents=True)
    monkeypatch.setattr(plotting, "_PACKAGE_DIR", site)
    monkeypatch.delenv("VAELIB_FIGURES", raising=False)
    monkeypatch.delenv("VAELIB_QUICK", raising=False)
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert plotting.figures_dir() == work / "figures"
    fig = small_figure()
    assert plotting.savefig(fig, "01_mine") == work / "figures" / "01_mine.png"
    plt.close(fig)
    assert list((tmp_path / "site-packages").rglob("*.png")) == []


def test_non_figure_is_rejected():
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        plotting.savefig("not a figure", "01_x")


def test_saved_figure_has_ordinary_permissions(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = small_figure()
    path = plotting.savefig(fig, "01_perm")
    plt.close(fig)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_savefig_leaves_the_old_figure_and_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = small_figure()
    path = plotting.savefig(fig, "01_kept")
    before = path.read_bytes()

    def fail(f, **kwargs):
        f.write(b"\x89PNG half a figure")
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(fig, "savefig", fail)
    with pytest.raises(RuntimeError, match="renderer failed"):
        plotting.savefig(fig, "01_kept")
    plt.close(fig)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["01_kept.png"]


def test_vae_architecture_counts_the_weights_of_the_model_it_draws():
    # The boxes print weight counts by formula; they must add up to the parameters of the VAE they
    # describe.
    import re

    import matplotlib.pyplot as plt

    from vaelib.models import VAE
    from vaelib.plotting import vae_architecture

    fig = vae_architecture(64, 32, 3)
    texts = [t.get_text() for t in fig.axes[0].texts]
    counts = [int(m.replace(",", "")) for t in texts for m in re.findall(r"([\d,]+) weights", t)]
    assert sum(counts) == sum(p.numel() for p in VAE(64, 3, (32,)).parameters())
    assert any("64 pixels" in t for t in texts)
    plt.close(fig)


# -- plots
# ----------------------------------------------------------------------------------------------


def rendered_pixels(fig):
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def test_make_grid_places_each_image_and_pads_with_nan():
    images = np.arange(5 * 6, dtype=np.float64).reshape(5, 6) / 30  # 5 images of 2 x 3
    grid = plotting.make_grid(torch.from_numpy(images), image_shape=(2, 3), ncols=2, pad=1)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1)  # 3 rows of (2 + 1) - 1, 2 columns of (3 + 1) - 1
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_array_equal(
            grid[3 * r : 3 * r + 2, 4 * c : 4 * c + 3], images[i].reshape(2, 3)
        )
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 3]).all()  # padding row and column
    assert np.isnan(grid[6:, 4:]).all()  # the sixth slot is empty
    np.testing.assert_array_equal(
        plotting.make_grid(images.reshape(5, 2, 3), ncols=2), grid
    )  # (N, H, W) input


def test_image_grid_shows_the_grid_and_draws_real_pixels():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(9, 16, generator=g)  # 9 images of 4 x 4 (square: shape inferred)
    fig = plotting.image_grid(images, title="samples")
    shown = fig.axes[0].images[0]
    np.testing.assert_array_equal(
        np.ma.filled(shown.get_array(), np.nan), plotting.make_grid(images)
    )
    assert shown.get_clim() == (0.0, 1.0)  # probabilities: the full [0, 1] range, not stretched
    pixels = rendered_pixels(fig)
    assert (
        len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    )  # many grey levels drawn, not a blank canvas
    plt.close(fig)
    fig = plotting.image_grid(images * 4 - 2)  # outside [0, 1]: the data range
    assert fig.axes[0].images[0].get_clim() == pytest.approx(
        (float((images * 4 - 2).min()), float((images * 4 - 2).max()))
    )
    plt.close(fig)
    with pytest.raises(ValueError, match=r"D = 15 pixels, not a square number: pass image_shape"):
        plotting.image_grid(torch.rand(2, 15))
    with pytest.raises(
        ValueError, match=r"image_shape \(3, 4\) has 12 pixels but the images have D = 15"
    ):
        plotting.image_grid(torch.rand(2, 15), image_shape=(3, 4))


def test_latent_scatter_puts_each_code_where_it_is_coloured_by_label():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 3))
    labels = np.repeat([3, 7, 9], 20)
    fig = plotting.latent_scatter(torch.from_numpy(z), labels, dims=(2, 0))
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # one per class
    colours = set()
    for coll, c in zip(ax.collections, (3, 7, 9)):
        np.testing.assert_array_equal(coll.get_offsets(), z[labels == c][:, [2, 0]])
        assert coll.get_label() == str(c)
        colours.add(tuple(coll.get_facecolor()[0]))
    assert len(colours) == 3  # three different colours
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["3", "7", "9"]
    assert ax.get_xlabel() == "$z_3$" and ax.get_ylabel() == "$z_1$"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(60,\)"):
        plotting.latent_scatter(z, labels[:10])
    with pytest.raises(ValueError, match=r"z must have shape \(N, k\) with k >= 2"):
        plotting.latent_scatter(z[:, :1])


def test_manifold_codes_sit_at_normal_quantiles_of_equal_prior_mass():
    n = 7
    codes = plotting.manifold_codes(n)
    q = scipy.stats.norm.ppf((np.arange(n) + 0.5) / n)
    np.testing.assert_allclose(codes[0, :, 0], q, rtol=0, atol=1e-12)  # z_1 grows to the right
    np.testing.assert_allclose(codes[:, 0, 1], q[::-1], rtol=0, atol=1e-12)  # z_2 grows upwards
    assert (codes[:, :, 0] == codes[0, :, 0]).all() and (codes[:, :, 1].T == codes[:, 0, 1]).all()
    # Equal prior mass: the bins between consecutive quantile midpoints each hold 1/n of N(0, 1).
    edges = scipy.stats.norm.cdf(np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]]))
    assert np.all(
        np.abs(np.diff(edges) - 1 / n) < 0.1 / n
    )  # midpoints of quantiles are near the bin edges
    np.testing.assert_allclose(
        scipy.stats.norm.cdf(q), (np.arange(n) + 0.5) / n, rtol=0, atol=1e-12
    )


def test_latent_manifold_draws_the_decoder_means_on_the_grid():
    from vaelib.models import VAE

    torch.manual_seed(0)
    model = VAE(12, 2, (8,)).double()  # 12 pixels as 3 x 4 images: non-square
    n = 5
    fig = plotting.latent_manifold(model, n=n, image_shape=(3, 4))
    shown = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    with torch.no_grad():
        codes = torch.from_numpy(plotting.manifold_codes(n))  # (n, n, 2)
        means = torch.sigmoid(model.decode(codes)).numpy()  # (n, n, 12)
    assert shown.shape == (3 * n, 4 * n)
    for r in range(n):
        for c in range(n):
            np.testing.assert_allclose(
                shown[3 * r : 3 * r + 3, 4 * c : 4 * c + 4],
                means[r, c].reshape(3, 4),
                rtol=0,
                atol=1e-12,
            )
    assert fig.axes[0].get_xticklabels()[0].get_text() == f"{scipy.stats.norm.ppf(0.5 / n):.2f}"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"needs a 2-D latent space, the model has latent_dim = 3"):
        plotting.latent_manifold(VAE(12, 3, (8,)))


def test_kl_per_unit_bars_have_the_given_heights():
    kl = torch.tensor([0.5, 0.0, 2.25, 1.0])
    fig = plotting.kl_per_unit(kl, threshold=0.01)
    ax = fig.axes[0]
    np.testing.assert_array_equal([p.get_height() for p in ax.patches], kl.numpy())
    np.testing.assert_array_equal([p.get_x() + p.get_width() / 2 for p in ax.patches], [1, 2, 3, 4])
    assert ax.get_ylabel() == "KL (nats)" and "3.75 nats" in ax.get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match=r"kl must have shape \(k,\)"):
        plotting.kl_per_unit(torch.zeros(2, 2))


def test_plots_draw_into_given_axes():
    fig, axes = plt.subplots(1, 2)
    assert plotting.image_grid(torch.rand(4, 4), ax=axes[0]) is fig
    assert plotting.kl_per_unit([1.0, 2.0], ax=axes[1]) is fig
    plt.close(fig)
