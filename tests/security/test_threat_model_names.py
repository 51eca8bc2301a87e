"""Every test docs/threat-model.md names exists, and every vault "cannot" names one.

The threat model cites its proofs as `tests/path.py::test_name`. These tests parse
every such reference and check that the file exists and defines that test (a
module-level `def test_name(` or one in a test class; parametrized is fine), so a
renamed or deleted test cannot leave a claim pointing at nothing. They also check
that every vault attack test is named, and that in the vault section every
statement of what an adversary cannot do names at least one test.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
THREAT_MODEL = ROOT / "docs" / "threat-model.md"
ATTACK_TESTS = "tests/vault/test_vault_v2_attacks.py"
VAULT_SECTION = "## The Backup Key Vault"
# `tests/vault/test_vault.py::test_lockout_erases_the_record_for_good`, optionally
# with a parameter id: `...::test_register_retrieve_wrong_password_and_delete[soft]`.
REFERENCE = re.compile(r"(tests/[\w./-]+?\.py)::(test_\w+)(?:\[[^\]\s]*\])?")
# Must be named: the attacks, and what the operator holding the PIN still cannot do.
REQUIRED = {
    ("tests/vault/test_vault_operator.py", "test_the_operator_with_the_pin_reads_no_backup_key"),
    (
        "tests/vault/test_vault_via_relay.py",
        "test_relay_carries_only_opaque_bytes_and_keeps_nothing",
    ),
}


def _text() -> str:
    return THREAT_MODEL.read_text(encoding="utf-8")


def _references(text: str) -> list[tuple[str, str]]:
    return sorted(set(REFERENCE.findall(text)))


@cache
def _tests_defined(path: str) -> frozenset[str]:
    """Names of the test functions pytest would collect from `path`."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    names: set[str] = set()
    for node in tree.body:
        bodies = [node]
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            bodies = list(node.body)
        for item in bodies:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith(
                "test_"
            ):
                names.add(item.name)
    return frozenset(names)


def _vault_section(text: str) -> str:
    start = text.index(VAULT_SECTION)
    end = text.find("\n## ", start + len(VAULT_SECTION))
    return text[start : end if end != -1 else len(text)]


def _statements(section: str) -> list[str]:
    """Table rows one by one, and bullets and paragraphs whole (they wrap lines)."""
    statements: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            statements.append(" ".join(current))
            current.clear()

    for line in section.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            flush()
        elif stripped.startswith("|"):
            flush()
            statements.append(stripped)
        elif stripped.startswith(("- ", "* ")):
            flush()
            current.append(stripped)
        else:
            current.append(stripped)
    flush()
    return statements


def _cannot_rows(section: str) -> list[str]:
    """Body rows of every table whose first column is headed `cannot`."""
    rows: list[str] = []
    in_cannot_table = False
    previous_was_row = False
    for line in section.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            in_cannot_table = previous_was_row = False
            continue
        cells = [cell.strip() for cell in stripped.strip("|").split("|")]
        if not previous_was_row:
            in_cannot_table = cells[0].lower() == "cannot"
        elif in_cannot_table and not set(stripped) <= set("|-: "):
            rows.append(stripped)
        previous_was_row = True
    return rows


def test_the_threat_model_names_tests() -> None:
    references = _references(_text())
    assert len(references) >= 20, references


@pytest.mark.parametrize(
    ("path", "name"), _references(_text()), ids=lambda value: str(value).split("/")[-1]
)
def test_every_named_test_exists(path: str, name: str) -> None:
    file = ROOT / path
    assert file.resolve().is_relative_to(ROOT / "tests"), path
    assert file.is_file(), f"docs/threat-model.md names {path}, which does not exist"
    assert name in _tests_defined(path), (
        f"docs/threat-model.md names {path}::{name}, but {path} defines no such test"
    )


def test_every_vault_attack_test_is_named() -> None:
    named = set(_references(_text()))
    attacks = {(ATTACK_TESTS, name) for name in _tests_defined(ATTACK_TESTS)}
    assert attacks, f"{ATTACK_TESTS} defines no tests"
    missing = sorted((attacks | REQUIRED) - named)
    assert not missing, f"docs/threat-model.md does not name {missing}"


def test_every_vault_cannot_names_a_test() -> None:
    section = _vault_section(_text())
    rows = _cannot_rows(section)
    assert len(rows) >= 10, "the vault section has lost its tables of what cannot be done"
    statements = [s for s in _statements(section) if re.search(r"\bcannot\b", s, re.I)]
    unproven = [
        s
        for s in rows + statements
        if not REFERENCE.search(s) and not re.fullmatch(r"\|\s*cannot\s*\|\s*test\s*\|", s)
    ]
    assert not unproven, f"vault claims without a test: {unproven}"


def test_the_parser_sees_what_it_should() -> None:
    sample = (
        "## The Backup Key Vault\n\n"
        "| cannot | test |\n| --- | --- |\n"
        "| do a thing | `tests/a/test_b.py::test_c[soft]`, `tests/a/test_b.py::test_d` |\n"
        "| do another | nothing named |\n\n"
        "- it cannot do this,\n  wrapped: `tests/x.py::test_y`\n"
        "- it cannot do that either\n\n## Next\n\n- cannot, outside the section\n"
    )
    assert _references(sample) == [
        ("tests/a/test_b.py", "test_c"),
        ("tests/a/test_b.py", "test_d"),
        ("tests/x.py", "test_y"),
    ]
    section = _vault_section(sample)
    assert "outside the section" not in section
    assert _cannot_rows(section) == [
        "| do a thing | `tests/a/test_b.py::test_c[soft]`, `tests/a/test_b.py::test_d` |",
        "| do another | nothing named |",
    ]
    cannot = [s for s in _statements(section) if "cannot" in s and not s.startswith("|")]
    assert cannot == [
        "- it cannot do this, wrapped: `tests/x.py::test_y`",
        "- it cannot do that either",
    ]
