"""Check yourself, notebook 07 (From the ELBO to a training loss)."""

import math

from vaelib.quiz import Question, Wrong

_POINTS = [
    {"mu": 0.0, "sigma": 1.0},
    {"mu": 0.8, "sigma": 0.5},
    {"mu": -1.5, "sigma": 1.2},
    {"mu": 0.3, "sigma": 0.1},
]

QUESTIONS = [
    Question(
        id="07.1",
        prompt=(
            "Write KL(N(mu, sigma^2) || N(0, 1)), one latent dimension's KL to the prior, as a "
            "function of mu and sigma (answer = lambda mu, sigma: ...; use math.log)."
        ),
        kind="expression",
        answer=lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
        at=_POINTS,
        rtol=1e-9,
        atol=1e-12,
        reason=(
            "1/2 (mu^2 + sigma^2 - 1 - log sigma^2): a cost mu^2 / 2 for the mean and a spread "
            "cost that is 0 only at sigma = 1."
        ),
        wrong=[
            Wrong(
                lambda mu, sigma: -0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
                "the sign of the KL: a KL is never negative, and yours is negative away from the "
                "prior.",
            ),
            Wrong(
                lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma)),
                "check the log term: the entropy part comes from the log-density, which contains "
                "the log of the variance.",
            ),
            Wrong(
                lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1),
                "with no log term a very narrow q would cost less than the prior itself; which "
                "part of log q did you drop?",
            ),
        ],
        hint="Re-read section 3, lines (a) to (e).",
    ),
    Question(
        id="07.2",
        prompt=(
            "A Gaussian decoder with fixed sigma_x = 0.1. Training on -ELBO is the same as "
            "minimising squared error + beta * KL for which beta?"
        ),
        kind="number",
        answer=0.02,
        rtol=1e-6,
        reason=(
            "multiply -ELBO by 2 sigma_x^2: SSE + 2 sigma_x^2 KL + const, so "
            "beta = 2 * 0.01 = 0.02."
        ),
        wrong=[
            Wrong(0.01, "the squared error is divided by 2 sigma_x^2, not sigma_x^2: keep the 2."),
            Wrong(0.1, "beta involves the noise variance, not the standard deviation."),
            Wrong(
                50.0,
                "that is the factor in front of the squared error; scale the loss so the squared "
                "error has weight 1 and read off the KL's weight.",
            ),
        ],
        hint="Re-read section 4: multiply -ELBO by 2 sigma_x^2.",
    ),
    Question(
        id="07.3",
        prompt=(
            "A minibatch of B = 32 images with D = 64 pixels. The loss is F.mse_loss(x_hat, x) "
            "(default reduction='mean') + kl.sum(-1).mean(). Up to a positive factor this is "
            "squared error + beta * KL per image; what is beta?"
        ),
        kind="number",
        answer=64.0,
        rtol=1e-6,
        reason=(
            "mse_loss(mean) divides the summed squared error by B * D, the KL term only by B: "
            "relative to the squared error the KL weighs D = 64."
        ),
        wrong=[
            Wrong(
                1.0,
                "batch mean vs sum: the default reduction averages over pixels as well as over "
                "the batch, and the KL is not divided by the pixels.",
            ),
            Wrong(
                32.0, "both terms are averaged over the batch; count what else the mean divides by."
            ),
            Wrong(2048.0, "the batch average is shared by both terms and cancels in the ratio."),
        ],
        hint="Re-read Going deeper: sum versus mean: what does each term divide by?",
    ),
    Question(
        id="07.4",
        prompt=(
            "A Bernoulli decoder outputs the logit l_d = 2 for a pixel that is on (x_d = 1). "
            "What does this pixel add to -log p(x | z), in nats?"
        ),
        kind="number",
        answer=math.log1p(math.exp(-2.0)),
        rtol=1e-4,
        reason="-[x_d l_d - softplus(l_d)] = softplus(2) - 2 = log(1 + e^-2) ≈ 0.127 nats.",
        wrong=[
            Wrong(
                1 / (1 + math.exp(-2.0)),
                "that is the probability sigmoid(l_d) that the pixel is on; the loss is a "
                "negative log-probability.",
            ),
            Wrong(math.log1p(math.exp(2.0)), "that is the loss for a pixel that is off (x_d = 0)."),
            Wrong(
                -math.log1p(math.exp(-2.0)),
                "check the sign: that is log p; the loss is its negative and never below 0.",
            ),
        ],
        hint="Re-read section 5, line (c): log p = x_d l_d - softplus(l_d).",
    ),
]
