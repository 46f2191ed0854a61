"""Check yourself, notebook 00 (Start here): the loss of the VAE on one screen."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="00.1",
        prompt=(
            "One pixel is on (x_d = 1) and the decoder's logit for it is l_d = 0. What does this "
            "pixel add to the reconstruction loss (BCE with logits), in nats?"
        ),
        kind="number",
        answer=math.log(2),
        rtol=1e-3,
        reason=("the loss is -log p(x_d | z) = -log sigmoid(0) = -log 0.5 = log 2 ≈ 0.693 nats."),
        wrong=[
            Wrong(
                0.5,
                "that is the probability sigmoid(l_d) that the pixel is on; the loss is a "
                "negative log-probability.",
            ),
            Wrong(
                -math.log(2),
                "check the sign: that is the log-likelihood; the loss is its negative, and it is "
                "never below 0 for a binary pixel.",
            ),
            Wrong(1.0, "that is the value in bits (log base 2); the series counts in nats."),
        ],
        hint="Re-read the loss line of the VAE on one screen: BCE with logits is -log p(x_d | z).",
    ),
    Question(
        id="00.2",
        prompt=(
            "Write KL(N(mu, sigma^2) || N(0, 1)), the KL term of one latent dimension, as a "
            "function of mu and sigma (answer = lambda mu, sigma: ...; use math.log)."
        ),
        kind="expression",
        answer=lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
        at=[{"mu": 0.3, "sigma": 1.2}, {"mu": -1.5, "sigma": 0.4}, {"mu": 0.0, "sigma": 2.0}],
        reason=(
            "KL = ½(μ² + σ² − 1 − log σ²): zero only at μ = 0, σ = 1, the prior itself; the "
            "loss line computes it from logvar = log σ²."
        ),
        wrong=[
            Wrong(
                lambda mu, sigma: -0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2)),
                "check the sign: a KL divergence is never negative; the ELBO subtracts it, the "
                "loss adds it.",
            ),
            Wrong(
                lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma)),
                "the log term is of the variance σ², not of σ (the code's logvar is log σ²).",
            ),
            Wrong(
                lambda mu, sigma: 0.5 * (mu**2 + sigma**2 - math.log(sigma**2)),
                "at q = p(z) = N(0, 1) your expression is not 0; the KL of a distribution from "
                "itself is.",
            ),
        ],
        hint="Re-read the KL in the loss line; test your expression at mu = 0, sigma = 1.",
    ),
    Question(
        id="00.3",
        prompt=(
            "A batch of 64 images of 784 pixels: their −ELBO values (reconstruction summed over "
            "pixels plus KL) average 110 nats per image. What number does the loss of the VAE on "
            "one screen print for this batch?"
        ),
        kind="number",
        answer=110.0,
        rtol=1e-3,
        reason=(
            "the loss is the −ELBO per image averaged over the batch: 110 nats, the number that "
            "compares across batch sizes and with log p(x)."
        ),
        wrong=[
            Wrong(
                64 * 110.0,
                "that is the sum over the batch; the loss averages over the images (batch mean, "
                "not sum).",
            ),
            Wrong(
                110.0 / 784,
                "that also averages over the pixels, as F.binary_cross_entropy's default "
                "reduction does; the log-likelihood of an image is a sum over its pixels.",
            ),
            Wrong(
                110.0 / (64 * 784),
                "that averages over pixels and images; an image's log-likelihood is a sum over "
                "its pixels.",
            ),
        ],
        hint="Which dimensions does the loss sum over, and which one does it average over?",
    ),
    Question(
        id="00.4",
        prompt=(
            "Give the linear-Gaussian toy model's encoder the exact posterior, q(z|x) = p(z|x). "
            "The one-sample estimate log p(x, z) − log q(z|x), with z drawn from q, is then:"
        ),
        kind="choice",
        choices={
            "a": "equal to log p(x) for every draw of z",
            "b": "equal to log p(x) on average, different from draw to draw",
            "c": "below log p(x) by KL(q(z|x) || p(z))",
        },
        answer="a",
        reason=(
            "p(x, z) = p(x) p(z|x), so with q = p(z|x) the ratio p(x, z)/q(z|x) is p(x) whatever "
            "z is: the bound is tight and the estimate has zero variance."
        ),
        wrong=[
            Wrong(
                "b",
                "that describes the closed-form-KL estimator log p(x|z) − KL; look at the ratio "
                "p(x, z)/q(z|x) itself when q is the posterior.",
            ),
            Wrong(
                "c",
                "the gap between log p(x) and the ELBO is a KL from q to the posterior, not to "
                "the prior.",
            ),
        ],
        hint="Write p(x, z) = p(x) p(z|x) and put it into the estimate.",
    ),
]
