"""Check yourself, notebook 04 (The KL identity): log p(x) = ELBO + KL, its direction, and theta."""

from vaelib.quiz import Question, Wrong

QUESTIONS = [
    Question(
        id="04.1",
        prompt=(
            "For the running example log p(x) = -2.014 nats. A Gaussian q has ELBO = -4.636 nats. "
            "What is KL(q(z|x) || p(z|x)), in nats?"
        ),
        kind="number",
        answer=2.622,
        rtol=2e-3,
        reason="log p(x) = ELBO + KL, so KL = log p(x) - ELBO = -2.014 + 4.636 = 2.622 nats.",
        wrong=[
            Wrong(
                -2.622,
                "the sign of the KL: a KL divergence is never negative, and the ELBO is the "
                "lower of the two numbers.",
            ),
            Wrong(
                -6.65,
                "you added the ELBO and log p(x); the identity says which of them is the sum.",
            ),
        ],
        hint="Re-read the boxed identity of section 1 and solve it for the KL.",
    ),
    Question(
        id="04.2",
        prompt=(
            "With the model's theta fixed, a gradient step on q's parameters phi raises the ELBO "
            "by 0.3 nats. What happens to log p_theta(x)?"
        ),
        kind="choice",
        choices={
            "a": "it rises by 0.3 nats",
            "b": "it does not change; KL(q || p(z|x)) falls by 0.3 nats",
            "c": "it falls by 0.3 nats, so that ELBO + KL stays the same",
        },
        answer="b",
        reason=(
            "log p_theta(x) contains no phi: every nat the ELBO gains over phi, the KL to the "
            "posterior loses."
        ),
        wrong=[
            Wrong(
                "a",
                "the bound rose, not necessarily what it bounds: which terms of the identity "
                "contain phi?",
            ),
            Wrong(
                "c",
                "the evidence is the fixed side of the identity when only q moves; which side "
                "of it depends on phi?",
            ),
        ],
        hint="Re-read section 3: which side of log p(x) = ELBO + KL depends on q?",
    ),
    Question(
        id="04.3",
        prompt=(
            "The posterior has two well separated modes. Which Gaussian q maximises the ELBO, "
            "i.e. minimises KL(q || p(z|x))?"
        ),
        kind="choice",
        choices={
            "a": "a narrow Gaussian on one mode",
            "b": "the Gaussian with the posterior's mean and variance, covering both modes",
            "c": "a Gaussian at the midpoint between the modes, as narrow as one mode",
        },
        answer="a",
        reason=(
            "KL(q || p) averages log(q/p) under q: q is punished for mass where p has none "
            "(the valley), not for missing a mode. It is mode-seeking."
        ),
        wrong=[
            Wrong(
                "b",
                "that Gaussian minimises the other direction, KL(p || q); ask which "
                "distribution the ELBO's KL averages under.",
            ),
            Wrong(
                "c",
                "look at where that q puts its mass and what the posterior's density is there.",
            ),
        ],
        hint="Re-read section 5, forward versus reverse KL, and its figure.",
    ),
    Question(
        id="04.4",
        prompt=(
            "A VAE's decoder theta is trained by maximising the ELBO with a Gaussian q. Does this "
            "give the maximum-likelihood theta?"
        ),
        kind="choice",
        choices={
            "a": "yes, always: maximising a lower bound maximises what it bounds",
            "b": "only if q can equal the exact posterior; otherwise generally not",
            "c": "never, not even when q can equal the exact posterior",
        },
        answer="b",
        reason=(
            "the ELBO is log p_theta(x) minus a gap that depends on theta: zero for every theta "
            "when q can be exact (EM), otherwise it tilts theta toward easy posteriors."
        ),
        wrong=[
            Wrong(
                "a",
                "the trap 'the ELBO over theta = maximum likelihood': the gap "
                "KL(q || p_theta(z|x)) also depends on theta.",
            ),
            Wrong(
                "c",
                "think of EM: when the E-step makes the gap 0 before every theta-step, what "
                "does the ELBO's maximum over theta become?",
            ),
        ],
        hint="Re-read section 6: which terms of the identity depend on theta?",
    ),
]
