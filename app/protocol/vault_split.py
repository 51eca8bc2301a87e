"""The split vault, client side and sans-I/O: a backup key that any two of three
independent vault domains can help recover, and no one domain can.

Each domain is a vault fleet of its own (its own backend, fleet keys, storage and
operators) speaking the framing of protocol version 2 (`app.protocol.vault`:
requests HPKE-sealed to the domain's pinned fleet key, answers of one size), with
three operations of its own. The password is hardened by a 2-of-3 threshold OPRF
(RFC 9497's OPRF over ristretto255 with SHA-512, its key Shamir-shared, see
`app.crypto.oprf`): at registration the client draws the OPRF key, computes the
password's output itself, gives each domain one share and forgets the key. At
recovery it blinds the password, asks every domain to evaluate with its share, and
combines any two answers; no domain sees the password or the output. Each domain
counts every evaluation durably before it answers, so each guess costs an attempt
at two domains at least. From the output, stretched by Argon2id, come the key
that wraps the backup key (one 60-byte wrapped key, stored at every domain) and
one reset key per domain, which proves a right password to that domain and so
resets its counter; a domain keeps only SHA-256 of its reset key.

Guess bounds with a limit of L evaluations per domain (`guess_bound`): no domain
compromised, ⌊3L/2⌋ guesses in all (each needs two domains' evaluations); one
domain compromised (its share, state and keys), 2L (each guess still needs one of
the two others); two, no bound: two shares are the OPRF key, and the wrapped key
then falls to an offline search of the password, slowed only by Argon2id.

Specification: docs/vault-protocol.md, "The split vault". Flows are generators
that yield a batch of `DomainRequest`s (sent at once, to different domains) and
receive one `Reply` per request, in order; `app.net.vault_transport.run_split_flow`
runs them.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

from app.crypto import (
    Argon2Params,
    CryptoError,
    DecryptionError,
    HpkePrivateKey,
    HpkePublicKey,
    Rng,
    SystemRng,
    aead_open,
    aead_seal,
    argon2id,
    hkdf_sha256,
    hpke_open,
    hpke_seal,
)
from app.crypto.oprf import (
    KeyShare,
    OprfError,
    blind,
    combine,
    derive_key_pair,
    evaluate,
    finalize,
    random_scalar,
    split_key,
)
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import ProtocolError
from app.protocol.vault import (
    BACKUP_KEY_LENGTH,
    LOCKED_OUT,
    NOT_FOUND,
    OK,
    RECORD_ID_LENGTH,
    REPLACE_TICKET_LENGTH,
    STALE,
    VERSION,
    WRAPPED_KEY_LENGTH,
    WRONG_PASSWORD,
    Clock,
    LockedOut,
    RecordNotFound,
    Reply,
    VaultProtocolError,
    VaultUnavailable,
    WrongPassword,
    _raise_for,
    open_response,
)

SPLIT_OPS = (
    "split_register",
    "split_evaluate",
    "split_reset",
    "split_check",
    "split_reshare",
    "split_install",
)
# Every split answer is padded to this size (a re-share answer carries an HPKE
# sealed term: 1,186 bytes with the hybrid KEM), so its size tells the relay
# nothing about the outcome.
RESPONSE_LENGTH = 2048
# HPKE info of a split request: a label of its own (docs/protocol.md §10), the op
# bound as in the single vault's requests.
REQUEST_INFO = b"Cipherline split vault v1 request "
DOMAINS = 3
THRESHOLD = 2
# Per domain. With three domains this allows at most ⌊3·7/2⌋ = 10 guesses in
# all while no domain is compromised: the single vault's promise, kept.
DEFAULT_SPLIT_LIMIT = 7
KEY_SPLIT = 3  # a record's key format: a split record (docs/vault-protocol.md)
RESET_KEY_LENGTH = 32
VERIFIER_LENGTH = 32
KEY_INFO = b"Cipherline split vault OPRF key v1"
STRETCH_INFO = b"Cipherline split vault stretch v1"
WRAP_INFO = b"Cipherline split vault wrap v1"
WRAP_AD = b"Cipherline split vault wrapped key v1"
RESET_INFO = b"Cipherline split vault reset v1"
# Argon2id over the OPRF output: what an attacker holding two domains pays per
# guess. The cost of the single vault's OPAQUE key-stretching (opaque-ke's
# Argon2id defaults: 19 MiB, 2 passes, 1 lane), so that two domains lost leave an
# offline search exactly as slow as the single vault's operator faces.
STRETCH = Argon2Params(time_cost=2, memory_cost_kib=19 * 1024, parallelism=1)

ACTION_RETRIEVE = 1
ACTION_DELETE = 2
ACTION_REPLACE = 3


def guess_bound(limit: int, compromised: int) -> int | None:
    """The most password guesses an attacker gets while holding `compromised`
    domains (None: unbounded, an offline search)."""
    if compromised == 0:
        return (DOMAINS * limit) // THRESHOLD
    if compromised == 1:
        return (DOMAINS - 1) * limit
    return None


@dataclass(frozen=True)
class DomainRequest:
    domain: int  # 1..3
    op: str
    body: bytes = field(repr=False)


SplitFlow = Generator[list[DomainRequest], list[Reply], "object"]


def derive_wrap_key(output: bytes, record_id: bytes) -> bytes:
    """The key that wraps the backup key: from the OPRF output, stretched."""
    salt = hashlib.sha256(STRETCH_INFO + record_id).digest()[:16]
    stretched = argon2id(output, salt, STRETCH, 32)
    return hkdf_sha256(stretched, salt=None, info=WRAP_INFO, length=32)


def reset_keys(backup_key: bytes, record_id: bytes) -> dict[int, bytes]:
    """Each domain's reset key. From the backup key, not the password: whoever holds
    the key (after a recovery, or the unlocked app) can reset counters and re-share
    a lost domain's part without asking for the password; nobody else can."""
    return {
        index: hkdf_sha256(
            backup_key,
            salt=None,
            info=RESET_INFO + bytes([index]) + record_id,
            length=RESET_KEY_LENGTH,
        )
        for index in range(1, DOMAINS + 1)
    }


def seal_request(
    domain_key: HpkePublicKey, op: str, record_id: bytes, fields: bytes, rng: Rng
) -> tuple[bytes, bytes]:
    """(body to send, response key to keep): the single vault's inner request
    (`app.protocol.vault.parse_inner_request` reads it) under this label."""
    response_key = rng.random_bytes(32)
    inner = Writer().u8(VERSION).raw(response_key).bytes16(record_id).raw(fields).getvalue()
    return hpke_seal(domain_key, inner, REQUEST_INFO + op.encode()), response_key


def verifier(reset_key: bytes) -> bytes:
    return hashlib.sha256(reset_key).digest()


def wrap(wrap_key: bytes, record_id: bytes, backup_key: bytes, nonce: bytes) -> bytes:
    return nonce + aead_seal(wrap_key, nonce, backup_key, WRAP_AD + record_id)


def unwrap(wrap_key: bytes, record_id: bytes, wrapped: bytes) -> bytes | None:
    try:
        key = aead_open(wrap_key, wrapped[:12], wrapped[12:], WRAP_AD + record_id)
    except DecryptionError:
        return None
    return key if len(key) == BACKUP_KEY_LENGTH else None


def _batch(
    domain_keys: Sequence[HpkePublicKey],
    op: str,
    record_id: bytes,
    fields: dict[int, bytes],
    rng: Rng,
) -> Generator[list[DomainRequest], list[Reply], dict[int, tuple[int, int, bytes] | None]]:
    """Sends `fields[i]` to domain i (all at once); each answer opened, or None for a
    domain that did not answer (unreachable, busy, or an answer that fails)."""
    sealed = {
        index: seal_request(domain_keys[index - 1], op, record_id, body, rng)
        for index, body in fields.items()
    }
    order = sorted(sealed)
    replies = yield [DomainRequest(index, op, sealed[index][0]) for index in order]
    if len(replies) != len(order):
        raise ValueError("a split flow got a different number of replies than requests")
    answers: dict[int, tuple[int, int, bytes] | None] = {}
    for index, reply in zip(order, replies, strict=True):
        try:
            answers[index] = open_response(sealed[index][1], op, reply, length=RESPONSE_LENGTH)
        except (VaultUnavailable, VaultProtocolError):
            answers[index] = None
    return answers


def register(
    password: str,
    backup_key: bytes,
    domain_keys: Sequence[HpkePublicKey],
    *,
    record_id: bytes | None = None,
    attempt_limit: int = DEFAULT_SPLIT_LIMIT,
    replace_tickets: dict[int, bytes] | None = None,
    rng: Rng | None = None,
) -> Generator[list[DomainRequest], list[Reply], tuple[bytes, frozenset[int]]]:
    """Registers a new split record (or, with `replace_tickets` from a right
    password's reset at every domain, replaces one); returns its id and the domains
    that hold a share (at least two, or it fails: `VaultUnavailable`)."""
    rng = rng or SystemRng()
    if len(backup_key) != BACKUP_KEY_LENGTH:
        raise ValueError("a backup key is 32 bytes")
    if len(domain_keys) != DOMAINS:
        raise ValueError("a split record needs exactly three domains")
    record_id = record_id or rng.random_bytes(RECORD_ID_LENGTH)
    secret = password.encode("utf-8")
    oprf_key, _public = derive_key_pair(rng.random_bytes(32), KEY_INFO)
    shares = split_key(oprf_key, rng)
    wrap_key = derive_wrap_key(evaluate(oprf_key, secret), record_id)
    wrapped = wrap(wrap_key, record_id, backup_key, rng.random_bytes(12))
    resets = reset_keys(backup_key, record_id)
    fields = {
        share.index: Writer()
        .bytes16(share.to_bytes())
        .raw(verifier(resets[share.index]))
        .bytes16(wrapped)
        .u16(attempt_limit)
        .bytes16((replace_tickets or {}).get(share.index, b""))
        .getvalue()
        for share in shares
    }
    answers = yield from _batch(domain_keys, "split_register", record_id, fields, rng)
    stored = frozenset(index for index, answer in answers.items() if answer and answer[0] == OK)
    for answer in answers.values():
        if answer is not None and answer[0] != OK:
            _raise_for(answer[0], answer[1])
    if len(stored) < THRESHOLD:
        raise VaultUnavailable(
            "fewer than two of the three vault domains answered; try again later"
        )
    return record_id, stored


@dataclass(frozen=True)
class _Evaluation:
    index: int
    attempts_left: int
    limit: int
    ticket: bytes = field(repr=False)
    element: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)


def _parse_evaluation(index: int, payload: bytes) -> _Evaluation:
    try:
        reader = Reader(payload, "split evaluation")
        used, limit = reader.u16(), reader.u16()
        ticket, element, wrapped = reader.bytes16(), reader.bytes16(), reader.bytes16()
        reader.end()
    except ProtocolError:
        raise VaultProtocolError("a vault domain's evaluation is malformed") from None
    if len(wrapped) != WRAPPED_KEY_LENGTH:
        raise VaultProtocolError("a vault domain returned a wrapped key of the wrong size")
    return _Evaluation(index, max(limit - used, 0), limit, ticket, element, wrapped)


def recover(
    password: str,
    domain_keys: Sequence[HpkePublicKey],
    record_id: bytes,
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> Generator[list[DomainRequest], list[Reply], bytes]:
    """The backup key, if `password` is right and two domains answer. Every domain
    that evaluated is then told (its reset key on success, which resets its
    counter; random bytes otherwise, which it records as a failure): the relay
    sees the same requests whether the password was right or not."""
    opened = yield from _recover(password, domain_keys, record_id, ACTION_RETRIEVE, rng, clock)
    return opened.backup_key


def delete(
    record_id: bytes,
    password: str,
    domain_keys: Sequence[HpkePublicKey],
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> SplitFlow:
    """Erases the record at every domain that answers (at least two)."""
    yield from _recover(password, domain_keys, record_id, ACTION_DELETE, rng, clock)
    return None


def change_password(
    record_id: bytes,
    old: str,
    new: str,
    domain_keys: Sequence[HpkePublicKey],
    *,
    rng: Rng | None = None,
    clock: Clock = time.time,
) -> Generator[list[DomainRequest], list[Reply], None]:
    """The same record id and backup key under a new password and a new OPRF key.
    Needs all three domains (a domain left with the old share would hold a record
    no password opens); after a wrong old password a decoy registration of the
    same shape is sent, so the relay cannot tell which it was."""
    rng = rng or SystemRng()
    try:
        opened = yield from _recover(old, domain_keys, record_id, ACTION_REPLACE, rng, clock)
    except WrongPassword:
        yield from _decoy_registration(domain_keys, record_id, rng)
        raise
    yield from register(
        new,
        opened.backup_key,
        domain_keys,
        record_id=record_id,
        attempt_limit=opened.limit,
        replace_tickets=opened.replace_tickets,
        rng=rng,
    )


def _decoy_registration(
    domain_keys: Sequence[HpkePublicKey], record_id: bytes, rng: Rng
) -> Generator[list[DomainRequest], list[Reply], None]:
    """Requests shaped like a replacing registration whose tickets no domain
    issued: refused before any storage is read, and ignored here."""
    oprf_key, _public = derive_key_pair(rng.random_bytes(32), KEY_INFO)
    fields = {
        share.index: Writer()
        .bytes16(share.to_bytes())
        .raw(rng.random_bytes(VERIFIER_LENGTH))
        .bytes16(rng.random_bytes(WRAPPED_KEY_LENGTH))
        .u16(DEFAULT_SPLIT_LIMIT)
        .bytes16(rng.random_bytes(REPLACE_TICKET_LENGTH))
        .getvalue()
        for share in split_key(oprf_key, rng)
    }
    yield from _batch(domain_keys, "split_register", record_id, fields, rng)


@dataclass(frozen=True)
class _Opened:
    backup_key: bytes
    limit: int
    replace_tickets: dict[int, bytes]

    def __repr__(self) -> str:
        return "_Opened(<secret>)"


def _recover(  # noqa: PLR0917
    password: str,
    domain_keys: Sequence[HpkePublicKey],
    record_id: bytes,
    action: int,
    rng: Rng | None,
    clock: Clock,
) -> Generator[list[DomainRequest], list[Reply], _Opened]:
    rng = rng or SystemRng()
    if len(domain_keys) != DOMAINS:
        raise ValueError("a split record needs exactly three domains")
    secret = password.encode("utf-8")
    blinding, blinded = blind(secret, rng)
    offset = 0
    pending = list(range(1, DOMAINS + 1))
    evaluations: dict[int, _Evaluation] = {}
    refusals: dict[int, int] = {}
    for _round in range(2):  # a second round only for domains that found our clock off
        now = int(clock()) + offset
        fields = {index: Writer().u64(now).bytes16(blinded).getvalue() for index in pending}
        answers = yield from _batch(domain_keys, "split_evaluate", record_id, fields, rng)
        retry = []
        for index, answer in answers.items():
            if answer is None:
                continue
            status, _left, payload = answer
            if status == OK:
                evaluations[index] = _parse_evaluation(index, payload)
            elif status == STALE and len(payload) == 8 and not _round:
                offset = int.from_bytes(payload, "big") - int(clock())
                retry.append(index)
            else:
                refusals[index] = status
        if not retry:
            break
        pending = retry
    backup_key = (
        _open(secret, blinding, record_id, evaluations) if len(evaluations) >= THRESHOLD else None
    )
    resets = reset_keys(backup_key, record_id) if backup_key is not None else None
    # A replacement only where every domain can take part: otherwise just a retrieve.
    everyone = len(evaluations) == DOMAINS
    sent_action = ACTION_RETRIEVE if action == ACTION_REPLACE and not everyone else action
    resets = {
        index: Writer()
        .bytes16(evaluation.ticket)
        .raw(resets[index] if resets else rng.random_bytes(RESET_KEY_LENGTH))
        .u8(sent_action)
        .getvalue()
        for index, evaluation in evaluations.items()
    }
    # Every evaluation released is answered, even when too few came to combine.
    answers = yield from _batch(domain_keys, "split_reset", record_id, resets, rng)
    if backup_key is not None:
        return _opened(backup_key, action, sent_action, evaluations, answers)
    if len(evaluations) < THRESHOLD:
        _raise_refused(refusals)
    lefts = []
    for index, evaluation in evaluations.items():
        answer = answers.get(index)
        if answer is not None and answer[0] == LOCKED_OUT:
            lefts.append(0)
        elif answer is not None and answer[0] == WRONG_PASSWORD:
            lefts.append(answer[1])
        else:
            lefts.append(evaluation.attempts_left)
    lefts += [0] * (DOMAINS - len(lefts))
    # Each further guess needs two domains: the second-largest count is what is left.
    remaining = sorted(lefts, reverse=True)[THRESHOLD - 1]
    if remaining == 0:
        raise LockedOut
    raise WrongPassword(remaining)


def _opened(
    backup_key: bytes,
    action: int,
    sent_action: int,
    evaluations: dict[int, _Evaluation],
    answers: dict[int, tuple[int, int, bytes] | None],
) -> _Opened:
    limit = max(evaluation.limit for evaluation in evaluations.values())
    if action != ACTION_REPLACE:
        return _Opened(backup_key, limit, {})
    if sent_action != ACTION_REPLACE:
        raise VaultUnavailable(
            "changing the password needs all three vault domains, and one did not answer;"
            " the old password still works. Try again later."
        )
    tickets: dict[int, bytes] = {}
    for index, answer in answers.items():
        if answer is None or answer[0] != OK:
            raise VaultUnavailable(
                "a vault domain did not confirm the password change; the old password"
                " still works. Try again later."
            )
        try:
            reader = Reader(answer[2], "replace answer")
            tickets[index] = reader.bytes16()
            reader.end()
        except ProtocolError:
            raise VaultProtocolError("a vault domain's replace answer is malformed") from None
    return _Opened(backup_key, limit, tickets)


def _raise_refused(refusals: dict[int, int]) -> None:
    statuses = list(refusals.values())
    if statuses.count(LOCKED_OUT) >= DOMAINS - THRESHOLD + 1:
        raise LockedOut
    if statuses.count(NOT_FOUND) >= DOMAINS - THRESHOLD + 1:
        raise RecordNotFound
    raise VaultUnavailable("fewer than two of the three vault domains could help; try again later")


def _open(
    secret: bytes, blinding: bytes, record_id: bytes, evaluations: dict[int, _Evaluation]
) -> bytes | None:
    """Tries each pair of evaluations (a lying domain spoils only its pairs)."""
    tried: set[bytes] = set()
    for pair in itertools.combinations(sorted(evaluations), THRESHOLD):
        try:
            element = combine({index: evaluations[index].element for index in pair})
            output = finalize(secret, blinding, element)
        except (OprfError, CryptoError):
            continue
        if output in tried:
            continue
        tried.add(output)
        wrap_key = derive_wrap_key(output, record_id)
        for index in pair:
            key = unwrap(wrap_key, record_id, evaluations[index].wrapped)
            if key is not None:
                return key
    return None


def check_reset_key(stored_verifier: bytes, reset_key: bytes) -> bool:
    """The domain's test of a reset key (constant time)."""
    return hmac.compare_digest(stored_verifier, verifier(reset_key))


def parse_share(data: bytes) -> KeyShare:
    try:
        return KeyShare.from_bytes(data)
    except OprfError:
        raise VaultProtocolError("a split vault share is malformed") from None


# ---- re-sharing: a domain that lost its part gets it back, without the password ----

RESHARE_INFO = b"Cipherline split vault reshare v1"


def check(
    record_id: bytes,
    backup_key: bytes,
    domain_keys: Sequence[HpkePublicKey],
    *,
    rng: Rng | None = None,
) -> Generator[list[DomainRequest], list[Reply], dict[int, int | None]]:
    """Which domains hold this record: domain -> status (`OK`, `NOT_FOUND`,
    `LOCKED_OUT`, ...) or None for a domain that did not answer. Asking takes the
    domain's reset key, so only a holder of the backup key learns it."""
    rng = rng or SystemRng()
    resets = reset_keys(backup_key, record_id)
    fields = {index: resets[index] for index in range(1, DOMAINS + 1)}
    answers = yield from _batch(domain_keys, "split_check", record_id, fields, rng)
    return {index: (answer[0] if answer else None) for index, answer in answers.items()}


def reshare(
    record_id: bytes,
    backup_key: bytes,
    target: int,
    domain_keys: Sequence[HpkePublicKey],
    *,
    rng: Rng | None = None,
) -> Generator[list[DomainRequest], list[Reply], None]:
    """Rebuilds domain `target`'s share from the other two, which each send their
    Lagrange term toward it, masked by a random scalar drawn here (added by one,
    subtracted by the other) and sealed to the target's pinned key: the client
    never sees a term, and the target sees only their sum, its own new share."""
    rng = rng or SystemRng()
    sources = [index for index in range(1, DOMAINS + 1) if index != target]
    if len(sources) != THRESHOLD:
        raise ValueError("the target is one of the three domains")
    mask = random_scalar(rng)
    resets = reset_keys(backup_key, record_id)
    fields = {
        index: Writer().raw(resets[index]).u8(target).raw(mask).getvalue() for index in sources
    }
    answers = yield from _batch(domain_keys, "split_reshare", record_id, fields, rng)
    contributions, wrapped, limit = [], b"", 0
    for index in sources:
        answer = answers[index]
        if answer is None or answer[0] != OK:
            if answer is not None:
                _raise_for(answer[0], answer[1])
            raise VaultUnavailable(
                "re-sharing needs the other two vault domains, and one did not answer"
            )
        try:
            reader = Reader(answer[2], "reshare answer")
            contributions.append(reader.bytes16())
            wrapped, limit = reader.bytes16(), reader.u16()
            reader.end()
        except ProtocolError:
            raise VaultProtocolError("a vault domain's reshare answer is malformed") from None
    install = (
        Writer()
        .bytes16(contributions[0])
        .bytes16(contributions[1])
        .raw(verifier(resets[target]))
        .bytes16(wrapped)
        .u16(limit)
        .getvalue()
    )
    answers = yield from _batch(domain_keys, "split_install", record_id, {target: install}, rng)
    answer = answers[target]
    if answer is None:
        raise VaultUnavailable("the vault domain being repaired did not answer")
    _raise_for(answer[0], answer[1])


def repair(
    record_id: bytes,
    backup_key: bytes,
    domain_keys: Sequence[HpkePublicKey],
    *,
    rng: Rng | None = None,
) -> Generator[list[DomainRequest], list[Reply], frozenset[int]]:
    """Re-shares to every domain that answers but lacks the record (never
    registered there while it was down, or a replacement for a domain lost for
    good), as long as two others hold it. Returns the domains repaired."""
    rng = rng or SystemRng()
    held = yield from check(record_id, backup_key, domain_keys, rng=rng)
    holding = [index for index, status in held.items() if status == OK]
    missing = [index for index, status in held.items() if status == NOT_FOUND]
    repaired = set()
    if len(holding) >= THRESHOLD:
        for target in missing:
            yield from reshare(record_id, backup_key, target, domain_keys, rng=rng)
            repaired.add(target)
    return frozenset(repaired)


def seal_contribution(
    target_key: HpkePublicKey, record_id: bytes, source: int, target: int, term: bytes
) -> bytes:
    """A source domain's masked term, readable by the target domain only."""
    plain = Writer().u8(source).u8(target).raw(record_id).raw(term).getvalue()
    return hpke_seal(target_key, plain, RESHARE_INFO)


def open_contribution(
    own_key: HpkePrivateKey, record_id: bytes, target: int, sealed: bytes
) -> tuple[int, bytes]:
    """(source, term) of a contribution sealed to this domain for this record."""
    try:
        reader = Reader(hpke_open(own_key, sealed, RESHARE_INFO), "contribution")
        source, found_target = reader.u8(), reader.u8()
        found_record, term = reader.raw(RECORD_ID_LENGTH), reader.raw(32)
        reader.end()
    except (DecryptionError, ProtocolError):
        raise VaultProtocolError("a re-share contribution does not open here") from None
    if found_target != target or found_record != record_id or source == target:
        raise VaultProtocolError("a re-share contribution is for another record or domain")
    return source, term
