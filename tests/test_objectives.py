"""vaelib.objectives: the ELBO, IWAE_K and DReG objectives, fit with them, and gradient_snr.

Oracles: IWAE_K written out by hand with torch.distributions and a naive log(mean(exp(.))) (value
and gradient); DReG against IWAE through their mean gradients over many draws of the same noise (a
paired Monte Carlo test, which the biased "sticking the landing" variant fails); gradient_snr
against the closed-form mean and standard deviation of a linear-Gaussian decoder's bias gradient.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from vaelib import checkpoints, data, objectives, train
from vaelib.history import History
from vaelib.models import VAE, Autoencoder, LossTerms
from vaelib.registry import OBJECTIVES

KW = dict(batch_size=128, progress=False)


@pytest.fixture(scope="module")
def digits():
    x, _ = data.load("digits", "train")
    return x[:512]


def tiny(likelihood="bernoulli", seed=0, D=6, k=2, hidden=(5,)):
    torch.manual_seed(seed)
    kw = dict(sigma_x=0.7, learn_sigma_x=True) if likelihood == "gaussian" else {}
    return VAE(D, k, hidden, likelihood=likelihood, **kw).double()


def batch(likelihood, B=4, D=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(B, D, generator=g, dtype=torch.float64)
    return torch.bernoulli(x, generator=g) if likelihood == "bernoulli" else x


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_seconds(h):
    return {k: v for k, v in h.items() if k != "seconds"}


def grads(model, loss):
    return torch.autograd.grad(loss, list(model.parameters()))


# -- the registry
# ----------------------------------------------------------------------------------------


def test_declared_facts_equal_the_objects():
    assert OBJECTIVES.names() == ("elbo", "iwae", "iwae-dreg")
    for name in OBJECTIVES.names():
        obj = OBJECTIVES.get(name)
        assert (obj.name, obj.help, obj.scale) == (name, OBJECTIVES.help(name), None)
        assert obj.uses_K == (name != "elbo")


# -- IWAE_K against a hand-written log-mean-exp
# ------------------------------------------------------


def hand_written_iwae_loss(model, x, K, seed):
    """-(1/B) sum_b log((1/K) sum_i exp(log w_i)), every density from torch.distributions."""
    g = torch.Generator().manual_seed(seed)
    mu, logvar = model.encode(x)  # (B, k)
    eps = torch.randn((K, *mu.shape), generator=g, dtype=mu.dtype)  # (K, B, k)
    sd = torch.exp(0.5 * logvar)
    z = mu + sd * eps
    out = model.decode(z)  # (K, B, D)
    if model.likelihood == "bernoulli":
        log_px_z = Bernoulli(logits=out).log_prob(x).sum(-1)
    else:
        log_px_z = Normal(out, torch.exp(model.log_sigma_x)).log_prob(x).sum(-1)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mu, sd).log_prob(z).sum(-1)
    w = torch.exp(log_px_z + log_pz - log_qz)  # (K, B): finite for this small model
    return -torch.log(w.mean(0)).mean(), (log_px_z.mean(0), (log_qz - log_pz).mean(0))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("K", [1, 7])
def test_iwae_loss_value_and_gradient_equal_hand_written(likelihood, K):
    model, x = tiny(likelihood), batch(likelihood)
    want, (log_px_z, kl) = hand_written_iwae_loss(model, x, K, seed=3)
    got = OBJECTIVES.get("iwae").loss_terms(
        model, x, K=K, generator=torch.Generator().manual_seed(3)
    )
    # float64 and the same noise: the two routes differ by rounding only (~1e-15 relative)
    torch.testing.assert_close(got.loss, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.log_px_z, log_px_z.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.kl, kl.detach(), rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(model, got.loss), grads(model, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_dreg_value_and_decoder_gradient_equal_iwae():
    """Same noise: the same IWAE_K value and the same decoder gradient; only the encoder's
    differs."""
    model, x = tiny(), batch("bernoulli")
    out = {}
    for name in ("iwae", "iwae-dreg"):
        terms = OBJECTIVES.get(name).loss_terms(
            model, x, K=5, generator=torch.Generator().manual_seed(4)
        )
        out[name] = terms.loss, grads(model, terms.loss)
    assert torch.equal(out["iwae"][0], out["iwae-dreg"][0])
    names = [n for n, _ in model.named_parameters()]
    differ = []
    for n, a, b in zip(names, out["iwae"][1], out["iwae-dreg"][1]):
        if n.startswith("decoder."):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
        elif not torch.allclose(a, b):
            differ.append(n)
    assert differ  # the encoder's gradient is another estimator (with K = 5 it is not IWAE's)


def paired_mean_gradients(model, x, K, names, R=40, copies=150, seed=0):
    """Per group r of `copies` copies of x (independent noise each): the mean encoder gradient of
    every objective in `names`, all from the same noise. Returns {name: (R, P_enc)}."""
    xr = x.repeat(copies, 1)  # (copies * B, D): the batch mean averages `copies` draws per example
    enc = [p for n, p in model.named_parameters() if not n.startswith("decoder.")]
    out = {n: [] for n in names}
    g = torch.Generator().manual_seed(seed)
    for _ in range(R):
        state = g.get_state()
        for n in names:
            g.set_state(state)
            loss = OBJECTIVES.get(n).loss_terms(model, xr, K=K, generator=g).loss
            out[n].append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, enc)]))
    return {n: torch.stack(v) for n, v in out.items()}


def stl_iwae_loss_terms(model, x, beta=1.0, n_samples=1, K=None, generator=None):
    """IWAE_K with q's parameters detached inside log q and no second weight: biased for K > 1."""
    log_w = objectives.iwae_log_weights(model, x, K, generator, detach_q=True)[0]
    loss = -(torch.logsumexp(log_w, 0) - math.log(K)).mean()
    return LossTerms(loss, None, None)


def test_dreg_mean_encoder_gradient_equals_iwae_within_standard_errors():
    """Unbiased: E[DReG] = E[IWAE gradient] = grad IWAE_K for the encoder.

    Paired draws (the same z for both): the difference d_r of the two group means has mean 0; its
    z-score mean(d) / se(d) per parameter (R = 40 groups of 150 draws per example) stays below 4.5
    for every one of the encoder's parameters (chance of a false alarm ~ P * 7e-6). The same test
    catches the biased variant without DReG's second weight (STL applied to IWAE, Tucker et al.
    2019, sec. 4): its z-scores reach well beyond 4.5.
    """
    model, x = tiny(), batch("bernoulli", B=2)
    stl = type("STL", (), {"loss_terms": staticmethod(stl_iwae_loss_terms)})()
    OBJECTIVES._entries["stl-test"] = {"help": "", "scale": None, "object": stl, "where": None}
    try:
        g = paired_mean_gradients(model, x, K=8, names=("iwae", "iwae-dreg", "stl-test"))
    finally:
        OBJECTIVES.unregister("stl-test")

    live = g["iwae"].std(0) > 0  # parameters of ReLU units dead for both examples: exactly 0
    assert int(live.sum()) >= 15

    def z_scores(a, b):
        d = (a - b)[:, live]  # (R, P_live)
        se = d.std(0, correction=1) / math.sqrt(d.shape[0])
        return (d.mean(0) / se).abs()

    assert float(z_scores(g["iwae-dreg"], g["iwae"]).max()) < 4.5
    assert float(z_scores(g["stl-test"], g["iwae"]).max()) > 6.0
    # and DReG is less noisy than IWAE here (its point): smaller spread of the group means
    spread = {n: float(g[n][:, live].std(0).median()) for n in ("iwae", "iwae-dreg")}
    assert spread["iwae-dreg"] < spread["iwae"]


@pytest.mark.parametrize("prior", ["vamp", "mog"])
def test_dreg_stays_unbiased_with_a_learned_prior(prior):
    """A VampPrior depends on the encoder's weights (its components are q at the pseudo-inputs), so
    log p(z) reaches the encoder by a path that is not z's: DReG's second weight must touch only
    the gradient through z, and the prior's own path keeps IWAE's weight. Unbiased as above: the
    paired z-scores of DReG against IWAE stay below 4.5 for every encoder and prior parameter
    (the pseudo-inputs and the mixture's parameters included)."""
    torch.manual_seed(0)
    model = VAE(6, 2, (5,), prior=prior, prior_options={"n_components": 3}).double()
    x = batch("bernoulli", B=2)
    g = paired_mean_gradients(model, x, K=8, names=("iwae", "iwae-dreg"))
    names = [n for n, p in model.named_parameters() if not n.startswith("decoder.")]
    sizes = [p.numel() for n, p in model.named_parameters() if not n.startswith("decoder.")]
    owner = [n for n, size in zip(names, sizes) for _ in range(size)]  # parameter of each column
    live = g["iwae"].std(0) > 0
    assert any(owner[i].startswith("prior.") for i in range(len(owner)) if live[i])
    d = (g["iwae-dreg"] - g["iwae"])[:, live]
    z = (d.mean(0) / (d.std(0, correction=1) / math.sqrt(d.shape[0]))).abs()
    assert float(z.max()) < 4.5


def test_elbo_objective_is_the_models_own_loss():
    model, x = tiny(), batch("bernoulli")
    a = OBJECTIVES.get("elbo").loss_terms(
        model, x, 0.5, 3, generator=torch.Generator().manual_seed(2)
    )
    b = model.loss_terms(x, 0.5, 3, torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# -- fit with an objective
# -------------------------------------------------------------------------------


def test_fit_elbo_objective_unchanged(digits):
    """objective="elbo" (and None) is the loss fit always had: the same weights bit for bit."""
    torch.manual_seed(0)
    a = VAE(64, 2, (16,))
    torch.manual_seed(0)
    b = VAE(64, 2, (16,))
    ha = train.fit(a, digits, 2, seed=3, **KW)
    hb = train.fit(b, digits, 2, seed=3, objective="elbo", **KW)
    assert same_weights(a, b) and without_seconds(ha) == without_seconds(hb)
    assert ha["objective"] == ["elbo", "elbo"] and ha["K"] == [None, None]


def test_fit_iwae_records_objective_and_resumes_bit_for_bit(digits, tmp_path):
    torch.manual_seed(0)
    a = VAE(64, 2, (16,))
    torch.manual_seed(0)
    b = VAE(64, 2, (16,))
    h3 = train.fit(a, digits, 3, seed=1, objective="iwae", K=4, **KW)
    assert h3["objective"] == ["iwae"] * 3 and h3["K"] == [4] * 3
    h2 = train.fit(b, digits, 2, seed=1, objective="iwae", K=4, **KW)
    checkpoints.save_checkpoint(tmp_path / "m.pt", b, history=h2)
    ck = checkpoints.load_checkpoint(tmp_path / "m.pt", with_state=True)
    h = train.fit(ck.model, digits, 1, seed=1, history=ck.history, **KW)  # objective, K: recorded
    assert same_weights(a, ck.model)
    assert without_seconds(h) == without_seconds(h3)
    # the history's ELBO is an ELBO: log_px_z - kl, and below the IWAE-trained bound on average
    assert all(abs(e - (r - k)) < 1e-9 for e, r, k in zip(h["elbo"], h["log_px_z"], h["kl"]))


def test_fit_dreg_trains_and_an_old_history_fills_elbo(digits):
    torch.manual_seed(0)
    m = VAE(64, 2, (16,))
    h = train.fit(m, digits, 2, seed=1, objective="iwae-dreg", K=3, **KW)
    assert h["objective"] == ["iwae-dreg"] * 2 and all(math.isfinite(v) for v in h["elbo"])
    old = History({k: v for k, v in h.items() if k not in ("objective", "K")})
    h2 = train.fit(m, digits, 1, seed=1, history=old, **KW)
    assert h2["objective"] == ["elbo", "elbo", "elbo"] and h2["K"] == [None] * 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(objective="nope"), "objective must be one of 'elbo', 'iwae', 'iwae-dreg'"),
        (dict(objective="elbo", K=5), "K=5 is the number of importance samples"),
        (dict(objective="iwae"), "needs K"),
        (dict(objective="iwae", K=0), "K"),
        (dict(objective="iwae", K=5, beta=0.5), "beta=0.5"),
        (dict(objective="iwae", K=5, warmup_epochs=2), "warmup_epochs=2"),
        (dict(objective="iwae-dreg", K=5, n_samples=2), "n_samples=2"),
    ],
    ids=["unknown", "K-with-elbo", "no-K", "K-0", "beta", "warmup", "n_samples"],
)
def test_fit_rejects_bad_objective_arguments(digits, kwargs, match):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match=match):
        train.fit(VAE(64, 2, (16,)), digits, 1, **KW, **kwargs)


def test_fit_iwae_needs_a_vae(digits):
    torch.manual_seed(0)
    with pytest.raises(TypeError, match="vaelib.models.VAE"):
        train.fit(Autoencoder(64, 2, (16,)), digits, 1, objective="iwae", K=3, **KW)


# -- gradient SNR
# ----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:VAE has a fixed sigma_x")  # sigma_x is the oracle's
def test_gradient_snr_matches_closed_form_for_a_linear_gaussian_decoder_bias():
    """Linear decoder W z + b, fixed sigma_x = s, ELBO with one sample: d loss / d b =
    -(1/(B s^2)) sum_b (x_b - W z_b - b), z_b = mu_b + sd_b eps_b, so the gradient is Gaussian with
    mean -(1/(B s^2)) sum_b (x_b - W mu_b - b) and variance (1/(B s^2))^2 sum_b sum_j W_dj^2
    sd_bj^2 per element d. With R = 500 draws: the mean within 4 standard errors, the std within
    4 of its relative standard errors 1 / sqrt(2 (R - 1)) = 3.2%."""
    torch.manual_seed(0)
    s, D, B, R = 0.5, 5, 3, 500
    model = VAE(D, 2, (), likelihood="gaussian", sigma_x=s).double()
    x = torch.rand(B, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    res = objectives.gradient_snr(
        model, x, "elbo", n_draws=R, generator=torch.Generator().manual_seed(6)
    )
    W, b = model.decoder.to_mean.weight.detach(), model.decoder.to_mean.bias.detach()
    with torch.no_grad():
        mu, logvar = model.encode(x)
    mean = -(x - mu @ W.T - b).sum(0) / (B * s**2)  # (D,)
    std = torch.sqrt((torch.exp(logvar) @ (W**2).T).sum(0)) / (B * s**2)  # (D,)
    got_mean, got_std = res.decoder_mean[-D:], res.decoder_std[-D:]  # the bias follows the weight
    assert bool(((got_mean - mean).abs() < 4 * std / math.sqrt(R)).all())
    assert bool(((got_std / std - 1).abs() < 4 / math.sqrt(2 * (R - 1))).all())
    torch.testing.assert_close(res.decoder[-D:], got_mean.abs() / got_std)
    assert res.encoder.shape == (
        sum(
            p.numel()
            for n, p in model.named_parameters()
            if "to_" in n and not n.startswith("decoder.")
        ),
    )


def test_gradient_snr_of_the_elbo_grows_like_sqrt_of_its_samples():
    """The ELBO's gradient with n_samples = M averages M independent single-sample gradients (the
    closed-form KL's gradient is exact): its std falls by sqrt(M) exactly and the SNR rises by
    sqrt(M). Median over elements of the ratio, M = 9: 3 within 7% (R = 400 draws: each ratio's
    relative standard error is about sqrt(2 / (2 (R - 1))) = 5%, the median's over ~50 elements is
    a fraction of that)."""
    model, x = tiny("bernoulli"), batch("bernoulli")
    one = objectives.gradient_snr(
        model, x, "elbo", n_draws=400, generator=torch.Generator().manual_seed(7)
    )
    nine = objectives.gradient_snr(
        model, x, "elbo", n_draws=400, n_samples=9, generator=torch.Generator().manual_seed(8)
    )
    ratio = torch.cat([one.decoder_std / nine.decoder_std, one.encoder_std / nine.encoder_std])
    assert abs(float(torch.nanmedian(ratio)) - 3.0) < 0.2


def test_gradient_snr_rejects_bad_input():
    model, x = tiny(), batch("bernoulli")
    with pytest.raises(ValueError, match="n_draws"):
        objectives.gradient_snr(model, x, "iwae", K=2, n_draws=1)
    with pytest.raises(ValueError, match="K"):
        objectives.gradient_snr(model, x, "iwae", n_draws=5)
    with pytest.raises(ValueError, match="objective must be one of"):
        objectives.gradient_snr(model, x, "nope", n_draws=5)
