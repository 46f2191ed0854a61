"""plotting: savefig writes a valid PNG atomically, into figures/ normally and outside the repo in quick mode."""

from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

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


@pytest.mark.parametrize("name", ["example", "01_bad name", "01_x.png", "../01_x"])
def test_bad_names_are_rejected(name, tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = small_figure()
    with pytest.raises(ValueError, match="name must look like 'NN_short_name'"):
        plotting.savefig(fig, name)
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []


def test_non_figure_is_rejected():
    with pytest.raises(TypeError, match="fig must be a matplotlib Figure"):
        plotting.savefig("not a figure", "01_x")


def test_saved_figure_has_ordinary_permissions(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELIB_FIGURES", str(tmp_path))
    fig = small_figure()
    path = plotting.savefig(fig, "01_perm")
    plt.close(fig)
    mask = plotting._umask()
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_vae_architecture_counts_the_weights_of_the_model_it_draws():
    # The boxes print weight counts by formula; they must add up to the parameters of the VAE they describe.
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
