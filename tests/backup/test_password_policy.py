"""The backup password policy, with the real zxcvbn estimator.

The rule follows from the measured offline cost of one guess (OPAQUE's client finish
with its KSF): the password's estimated guess count must exceed a budget attacker's
guesses times a margin, and the meter shows "strong enough" exactly when it does."""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from app.backup import password_policy, service
from app.backup.errors import BackupError

# Common words of 4-8 letters, as many as a diceware list has: zxcvbn knows every one
# of them, so passphrases drawn from it are the estimator's hardest case.
WORDS = [w for w in FREQUENCY_LISTS["english_wikipedia"] if w.isalpha() and 4 <= len(w) <= 8][:7776]
PROBLEM = re.compile(
    r"^This password could be guessed in (less than a second|about (an?|[\d,]+) \w+) "
    r"by someone holding the vault's data; add a few more unusual words\."
)


def _passphrase(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


@pytest.mark.parametrize(
    "password",
    [
        "",
        "short",
        "hunter2",
        "password",
        "password1234",
        "iloveyou1234",
        "P@ssw0rd12345678",
        "Password2024!",
        "qwertyuiopasdfgh",
        "1qaz2wsx3edc4rfv",
        "asdfghjkl;'",
        "aaaaaaaaaaaaaaaa",
        "abcdefghijklmnop",
        "hunter2hunter2hunter2",
        "correct horse battery",
        "tangerine-submarine-42",
        "Tr0ub4dor&3xyz",
    ],
)
def test_common_short_and_patterned_passwords_are_refused(password: str) -> None:
    problem = service.password_problem(password)
    assert problem is not None
    assert service.password_strength(password) < 4
    if len(password) < password_policy.MIN_PASSWORD_LENGTH:
        assert f"at least {password_policy.MIN_PASSWORD_LENGTH} characters" in problem
    else:
        assert PROBLEM.match(problem), problem


def test_the_sentence_says_how_long_and_passes_on_zxcvbns_warning() -> None:
    problem = service.password_problem("qwertyuiopasdfgh")
    assert problem is not None
    assert problem.startswith("This password could be guessed in less than a second")
    # zxcvbn's own warning follows our sentence.
    assert "common" in problem or "keyboard" in problem or "Straight rows" in problem
    problem = service.password_problem("correct horse battery")
    assert problem is not None
    assert re.search(r"in about \d+ years", problem), problem


@pytest.mark.parametrize("seed", range(20))
def test_five_random_common_words_are_accepted(seed: int) -> None:
    password = _passphrase(random.Random(seed), 5)
    assert service.password_problem(password) is None, password
    assert service.password_strength(password) == 4
    assert password_policy.estimate(password).bits > password_policy.required_bits() + 10


def test_a_fixed_passphrase_and_a_very_long_one_are_accepted() -> None:
    assert service.password_problem("zebra quantum mitten gravel orchid") is None
    # zxcvbn refuses input over 72 characters; we judge the first 72 instead.
    long = "zebra quantum mitten gravel orchid " * 4
    assert len(long) > password_policy.ESTIMATE_MAX_LENGTH
    assert service.password_problem(long) is None
    assert service.password_problem("a" * 200) is not None


def test_the_budget_arithmetic() -> None:
    rate = password_policy.OFFLINE_GUESSES_PER_SECOND_PER_CORE
    assert rate == 90
    budget = password_policy.attacker_budget()
    assert budget == rate * 10_000 * 365.25 * 86_400
    assert budget == pytest.approx(2.84e13, rel=0.01)
    assert math.log2(budget) == pytest.approx(44.7, abs=0.05)
    required = password_policy.required_guesses()
    assert required == budget * password_policy.SAFETY_MARGIN
    assert required == pytest.approx(2.84e15, rel=0.01)
    assert password_policy.required_bits() == pytest.approx(51.3, abs=0.05)
    # The threshold follows from the measured rate: a faster guess needs a stronger password.
    assert password_policy.required_guesses(2 * rate) == 2 * required
    assert password_policy.required_bits(2 * rate) == pytest.approx(
        password_policy.required_bits() + 1
    )
    assert password_policy.required_guesses(rate / 2) < required


def test_a_faster_measured_guess_rate_refuses_passwords_that_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "Correct-Horse-42-battery"  # about 56.5 bits by zxcvbn
    assert service.password_problem(password) is None
    monkeypatch.setattr(
        password_policy,
        "OFFLINE_GUESSES_PER_SECOND_PER_CORE",
        password_policy.OFFLINE_GUESSES_PER_SECOND_PER_CORE * 100,
    )
    assert password_policy.required_bits() > 57
    assert service.password_problem(password) is not None
    assert service.password_strength(password) < 4


def test_the_meter_steps_follow_the_attackers_time() -> None:
    # less than a second, under a day, under a year, short of the margin, enough
    assert service.password_strength("password1234") == 0
    assert service.password_strength("Password2024!") == 1
    assert service.password_strength("tangerine-submarine-42") == 2
    assert service.password_strength("correct horse battery") == 3
    assert service.password_strength("Correct-Horse-42-battery") == 4
    assert service.password_strength("short") == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.2, "less than a second"),
        (1, "about a second"),
        (45, "about 45 seconds"),
        (3600, "about an hour"),
        (3 * 86_400, "about 3 days"),
        (90 * 86_400, "about 3 months"),
        (26 * 365.25 * 86_400, "about 26 years"),
        (1234 * 365.25 * 86_400, "about 12 centuries"),
    ],
)
def test_durations_read_naturally(seconds: float, text: str) -> None:
    assert password_policy.describe_duration(seconds) == text


_passwords = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join),
    st.builds(
        lambda words, tail: "-".join(words) + tail,
        st.lists(st.sampled_from(WORDS), min_size=2, max_size=5),
        st.text(alphabet="0123456789!?", max_size=4),
    ),
)


@settings(max_examples=200, deadline=None)
@given(_passwords)
def test_the_meter_and_the_rule_never_disagree(password: str) -> None:
    problem = service.password_problem(password)
    strength = service.password_strength(password)
    assert 0 <= strength <= 4
    assert (strength == 4) == (problem is None), (password, strength, problem)


def test_set_up_refuses_a_weak_password_before_reaching_the_vault(
    tmp_path: Path,
) -> None:
    class NoVault:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"the vault was reached ({name})")

    vault: Any = NoVault()
    with pytest.raises(BackupError, match="too weak: This password could be guessed"):
        service.set_up_with_password(vault, vault, "correct horse battery", tmp_path)
