"""Check yourself, notebook 06 (The reparameterization trick)."""

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="06.1",
        prompt=(
            "f(z) = z^2 and q = N(mu = 1, sigma^2 = 0.25). One draw gives z = 1.5. What is the "
            "score-function estimate of dL/dmu from this draw?"
        ),
        kind="number",
        answer=4.5,
        rtol=1e-6,
        reason="f(z) * d log q / d mu = z^2 (z - mu) / sigma^2 = 2.25 * 0.5 / 0.25 = 4.5.",
        wrong=[
            Wrong(
                3.0, "that is the pathwise estimate f'(z) dz/dmu; this question asks for the score."
            ),
            Wrong(2.0, "that is the exact gradient 2 mu, not what one draw gives."),
            Wrong(
                2.25,
                "the score d log q / d mu divides z - mu by the variance sigma^2, not by sigma.",
            ),
            Wrong(
                1.125, "the score d log q / d mu is (z - mu) / sigma^2: include the 1 / sigma^2."
            ),
        ],
        hint="Re-read section 2: the estimate is f(z) times the score (z - mu) / sigma^2.",
    ),
    Question(
        id="06.2",
        prompt=(
            "Same f, q and draw (z = 1.5, i.e. eps = 1). What is the pathwise "
            "(reparameterization) estimate of dL/dmu?"
        ),
        kind="number",
        answer=3.0,
        rtol=1e-6,
        reason="f'(z) dz/dmu = 2z * 1 = 3.0.",
        wrong=[
            Wrong(
                4.5, "that is the score-function estimate; the pathwise one uses the slope f'(z)."
            ),
            Wrong(
                2.0, "that is the exact gradient, the average over draws, not one draw's estimate."
            ),
            Wrong(1.5, "dz/dmu = 1 multiplies f'(z); what is f'(z) for f = z^2?"),
        ],
        hint="Re-read section 3, line (3): f'(z) times dz/dmu, at z = mu + sigma eps.",
    ),
    Question(
        id="06.3",
        prompt=(
            "A VAE's loss draws z with torch.distributions.Normal(mu, sigma).sample() and adds the "
            "closed-form KL. What happens at loss.backward()?"
        ),
        kind="choice",
        choices={
            "a": "an error: the loss has no gradient",
            "b": "it runs; the encoder gets gradient from the KL term only, none from the "
            "reconstruction",
            "c": "it runs and gives the same gradients as sample_normal",
        },
        answer="b",
        reason=(
            ".sample() detaches z, so the reconstruction term cannot reach mu and log sigma^2; the "
            "KL term still can, so nothing fails."
        ),
        wrong=[
            Wrong(
                "a",
                "that happens when nothing in the loss needs a gradient; which term of a VAE's "
                "loss still depends on the encoder without going through z?",
            ),
            Wrong(
                "c",
                "ask whether the drawn z is in the graph: does .sample() keep its dependence on "
                "mu and sigma?",
            ),
        ],
        hint="Re-read section 5 and the cell that follows section 6.",
    ),
    Question(
        id="06.4",
        prompt=(
            "With q = N(mu = 1, sigma^2 = 0.25), what is the variance of the one-draw pathwise "
            "estimate 2z of dL/dmu for f(z) = z^2?"
        ),
        kind="number",
        answer=1.0,
        rtol=1e-6,
        reason="Var(2z) = 4 Var(z) = 4 sigma^2 = 1.",
        wrong=[
            Wrong(
                0.25, "that is Var(z); the estimate is 2z, and a factor a scales a variance by a^2."
            ),
            Wrong(0.5, "a factor a scales a variance by a^2, not by a."),
            Wrong(21.75, "that is the score-function estimate's variance; this asks about 2z."),
        ],
        hint="Re-read section 4: the pathwise estimate is 2z with z ~ q.",
    ),
]
