"""Shared fixtures. Tests run in float64 unless a test says otherwise."""

import pytest
import torch
from _chromium import require_browser
from hypothesis import settings

# Hypothesis is deterministic by default: each property test draws the same examples on every run
# (derandomize seeds its generator from the test's own code), and no example database replays what
# an earlier run happened to find, so `make test` passes or fails the same way everywhere. To search
# for new failures, draw at random: VAELIB_PROPERTY_EXAMPLES=2000 pytest tests/test_properties.py
# --hypothesis-profile=fuzz --hypothesis-seed=N
settings.register_profile("deterministic", derandomize=True, database=None)
settings.register_profile("fuzz", derandomize=False, database=None)
settings.load_profile("deterministic")


@pytest.fixture
def gen():
    """A seeded generator: every Monte Carlo test is reproducible."""
    return torch.Generator().manual_seed(1234)


def linear_gaussian(d=3, k=2, noise_std=0.5, seed=0, dtype=torch.float64, orthogonal=False):
    """A random LinearGaussian; orthogonal=True gives orthogonal columns of W (diagonal posterior
    cov)."""
    from vaelib.toy import LinearGaussian

    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=dtype)
    if orthogonal:
        Q, _ = torch.linalg.qr(W)
        W = Q * torch.linspace(0.8, 2.0, k, dtype=dtype)
    b = torch.randn(d, generator=g, dtype=dtype)
    return LinearGaussian(W, b, noise_std)


def pytest_terminal_summary(terminalreporter):
    """Print each notebook's core-path budget figures (words, visible code lines) after the run."""
    import sys

    meta = sys.modules.get("test_notebooks_meta") or next(
        (m for name, m in sys.modules.items() if name.endswith("test_notebooks_meta")), None
    )
    table = getattr(meta, "BUDGET_TABLE", None)
    if table:
        terminalreporter.section(
            f"core path of each notebook (budget: {meta.CORE_WORDS} words, "
            f"{meta.CORE_LINES} visible code lines)"
        )
        for stem, (words, equations, lines, figures, minutes) in sorted(table.items()):
            terminalreporter.write_line(
                f"{stem:40s} {words:5d} words {equations:3d} equations {lines:4d} code lines "
                f"{figures:3d} figures {minutes:4d} min"
            )


@pytest.fixture(scope="session")
def playwright():
    """Playwright's driver, started once for the browser tests (test_browser.py, test_book.py);
    skips without it."""
    sync_api = require_browser()
    pw = sync_api.sync_playwright().start()
    try:
        yield pw
    finally:
        pw.stop()
