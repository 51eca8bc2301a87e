"""How strong a backup password must be, derived from what an offline attacker can do.

Who this is about: someone holding the vault's HSM PIN, its TPM and all its storage
(the vault operator, or whoever takes all three from it). The attempt limit does not
bind them; they can guess a record's password offline against its OPAQUE envelope,
and each guess costs one run of OPAQUE's client login finish, its memory-hard
Argon2id key stretching included (docs/threat-model.md, "The vault operator").

The budget we defend against: a well-funded attacker with ``ATTACKER_CORES`` (10,000)
cores for ``ATTACKER_SECONDS`` (one year) at today's ``OFFLINE_GUESSES_PER_SECOND_PER_CORE``
(90): 90 × 10,000 × 3.16e7 ≈ 2.8e13 guesses, about 44.7 bits.

A password must need ``SAFETY_MARGIN`` (100) times that many guesses: about 2.8e15
guesses, 51.3 bits; said otherwise, a century of that attacker at today's speed. The
margin covers hardware getting cheaper over the years a backup sits in a cloud folder,
attackers richer than the budget, and the estimate itself: zxcvbn does not know which
word list a passphrase was drawn from, so it rates random common words above their
real entropy (three words drawn from the 7,776 commonest 4-8 letter English words carry
38.8 bits; zxcvbn gives them a median of 53). Four such words (51.7 bits) just meet the
bar; five (64.6 bits) are comfortably over.

Guesses are estimated with zxcvbn (Dropbox's estimator: dictionaries, common
passwords, names, keyboard walks, repeats, sequences, dates, l33t substitutions),
never by counting character classes. The meter (`strength`) and the rule (`problem`)
read the same estimate: the meter shows 4 exactly when the rule is met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from zxcvbn import zxcvbn
from zxcvbn.feedback import get_feedback

# Offline guesses per second on one core: one guess is one run of OPAQUE's client
# login finish with its KSF, measured by `bench/bench_vault.py::_offline_guess_rate`
# (89.8 and 90.4 on one core of a 2-core AMD EPYC machine, 2026-12-01; see
# docs/threat-model.md). `python -m bench vault` prints the current figure as
# "offline password guesses/s on one core"; if the KSF or the hardware changes,
# update this and the threshold follows.
OFFLINE_GUESSES_PER_SECOND_PER_CORE = 90.0
ATTACKER_CORES = 10_000
ATTACKER_SECONDS = 365.25 * 86_400  # one year
SAFETY_MARGIN = 100
MIN_PASSWORD_LENGTH = 12
# zxcvbn refuses longer input (its matching is superlinear). A longer password is
# judged by its first 72 characters, which can only underestimate it.
ESTIMATE_MAX_LENGTH = 72

_MINUTE = 60.0
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_YEAR = 365.25 * _DAY
_DURATION_UNITS = (
    (100 * _YEAR, "century", "centuries"),
    (_YEAR, "year", "years"),
    (_YEAR / 12, "month", "months"),
    (_DAY, "day", "days"),
    (_HOUR, "hour", "hours"),
    (_MINUTE, "minute", "minutes"),
    (1.0, "second", "seconds"),
)
# zxcvbn's advice that does not fit this rule: we give our own "add words" advice,
# and a longer keyboard pattern is still a keyboard pattern.
_UNHELPFUL_SUGGESTIONS = frozenset(
    {
        "Add another word or two. Uncommon words are better.",
        "Use a longer keyboard pattern with more turns.",
        "Use a few words, avoid common phrases.",
        "No need for symbols, digits, or uppercase letters.",
    }
)


def attacker_guesses_per_second(rate_per_core: float | None = None) -> float:
    """The budget attacker's speed: every core guessing at `rate_per_core` (by default
    `OFFLINE_GUESSES_PER_SECOND_PER_CORE`, read at call time)."""
    rate = OFFLINE_GUESSES_PER_SECOND_PER_CORE if rate_per_core is None else rate_per_core
    return rate * ATTACKER_CORES


def attacker_budget(rate_per_core: float | None = None) -> float:
    """Guesses the budget attacker makes in its time: about 2.8e13 at 90/s/core."""
    return attacker_guesses_per_second(rate_per_core) * ATTACKER_SECONDS


def required_guesses(rate_per_core: float | None = None) -> float:
    """The estimated guesses a password must exceed: the budget times the margin,
    about 2.8e15 at 90/s/core."""
    return attacker_budget(rate_per_core) * SAFETY_MARGIN


def required_bits(rate_per_core: float | None = None) -> float:
    """`required_guesses` in bits: about 51.3 at 90/s/core."""
    return math.log2(required_guesses(rate_per_core))


@dataclass(frozen=True)
class Estimate:
    """zxcvbn's estimate for one password, and its advice."""

    guesses: float
    warning: str
    suggestions: tuple[str, ...]

    @property
    def bits(self) -> float:
        return math.log2(max(self.guesses, 1.0))

    @property
    def seconds_to_guess(self) -> float:
        """How long the budget attacker takes to try this many guesses."""
        return self.guesses / attacker_guesses_per_second()


def estimate(password: str) -> Estimate:
    result: dict[str, Any] = zxcvbn(password[:ESTIMATE_MAX_LENGTH])
    guesses = float(result["guesses"])
    # zxcvbn keeps its advice for passwords it scores 0-2; ours must clear a far
    # higher bar, so ask for the advice as if the score were 0.
    feedback: dict[str, Any] = get_feedback(0, result["sequence"])
    warning = str(feedback.get("warning") or "")
    suggestions = tuple(
        str(s) for s in feedback.get("suggestions", []) if s not in _UNHELPFUL_SUGGESTIONS
    )
    return Estimate(guesses, warning, suggestions)


def describe_duration(seconds: float) -> str:
    """'less than a second', 'about a day', 'about 3 months', 'about 40 years'."""
    if seconds < 1:
        return "less than a second"
    for size, one, many in _DURATION_UNITS:
        if seconds >= size:
            count = round(seconds / size)
            if count == 1:
                article = "an" if one == "hour" else "a"
                return f"about {article} {one}"
            return f"about {count:,} {many}"
    raise AssertionError("unreachable: seconds >= 1 matches the last unit")


def meets_policy(password: str, guesses: float) -> bool:
    return len(password) >= MIN_PASSWORD_LENGTH and guesses > required_guesses()


def problem(password: str) -> str | None:
    """A sentence saying why the password is too weak, or None when it is strong enough."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return (
            f"Use at least {MIN_PASSWORD_LENGTH} characters; "
            "a few unusual words are easiest to remember."
        )
    found = estimate(password)
    if meets_policy(password, found.guesses):
        return None
    parts = [
        f"This password could be guessed in {describe_duration(found.seconds_to_guess)} "
        "by someone holding the vault's data; add a few more unusual words."
    ]
    if found.warning:
        parts.append(found.warning)
    parts.extend(found.suggestions)
    return " ".join(parts)


# Meter steps below "strong enough", as the budget attacker's time to guess: under a
# second is 0, under a day 1, under a year 2, short of the margin 3.
_STRENGTH_STEPS = (1.0, _DAY, ATTACKER_SECONDS)


def strength(password: str) -> int:
    """0-4 for the meter, from the same estimate as `problem`: 4 iff it is None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return 0
    found = estimate(password)
    if meets_policy(password, found.guesses):
        return 4
    return sum(found.seconds_to_guess >= step for step in _STRENGTH_STEPS)
