"""Installed as a package (not editable, as from a git URL), vaelib works and assumes nothing about
the repository.

pip builds the package from a copy of the files a git URL would give it (pyproject.toml, README.md,
vaelib/), so the repository itself gets no build/ or egg-info folders. The installed copy then runs
from an unrelated
folder: it must import from the install target, train and evaluate a small model, and write the
    series'
figures under the current folder (or where asked), never into the repository or next to itself.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    import matplotlib
    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import torch

    import vaelib
    # every subpackage is installed
    from vaelib import checkpoints, data, evaluate, plotting, train, widgets
    from vaelib.models import VAE

    site, repo, work = (Path(p).resolve() for p in sys.argv[1:4])
    here = Path(vaelib.__file__).resolve()
    assert site in here.parents, f"vaelib imported from {here}, not from the install target {site}"
    assert site in Path(widgets.__file__).resolve().parents
    assert callable(widgets.kl_identity_explorer)
    assert plotting._repo_root() is None
    assert plotting.figures_dir() == work / "figures", plotting.figures_dir()
    x, _ = data.load("digits")
    torch.manual_seed(0)
    model = VAE(64, 2, (8,))
    train.fit(model, x[:200], 1, batch_size=50, progress=False, device="cpu")
    ll = evaluate.iwae_log_likelihood(model, torch.bernoulli(x[:10]), K=4)
    assert ll.shape == (10,) and bool(torch.isfinite(ll).all())
    fig = plotting.image_grid(model.sample(4))
    written = [plotting.savefig(fig, "01_series_name"), plotting.savefig(fig, "out/mine.png")]
    plt.close(fig)
    assert written == [work / "figures" / "01_series_name.png", Path("out/mine.png")], written
    print("ok", here)
    """
)


def test_pip_install_non_editable_works_outside_the_repository(tmp_path):
    src, site, work = tmp_path / "src", tmp_path / "site", tmp_path / "work"
    src.mkdir()
    work.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "vaelib", src / "vaelib", ignore=shutil.ignore_patterns("__pycache__"))
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(site),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr
    assert (site / "vaelib" / "models.py").is_file() and not (site / "figures").exists()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VAELIB_FIGURES", "VAELIB_QUICK", "PYTHONPATH")
    }
    env["PYTHONPATH"] = str(site)  # ahead of the editable install in .venv
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(site), str(REPO), str(work)],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok")
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*.png")) == [
        "figures/01_series_name.png",
        "out/mine.png",
    ]
    assert not list(site.rglob("*.png"))  # nothing written next to the installed package ...
    assert not (REPO / "figures" / "01_series_name.png").exists()  # ... nor into the repository
