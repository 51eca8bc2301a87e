"""The split vault on real domains: each a vault of its own (SoftHSM2, a TPM, a
third), any two recover, one cannot; the guess bounds of
`app.protocol.vault_split.guess_bound` played by an attacker at full strength."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.crypto import HpkePublicKey, SystemRng
from app.crypto.oprf import blind, combine, finalize, share_evaluate
from app.net.vault_transport import Transport, run_split_flow
from app.protocol import vault_split as split
from app.protocol.encoding import Writer
from app.protocol.vault import (
    CONFLICT,
    LOCKED_OUT,
    NOT_FOUND,
    OK,
    RETRY,
    STALE,
    LockedOut,
    RecordNotFound,
    Reply,
    VaultUnavailable,
    WrongPassword,
    open_response,
)
from tests.vault.conftest import Fleet
from tests.vault.test_vault_operator import _operator_unseals, _record_states

PASSWORD = "correct horse battery"
BACKUP_KEY = bytes(range(32))


def _opened(response_key: bytes, op: str, reply: Reply) -> tuple[int, int, bytes]:
    return open_response(response_key, op, reply, length=split.RESPONSE_LENGTH)


def _dead(_op: str, _body: bytes) -> Reply:
    return 503, b""


class Recording:
    """A transport that keeps every body it forwards (the relay's seat)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sent: list[tuple[str, bytes]] = []

    def __call__(self, op: str, body: bytes) -> Reply:
        self.sent.append((op, body))
        return self.inner(op, body)


class Domains:
    def __init__(self, fleets: list[Fleet]) -> None:
        self.fleets = fleets
        self.pin_peers()

    def pin_peers(self) -> None:
        """Each domain serves as its number, pinning the other two's fleet keys (as
        `make run` starts them); the client pins all three."""
        hpke = [fleet.pinned[0].hpke_public_key.hex() for fleet in self.fleets]
        for number, fleet in enumerate(self.fleets, 1):
            peers = [
                arg
                for peer, key in enumerate(hpke, 1)
                if peer != number
                for arg in ("--peer-domain", f"{peer}={key}")
            ]
            for node in fleet.nodes:
                node.restart(["--domain", str(number), *peers])
        self.keys: list[HpkePublicKey] = [fleet.key() for fleet in self.fleets]
        self.transports: list[Transport] = [fleet.transport for fleet in self.fleets]

    def repair(self, record_id: bytes, backup_key: bytes = BACKUP_KEY) -> frozenset[int]:
        return run_split_flow(split.repair(record_id, backup_key, self.keys), self.transports)

    def register(self, limit: int = split.DEFAULT_SPLIT_LIMIT) -> bytes:
        record_id, stored = run_split_flow(
            split.register(PASSWORD, BACKUP_KEY, self.keys, attempt_limit=limit),
            self.transports,
        )
        assert stored == {1, 2, 3}
        return record_id

    def recover(
        self, record_id: bytes, password: str = PASSWORD, down: tuple[int, ...] = ()
    ) -> bytes:
        transports = [
            _dead if index + 1 in down else transport
            for index, transport in enumerate(self.transports)
        ]
        return run_split_flow(split.recover(password, self.keys, record_id), transports)

    def call(self, domain: int, op: str, record_id: bytes, fields: bytes) -> tuple[int, int, bytes]:
        body, response_key = split.seal_request(
            self.keys[domain - 1], op, record_id, fields, SystemRng()
        )
        return open_response(
            response_key, op, self.transports[domain - 1](op, body), length=split.RESPONSE_LENGTH
        )


@pytest.fixture
def domains(fleet_factory: Callable[..., Fleet]) -> Domains:
    # Three softhsm domains, each its own token, fleet secrets and storage: the
    # rules do not depend on the backend (the mixed one is its own test).
    return Domains([fleet_factory(backend="softhsm") for _ in range(3)])


@pytest.fixture
def mixed(fleet_factory: Callable[..., Fleet], swtpm: object) -> Domains:
    """The domains as deployed: SoftHSM2, a TPM (swtpm) and the memory backend."""
    return Domains(
        [
            fleet_factory(backend="softhsm"),
            fleet_factory(backend="tpm", swtpm=swtpm),
            fleet_factory(backend="memory"),
        ]
    )


def test_any_two_domains_recover_one_cannot_and_the_backends_differ(mixed: Domains) -> None:
    record_id = mixed.register()
    assert mixed.recover(record_id) == BACKUP_KEY
    for down in (1, 2, 3):
        assert mixed.recover(record_id, down=(down,)) == BACKUP_KEY
    for up in (1, 2, 3):
        with pytest.raises(VaultUnavailable):
            mixed.recover(record_id, down=tuple(d for d in (1, 2, 3) if d != up))


def test_a_wrong_password_is_counted_and_a_right_one_resets_every_domain(
    domains: Domains,
) -> None:
    record_id = domains.register(limit=5)
    with pytest.raises(WrongPassword) as wrong:
        domains.recover(record_id, "not it")
    assert wrong.value.attempts_left == 4
    with pytest.raises(WrongPassword) as wrong:
        domains.recover(record_id, "not it either", down=(3,))
    # Domains 1 and 2 have 3 left, domain 3 has 4: the next guess needs two.
    assert wrong.value.attempts_left == 3
    assert domains.recover(record_id) == BACKUP_KEY
    with pytest.raises(WrongPassword) as wrong:
        domains.recover(record_id, "after the reset")
    assert wrong.value.attempts_left == 4


def _attacker_guess(domains: Domains, record_id: bytes, pair: tuple[int, int], guess: str) -> bool:
    """One online guess through two domains' evaluations, as anyone who knows the
    record id can make it; True if both evaluated."""
    blinding, blinded = blind(guess.encode(), SystemRng())
    elements = {}
    for domain in pair:
        status, _left, payload = domains.call(
            domain, "split_evaluate", record_id, Writer().u64(_now()).bytes16(blinded).getvalue()
        )
        if status != OK:
            return False
        elements[domain] = split._parse_evaluation(domain, payload).element
    finalize(guess.encode(), blinding, combine(elements))
    return True


def _now() -> int:
    import time

    return int(time.time())


def test_with_no_domain_compromised_the_guesses_are_bounded_by_three_halves_of_the_limit(
    domains: Domains,
) -> None:
    limit = 4
    record_id = domains.register(limit=limit)
    left = {1: limit, 2: limit, 3: limit}
    guesses = 0
    while True:
        # The attacker's best play: always the two domains with most left.
        pair = tuple(sorted(sorted(left, key=lambda d: -left[d])[:2]))
        if not _attacker_guess(domains, record_id, pair, f"guess {guesses}"):  # type: ignore[arg-type]
            break
        guesses += 1
        for domain in pair:
            left[domain] -= 1
    assert guesses == split.guess_bound(limit, 0) == 6
    with pytest.raises(LockedOut):
        domains.recover(record_id)


def test_one_compromised_domain_gives_twice_the_limit_and_no_offline_test(
    domains: Domains,
) -> None:
    limit = 3
    record_id = domains.register(limit=limit)
    # The operator of domain 3, with its PIN: every secret it holds.
    operator = domains.fleets[2].nodes[0]
    record = _record_states(operator, _operator_unseals(operator))[record_id]
    share = split.parse_share(record.share)
    assert BACKUP_KEY not in record.to_bytes()
    # Offline, the share alone opens nothing: the right password fares no better
    # than a wrong one (each needs a second domain's evaluation).
    for candidate in (PASSWORD, "wrong"):
        blinding, blinded = blind(candidate.encode(), SystemRng())
        alone = share_evaluate(share, blinded)
        output = finalize(candidate.encode(), blinding, alone)
        wrap_key = split.derive_wrap_key(output, record_id)
        assert split.unwrap(wrap_key, record_id, record.stored_key) is None
    # Online, every guess needs one honest domain: 2 x limit guesses, the last right.
    guesses = 0
    opened = None
    candidates = [f"wrong {n}" for n in range(2 * limit - 1)] + [PASSWORD, "one more"]
    for candidate in candidates:
        blinding, blinded = blind(candidate.encode(), SystemRng())
        honest = None
        for domain in (1, 2):
            status, _left, payload = domains.call(
                domain,
                "split_evaluate",
                record_id,
                Writer().u64(_now()).bytes16(blinded).getvalue(),
            )
            if status == OK:
                honest = (domain, split._parse_evaluation(domain, payload).element)
                break
        if honest is None:
            break
        guesses += 1
        element = combine({honest[0]: honest[1], 3: share_evaluate(share, blinded)})
        wrap_key = split.derive_wrap_key(finalize(candidate.encode(), blinding, element), record_id)
        opened = split.unwrap(wrap_key, record_id, record.stored_key) or opened
    assert guesses == split.guess_bound(limit, 1) == 6
    assert opened == BACKUP_KEY  # the bound is tight: the sixth guess was right


def test_every_request_replayed_by_the_relay_gains_nothing(domains: Domains) -> None:
    recording = [Recording(transport) for transport in domains.transports]
    domains.transports = list(recording)
    record_id = domains.register(limit=5)
    with pytest.raises(WrongPassword):
        domains.recover(record_id, "wrong")
    assert domains.recover(record_id) == BACKUP_KEY
    sent = [(index, op, body) for index, r in enumerate(recording) for op, body in r.sent]
    assert {op for _i, op, _b in sent} == {"split_register", "split_evaluate", "split_reset"}
    for index, op, body in sent:
        for target in range(3):
            status, _body = recording[target].inner(op, body)
            if target != index:
                # Sealed to another domain's key: refused before any record is read.
                assert status == 400
                continue
            assert status == 200
    # Nothing was counted by the replays: a wrong guess still leaves limit - 1.
    with pytest.raises(WrongPassword) as wrong:
        domains.recover(record_id, "wrong again")
    assert wrong.value.attempts_left == 4


def test_replays_are_answered_without_counting(domains: Domains) -> None:
    record_id = domains.register(limit=5)
    _blinding, blinded = blind(b"a guess", SystemRng())
    fields = Writer().u64(_now()).bytes16(blinded).getvalue()
    op = "split_evaluate"
    body, response_key = split.seal_request(domains.keys[0], op, record_id, fields, SystemRng())
    first = open_response(
        response_key, op, domains.transports[0](op, body), length=split.RESPONSE_LENGTH
    )
    again = open_response(
        response_key, op, domains.transports[0](op, body), length=split.RESPONSE_LENGTH
    )
    assert first[0] == OK and again[0] == STALE
    ticket = split._parse_evaluation(1, first[2]).ticket
    reset = Writer().bytes16(ticket).raw(bytes(32)).u8(split.ACTION_RETRIEVE).getvalue()
    assert domains.call(1, "split_reset", record_id, reset)[0] != OK
    assert domains.call(1, "split_reset", record_id, reset)[0] == RETRY  # ticket spent
    status, _left, _payload = domains.call(1, "split_register", record_id, _valid_upload())
    assert status == CONFLICT  # an existing record is never overwritten


def _valid_upload() -> bytes:
    from app.crypto.oprf import derive_key_pair, split_key

    key, _public = derive_key_pair(bytes(32), b"test")
    share = split_key(key, SystemRng())[0]
    return (
        Writer()
        .bytes16(share.to_bytes())
        .raw(bytes(32))
        .bytes16(bytes(60))
        .u16(5)
        .bytes16(b"")
        .getvalue()
    )


def test_the_limit_reached_erases_the_share_at_each_domain(domains: Domains) -> None:
    record_id = domains.register(limit=2)
    for guess in ("one", "two"):
        with pytest.raises((WrongPassword, LockedOut)):
            domains.recover(record_id, guess)
    with pytest.raises(LockedOut):
        domains.recover(record_id)
    for domain in (1, 2, 3):
        assert domains.call(domain, "split_register", record_id, _valid_upload())[0] == 6
        status, _left, _payload = domains.call(
            domain,
            "split_evaluate",
            record_id,
            Writer().u64(_now()).bytes16(blind(b"x", SystemRng())[1]).getvalue(),
        )
        assert status == LOCKED_OUT


def test_200_concurrent_guesses_over_all_domains_with_one_killed_mid_burst(
    mixed: Domains,
) -> None:
    """Whole recoveries with wrong passwords from 24 threads at once, as fast as the
    domains answer, while domain 2 is SIGKILLed: no domain evaluates more than its
    limit, so no more guesses were possible than the bound."""
    limit = 10
    record_id = mixed.register(limit=limit)
    recording = [Recording(transport) for transport in mixed.transports]
    mixed.transports = list(recording)
    evaluated: dict[int, int] = {1: 0, 2: 0, 3: 0}
    lock = threading.Lock()

    def counting(index: int, inner: Transport) -> Transport:
        def call(op: str, body: bytes) -> Reply:
            status, answer = inner(op, body)
            # An evaluation was released iff a reset follows it: count at the reset.
            if op == "split_reset" and status == 200:
                with lock:
                    evaluated[index] += 1
            return status, answer

        return call

    mixed.transports = [counting(n + 1, t) for n, t in enumerate(recording)]
    outcomes: list[str] = []

    def guess(number: int) -> None:
        if number == 40:
            mixed.fleets[1].nodes[0].kill()
        try:
            mixed.recover(record_id, f"guess {number}")
            outcome = "opened"
        except WrongPassword:
            outcome = "wrong"
        except LockedOut:
            outcome = "locked"
        except VaultUnavailable:
            outcome = "unavailable"
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=24) as pool:
        list(pool.map(guess, range(200)))
    assert len(outcomes) == 200 and "opened" not in outcomes
    # Each domain released at most its limit of evaluations; the live ones exactly.
    assert evaluated[1] == evaluated[3] == limit
    assert evaluated[2] <= limit
    # So at most ⌊3L/2⌋ guesses had two evaluations (here fewer: guesses evaluated
    # at all three domains spent three).
    bound = split.guess_bound(limit, 0)
    assert bound is not None and sum(evaluated.values()) // 2 <= bound
    # The record is gone at the two live domains: even the right password fails.
    with pytest.raises((LockedOut, VaultUnavailable)):
        mixed.recover(record_id)


def test_a_password_change_keeps_the_record_and_needs_all_three_domains(
    domains: Domains,
) -> None:
    record_id = domains.register(limit=5)
    recording = [Recording(transport) for transport in domains.transports]
    domains.transports = list(recording)

    def change(old: str, new: str, transports: list[Transport] | None = None) -> None:
        run_split_flow(
            split.change_password(record_id, old, new, domains.keys),
            transports or domains.transports,
        )

    # With one domain down nothing changes, and the old password still opens.
    with pytest.raises(VaultUnavailable, match="all three"):
        change(PASSWORD, "new one", [domains.transports[0], domains.transports[1], _dead])
    assert domains.recover(record_id) == BACKUP_KEY
    # A wrong old password looks the same on the wire as a right one.
    wrong_ops = _ops_of(recording, lambda: change("not it", "new one"), WrongPassword)
    right_ops = _ops_of(recording, lambda: change(PASSWORD, "new one"), None)
    assert wrong_ops == right_ops
    assert domains.recover(record_id, "new one") == BACKUP_KEY
    with pytest.raises(WrongPassword):
        domains.recover(record_id, PASSWORD)
    # The replacing registration, replayed, changes nothing.
    for r in recording:
        for op, body in r.sent:
            if op == "split_register":
                assert r.inner(op, body)[0] == 200
    assert domains.recover(record_id, "new one") == BACKUP_KEY
    run_split_flow(split.delete(record_id, "new one", domains.keys), domains.transports)
    with pytest.raises(RecordNotFound):
        domains.recover(record_id, "new one")


def _ops_of(
    recording: list[Recording], action: Callable[[], None], raises: type[Exception] | None
) -> list[tuple[int, str, int]]:
    """(domain, op, body size) of what `action` sent, in order."""
    for r in recording:
        r.sent.clear()
    if raises is None:
        action()
    else:
        with pytest.raises(raises):
            action()
    return [(index, op, len(body)) for index, r in enumerate(recording) for op, body in r.sent]


def test_a_domain_down_at_registration_catches_up_without_the_password(
    domains: Domains,
) -> None:
    dead_three = [domains.transports[0], domains.transports[1], _dead]
    record_id, stored = run_split_flow(
        split.register(PASSWORD, BACKUP_KEY, domains.keys), dead_three
    )
    assert stored == {1, 2}
    # Domain 3 lacks the record, and a check without the backup key learns nothing.
    held = run_split_flow(split.check(record_id, BACKUP_KEY, domains.keys), domains.transports)
    assert held == {1: OK, 2: OK, 3: NOT_FOUND}
    wrong = run_split_flow(split.check(record_id, bytes(32), domains.keys), domains.transports)
    assert wrong == {1: NOT_FOUND, 2: NOT_FOUND, 3: NOT_FOUND}  # as if nobody held it
    recording = [Recording(transport) for transport in domains.transports]
    domains.transports = list(recording)
    assert domains.repair(record_id) == {3}
    assert domains.repair(record_id) == frozenset()  # nothing left to do
    # Domain 3's new share is on the same polynomial: it recovers with each other one.
    assert domains.recover(record_id, down=(1,)) == BACKUP_KEY
    assert domains.recover(record_id, down=(2,)) == BACKUP_KEY
    # The relay replays every re-share request, to every domain: nothing changes.
    for index, r in enumerate(recording):
        for op, body in list(r.sent):
            if op in ("split_reshare", "split_install", "split_check"):
                for target in range(3):
                    status, _reply = recording[target].inner(op, body)
                    assert status == (200 if target == index else 400)
    assert domains.recover(record_id, down=(1,)) == BACKUP_KEY
    with pytest.raises(WrongPassword) as wrong_guess:
        domains.recover(record_id, "wrong", down=(2,))
    assert wrong_guess.value.attempts_left == split.DEFAULT_SPLIT_LIMIT - 1


def test_a_domain_lost_for_good_is_replaced_and_re_shared(
    fleet_factory: Callable[..., Fleet],
) -> None:
    domains = Domains(
        [fleet_factory(backend="softhsm") for _ in range(2)] + [fleet_factory(backend="memory")]
    )
    record_id = domains.register()
    # The memory domain's keyholder dies: its records can never be opened again.
    domains.fleets[2].nodes[0].kill()
    assert domains.recover(record_id) == BACKUP_KEY  # two domains suffice meanwhile
    domains.fleets[2] = fleet_factory(backend="memory")  # a replacement, new keys
    domains.pin_peers()
    assert domains.repair(record_id) == {3}
    assert domains.recover(record_id, down=(1,)) == BACKUP_KEY
    assert domains.recover(record_id, down=(2,)) == BACKUP_KEY
    # A holder of another backup key cannot ask for a re-share.
    status, _left, _payload = domains.call(
        1,
        "split_reshare",
        record_id,
        Writer().raw(bytes(32)).u8(3).raw(bytes(31) + b"\x01").getvalue(),
    )
    assert status == NOT_FOUND
