"""Check-yourself questions for notebook 09 · Training a VAE (issue 23 item 8)."""

import math

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="09.1",
        prompt="How many trainable numbers does the decoder's output layer Linear(400, 784) hold?",
        kind="number",
        answer=400 * 784 + 784,
        reason=(
            "A Linear(n_in, n_out) holds n_out x n_in weights and n_out biases: 313,600 + 784 "
            "= 314,384."
        ),
        wrong=[
            Wrong(400 * 784, "You counted the weights; a linear layer also has biases."),
            Wrong(400 * 784 + 400, "A layer has one bias per output, not one per input."),
        ],
        hint="Re-read the sentence before print(model) in section 2.",
    ),
    Question(
        id="09.2",
        prompt=(
            "F.binary_cross_entropy_with_logits(logits, x) with its default reduction='mean' "
            "returns 0.28 on a batch of "
            "128 images of D = 784 pixels (one z per image). What is -log p(x|z) per image, in "
            "nats?"
        ),
        kind="number",
        answer=0.28 * 784,
        reason=(
            "The default reduction averages over images and pixels; the ELBO sums over pixels "
            "and averages over "
            "images only, so multiply by D: 0.28 x 784 = 219.5 nats per image."
        ),
        wrong=[
            Wrong(
                0.28, "The default 'mean' runs over the pixels too: that number is nats per pixel."
            ),
            Wrong(
                0.28 * 128,
                "The ELBO is averaged over the batch, not summed; what about the pixels?",
            ),
            Wrong(
                0.28 * 784 * 128,
                "That is the sum over the whole batch; the question asks per image.",
            ),
        ],
        hint=(
            "Which dimensions does the default reduction average over, and which does the ELBO "
            "sum over?"
        ),
    ),
    Question(
        id="09.3",
        prompt=(
            "A test log-likelihood of -238.08 nats per image, for D = 784 pixels: how many bits "
            "per dimension "
            "(a positive number)?"
        ),
        kind="number",
        answer=238.08 / (784 * math.log(2)),
        rtol=1e-3,
        reason="bits/dim = -log p(x) / (D log 2) = 238.08 / (784 x 0.693) = 0.438.",
        wrong=[
            Wrong(238.08 / 784, "That is nats per dimension; one bit is log 2 nats."),
            Wrong(
                238.08 / math.log(2),
                "That is bits per image; divide by the number of dimensions too.",
            ),
            Wrong(
                -238.08 / (784 * math.log(2)), "Check the sign: bits per dimension count -log p(x)."
            ),
        ],
        hint="Re-read the definition of bits per dimension at the start of section 6.",
    ),
    Question(
        id="09.4",
        prompt="On test images, IWAE_1000 - ELBO = 3.47 nats per image. It is a lower bound on ...",
        kind="choice",
        choices={
            "a": "the ELBO's KL term, KL(q(z|x) || p(z)), averaged over images",
            "b": (
                "the average KL(q(z|x) || p(z|x)): how far the encoder's Gaussian is from the "
                "true posterior"
            ),
            "c": "nothing: it equals log p(x) - ELBO exactly",
            "d": "how much better a larger decoder would make log p(x)",
        },
        answer="b",
        reason=(
            "log p(x) - ELBO = KL(q(z|x) || p(z|x)) and IWAE_K <= log p(x), so IWAE_K - ELBO is "
            "at most that KL "
            "(on average over images)."
        ),
        wrong=[
            Wrong(
                "a",
                "That KL, against the prior, is part of the ELBO itself; the gap is a KL to "
                "another "
                "distribution.",
            ),
            Wrong("c", "IWAE_1000 still lies below log p(x): the rise bounds the gap from below."),
            Wrong("d", "The gap between a bound and log p(x) is about q, not about the decoder."),
        ],
        hint="Re-read section 6: which KL is the difference log p(x) - ELBO?",
    ),
    Question(
        id="09.5",
        prompt="Which picture is a draw from the model p_theta(x) of a Bernoulli VAE?",
        kind="choice",
        choices={
            "a": "the decoder's probabilities p_d(z) for a z ~ N(0, I)",
            "b": "the binary image from one coin flip per pixel with those probabilities",
            "c": "the reconstruction sigmoid(decoder(mu(x))) of a test image",
        },
        answer="b",
        reason=(
            "A draw is z ~ p(z) and then x ~ p(x|z): with a Bernoulli decoder, pixel noise is "
            "part of the model; "
            "the probabilities are E[x|z], a mean."
        ),
        wrong=[
            Wrong(
                "a",
                "That image is E[x|z], the mean of p(x|z) over the model's pixel noise, not a "
                "draw.",
            ),
            Wrong(
                "c",
                "A reconstruction starts from a data image; a draw from p(x) starts from the "
                "prior.",
            ),
        ],
        hint="Re-read the common-mistake box of section 4.",
    ),
]
