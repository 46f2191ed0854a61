"""Check-yourself questions for notebook 08 · Autoencoder versus VAE (issue 23 item 8)."""

import math

from vaelib.quiz import Question, Wrong


def _kl(mu, sigma):
    """KL(N(mu, sigma^2) || N(0, 1)) in nats."""
    return 0.5 * (mu**2 + sigma**2 - 1 - math.log(sigma**2))


QUESTIONS = [
    Question(
        id="08.1",
        prompt=(
            "Decoded samples fall into three classes with frequencies (0.5, 0.3, 0.2); the "
            "training data have "
            "(0.4, 0.4, 0.2). What is the total variation (TV) between the two?"
        ),
        kind="number",
        answer=0.1,
        reason="TV = 1/2 (|0.5 - 0.4| + |0.3 - 0.4| + |0.2 - 0.2|) = 0.1.",
        wrong=[
            Wrong(
                0.2,
                "The TV has a factor 1/2 in front of the summed differences, so that it lies in "
                "[0, 1].",
            ),
            Wrong(0.02, "The TV sums absolute differences, not squared ones."),
        ],
        hint="Re-read the definition of the TV in 'In one minute'.",
    ),
    Question(
        id="08.2",
        prompt=(
            "An autoencoder reconstructs every one of the 2^64 binary 8x8 images perfectly, so "
            "its score "
            "p(x | z = f(x)) is 1 for each. What is the sum of its scores over all images?"
        ),
        kind="number",
        answer=2.0**64,
        reason=(
            "2^64 images each scored 1 sum to 2^64, not 1: a reconstruction score is not a "
            "probability "
            "distribution over images."
        ),
        wrong=[
            Wrong(
                1.0,
                "A probability distribution would sum to 1; add up what this score gives each "
                "image.",
            ),
            Wrong(2.0**-64, "Each image's score is 1, not 1/2^64; add them up."),
        ],
        hint="Re-read the paragraph after the log p(x) figure in section 4.",
    ),
    Question(
        id="08.3",
        prompt="Why is decoding z ~ N(0, I) a sampler for the VAE but not for the AE?",
        kind="choice",
        choices={
            "a": "The VAE's decoder is trained longer and so generalises better.",
            "b": (
                "The KL term pulls every q(z|x) towards N(0, I), so the prior covers the codes "
                "the decoder was trained on; the AE's codes sit in an arbitrary frame that no "
                "term ties to N(0, I)."
            ),
            "c": "The AE's decoder is deterministic, the VAE's is random.",
            "d": (
                "The VAE adds noise to its codes during training; that alone makes N(0, I) the "
                "right code distribution."
            ),
        },
        answer="b",
        reason=(
            "Only the KL term refers to the prior: it makes the aggregate posterior of the codes "
            "close to "
            "N(0, I), while the AE's loss is unchanged by any invertible affine map of its code."
        ),
        wrong=[
            Wrong(
                "a",
                "Both models were trained with the same settings; what in the loss refers to "
                "N(0, I)?",
            ),
            Wrong(
                "c",
                "Both decoders are deterministic functions of z; the difference lies in the codes.",
            ),
            Wrong(
                "d",
                "Noise alone: what stops the encoder from shrinking sigma(x) and spreading the "
                "means far "
                "apart? (Going deeper: noise without the KL term)",
            ),
        ],
        hint="Re-read the common-mistake box at the end of section 3.",
    ),
    Question(
        id="08.4",
        prompt=(
            "One latent coordinate of a VAE has q = N(mu, sigma^2) with mu = 0.5, sigma = 0.2. "
            "Rescale the code by "
            "c = 2 (mu -> 1.0, sigma -> 0.4; the decoder undoes it, so reconstructions are "
            "unchanged). By how many "
            "nats does this coordinate's KL(q || N(0, 1)) change (new minus old)?"
        ),
        kind="number",
        answer=_kl(1.0, 0.4) - _kl(0.5, 0.2),
        rtol=1e-3,
        reason=(
            "KL = 1/2 (mu^2 + sigma^2 - 1 - log sigma^2): 0.996 - 1.254 = -0.258 nats. The KL "
            "term sees the "
            "code's scale, so unlike the AE's loss the ELBO prefers one frame."
        ),
        wrong=[
            Wrong(
                0.0,
                "The AE's loss does not see the code's scale; does the VAE's KL term against "
                "N(0, 1)?",
            ),
            Wrong(_kl(0.5, 0.2) - _kl(1.0, 0.4), "Check the sign: new minus old."),
            Wrong(
                0.5 * 3 * (0.5**2 + 0.2**2),
                "You dropped part of the Gaussian KL: the -log sigma^2 term changes too when "
                "sigma doubles.",
            ),
        ],
        hint="Use the closed-form Gaussian KL of notebook 07, once for each (mu, sigma).",
    ),
]
