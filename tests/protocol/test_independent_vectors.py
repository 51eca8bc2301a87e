"""The session start and the ratchet against work that is not ours.

1. A hand-derived vector: with the DH and KEM outputs fixed, SK is computed here
   from Signal's PQXDH specification (revision 3, section 2.2 "KDF" and section 3.3)
   with plain `cryptography` HKDF, and compared with `app.protocol.session`'s KDF.
2. The classical part against the independent `X3DH` package (Syndace, PyPI): it
   computes DH1..DH4 and its KDF input (F || DH1 || DH2 || DH3 [|| DH4]) from the
   keys on the wire. PQXDH's SK differs from X3DH's only in appending the ML-KEM
   secret SS to that input, so the test appends SS (decapsulated here with plain
   `cryptography`) and derives SK per the spec. A Double Ratchet we did not write
   (`doubleratchet`, configured in test_interop.py) must then read, or write, real
   prekey envelopes with that SK - so our whole session start matches, in both
   directions, with and without a one-time prekey.
3. The Double Ratchet interop over real envelopes (our wire format, parsed and
   built here from docs/protocol.md section 3) with out-of-order delivery: the first
   message not first, messages held back across DH ratchet steps (skipped through
   the header's PN), and replays refused.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import pytest
import xeddsa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from doubleratchet import EncryptedMessage
from doubleratchet import Header as LibraryHeader
from x3dh import (
    BaseState,
    BaseStateModel,
    Bundle,
    HashFunction,
    IdentityKeyFormat,
    IdentityKeyPairModel,
    SignedPreKeyPairModel,
)
from x3dh import Header as X3dhHeader
from x3dh.crypto_provider_cryptography import CryptoProviderImpl
from x3dh.types import SecretType

from app.crypto import DeterministicRng, DhPrivateKey
from app.protocol import session as session_module
from app.protocol.errors import ReplayError
from app.protocol.identity import DeviceIdentity, LocalPrekeys
from app.protocol.session import Session
from tests.protocol.helpers import Device
from tests.protocol.test_interop import CONFIG, LibraryRatchet

# PQXDH revision 3, section 2.2: info is "<info>_<curve>_<hash>_<pqkem>"; the names
# are ours, as docs/protocol.md section 2 gives them.
SPEC_INFO = b"_".join((b"Cipherline_PQXDH", b"X25519", b"SHA-256", b"ML-KEM-768"))
F = b"\xff" * 32  # section 2.2: 32 0xFF bytes for curve25519
PREKEY, NORMAL = 1, 2


def spec_kdf(key_material: bytes) -> bytes:
    """PQXDH section 2.2 KDF(KM): 32 bytes of HKDF-SHA256 with ikm = F || KM and a salt
    of HashLen zero bytes."""
    return HKDF(hashes.SHA256(), 32, salt=bytes(32), info=SPEC_INFO).derive(F + key_material)


def _x25519(private: bytes, public: bytes) -> bytes:
    key = x25519.X25519PrivateKey.from_private_bytes(private)
    return key.exchange(x25519.X25519PublicKey.from_public_bytes(public))


def _x25519_public(private: bytes) -> bytes:
    return x25519.X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def _decapsulate(seed: bytes, ciphertext: bytes) -> bytes:
    return mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).decapsulate(ciphertext)


# ---- 1. hand-derived vector ----------------------------------------------------------
def test_our_kdf_matches_a_vector_derived_from_the_pqxdh_specification() -> None:
    private = {name: hashlib.sha256(name.encode()).digest() for name in ("IKA", "EKA", "IKB")}
    private |= {name: hashlib.sha256(name.encode()).digest() for name in ("SPKB", "OPKB")}
    public = {name: _x25519_public(key) for name, key in private.items()}
    shared_kem = bytes(range(0x80, 0xA0))  # a fixed ML-KEM output SS
    # Section 3.3, as Alice computes them ...
    dh1 = _x25519(private["IKA"], public["SPKB"])
    dh2 = _x25519(private["EKA"], public["IKB"])
    dh3 = _x25519(private["EKA"], public["SPKB"])
    dh4 = _x25519(private["EKA"], public["OPKB"])
    # ... and section 3.4, as Bob repeats them.
    assert dh1 == _x25519(private["SPKB"], public["IKA"])
    assert dh2 == _x25519(private["IKB"], public["EKA"])
    assert dh3 == _x25519(private["SPKB"], public["EKA"])
    assert dh4 == _x25519(private["OPKB"], public["EKA"])

    assert session_module.PQXDH_INFO == SPEC_INFO
    without_opk = spec_kdf(dh1 + dh2 + dh3 + shared_kem)
    with_opk = spec_kdf(dh1 + dh2 + dh3 + dh4 + shared_kem)
    assert session_module._derive([dh1, dh2, dh3], shared_kem) == without_opk
    assert session_module._derive([dh1, dh2, dh3, dh4], shared_kem) == with_opk
    # Order matters: a swapped DH2/DH3 must not give the same key.
    assert session_module._derive([dh1, dh3, dh2], shared_kem) != without_opk


# ---- the wire format, from docs/protocol.md section 3 --------------------------------
@dataclass(frozen=True)
class Wire:
    kind: int
    identity: bytes
    ephemeral: bytes
    kem_ciphertext: bytes
    signed_prekey_id: int
    kem_prekey_id: int
    one_time_prekey_id: int | None
    header: bytes
    ciphertext: bytes

    @property
    def library_message(self) -> EncryptedMessage:
        # header (40 bytes) = 32 sender ratchet public key | u32 PN | u32 N
        pn = int.from_bytes(self.header[32:36], "big")
        n = int.from_bytes(self.header[36:40], "big")
        return EncryptedMessage(LibraryHeader(self.header[:32], pn, n), self.ciphertext)


def parse_envelope(data: bytes) -> Wire:
    assert data[0] == 1 and data[1] in (PREKEY, NORMAL)
    kind, at = data[1], 2
    identity = ephemeral = kem_ciphertext = b""
    spk_id = kem_id = 0
    otk_id: int | None = None
    if kind == PREKEY:
        length = int.from_bytes(data[at : at + 2], "big")
        identity, at = data[at + 2 : at + 2 + length], at + 2 + length
        ephemeral, kem_ciphertext = data[at : at + 32], data[at + 32 : at + 32 + 1088]
        at += 32 + 1088
        spk_id = int.from_bytes(data[at : at + 4], "big")
        kem_id = int.from_bytes(data[at + 4 : at + 8], "big")
        has_one_time, at = data[at + 8], at + 9
        assert has_one_time in (0, 1)
        if has_one_time:
            otk_id, at = int.from_bytes(data[at : at + 4], "big"), at + 4
    header, at = data[at : at + 40], at + 40
    length = int.from_bytes(data[at : at + 4], "big")
    ciphertext = data[at + 4 : at + 4 + length]
    assert at + 4 + length == len(data)
    return Wire(
        kind, identity, ephemeral, kem_ciphertext, spk_id, kem_id, otk_id, header, ciphertext
    )


def _library_header(message: EncryptedMessage) -> bytes:
    header = message.header
    return (
        header.ratchet_pub
        + header.previous_sending_chain_length.to_bytes(4, "big")
        + header.sending_chain_length.to_bytes(4, "big")
    )


def build_envelope(message: EncryptedMessage, prekey: bytes | None = None) -> bytes:
    """A type 1 envelope when `prekey` (the prekey fields) is given, else type 2."""
    kind = NORMAL if prekey is None else PREKEY
    body = _library_header(message) + len(message.ciphertext).to_bytes(4, "big")
    return bytes([1, kind]) + (prekey or b"") + body + message.ciphertext


def prekey_fields(
    identity: bytes,
    ephemeral: bytes,
    kem_ciphertext: bytes,
    ids: tuple[int, int, int | None],
) -> bytes:
    spk_id, kem_id, otk_id = ids
    fields = len(identity).to_bytes(2, "big") + identity + ephemeral + kem_ciphertext
    fields += spk_id.to_bytes(4, "big") + kem_id.to_bytes(4, "big")
    if otk_id is None:
        return fields + b"\x00"
    return fields + b"\x01" + otk_id.to_bytes(4, "big")


# ---- the X3DH package, holding our keys ----------------------------------------------
def _x3dh_state(
    identity: DeviceIdentity,
    signed_prekey: DhPrivateKey,
    one_time: DhPrivateKey | None,
    encodings: dict[bytes, bytes],
) -> BaseState:
    """An X3DH state with our X25519 identity key. The package encodes an identity
    public key through `_encode_public_key`, for its AD; ours is the full identity
    encoding (docs/protocol.md section 1), so the subclass looks it up."""

    class CipherlineEncoding(BaseState):
        @staticmethod
        def _encode_public_key(key_format: IdentityKeyFormat, pub: bytes) -> bytes:
            return encodings.get(pub, pub)

    model = BaseStateModel(
        identity_key=IdentityKeyPairModel(
            secret=identity.dh_key.to_bytes(), secret_type=SecretType.PRIV
        ),
        signed_pre_key=SignedPreKeyPairModel(
            priv=signed_prekey.to_bytes(),
            sig=_xeddsa_signature(identity, signed_prekey.public_key().to_bytes()),
            timestamp=0,
        ),
        old_signed_pre_key=None,
        pre_keys=frozenset() if one_time is None else frozenset({one_time.to_bytes()}),
    )
    return CipherlineEncoding.from_model(
        model, IdentityKeyFormat.CURVE_25519, HashFunction.SHA_256, SPEC_INFO
    )


def _xeddsa_signature(identity: DeviceIdentity, signed_prekey_public: bytes) -> bytes:
    # The package insists on an XEdDSA signature of the signed prekey by the X25519
    # identity key. Cipherline signs prekeys with its separate Ed25519 key instead
    # (docs/protocol.md section 1), so this signature exists only for the package.
    signer = xeddsa.priv_force_sign(identity.dh_key.to_bytes(), False)
    return xeddsa.ed25519_priv_sign(signer, signed_prekey_public)


@pytest.fixture
def x3dh_key_material(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records the HKDF input the X3DH package builds (F || DH1 || ... || DHn)."""
    recorded: list[bytes] = []
    original = CryptoProviderImpl.hkdf_derive

    async def recording(
        hash_function: HashFunction, length: int, salt: bytes, info: bytes, key_material: bytes
    ) -> bytes:
        recorded.append(key_material)
        return await original(hash_function, length, salt, info, key_material)

    monkeypatch.setattr(CryptoProviderImpl, "hkdf_derive", staticmethod(recording))
    return recorded


def _check_classical_part(x3dh_secret: bytes, key_material: bytes, with_one_time: bool) -> bytes:
    """What the package's KDF input must look like; returns DH1 || ... || DHn."""
    assert key_material[:32] == F
    dh_outputs = key_material[32:]
    assert len(dh_outputs) == 32 * (4 if with_one_time else 3)
    assert x3dh_secret == spec_kdf(dh_outputs)  # the package's SK, per the spec, SS absent
    # Our KDF over the package's DH outputs, with no KEM secret, is the package's KDF.
    parts = [dh_outputs[i : i + 32] for i in range(0, len(dh_outputs), 32)]
    assert session_module._derive(parts, b"") == x3dh_secret
    return dh_outputs


def _identities(seed: bytes) -> tuple[DeviceIdentity, Device]:
    rng = DeterministicRng(seed)
    alice = DeviceIdentity.generate(rng)
    bob = Device(DeviceIdentity.generate(rng), LocalPrekeys.generate(rng, batch=1))
    return alice, bob


def _encodings(*identities: DeviceIdentity) -> dict[bytes, bytes]:
    return {i.public.dh_key.to_bytes(): i.public.to_bytes() for i in identities}


def _kem_seed(prekeys: LocalPrekeys, kem_prekey_id: int) -> bytes:
    if kem_prekey_id == prekeys.last_resort_id:
        return prekeys.last_resort_kem.to_bytes()
    return prekeys.one_time_kem[kem_prekey_id].to_bytes()


# ---- 2 + 3. our initiator, independent responder -------------------------------------
@pytest.mark.parametrize("with_one_time", [True, False], ids=["with-OPK", "without-OPK"])
def test_independent_responder_completes_our_session_start_and_reorders(
    with_one_time: bool, x3dh_key_material: list[bytes]
) -> None:
    alice, bob = _identities(b"independent vectors: our initiator")
    bundle = bob.bundle(one_time=with_one_time)
    rng = DeterministicRng(b"alice's session")
    alice_session = Session.initiate(alice, bundle, rng)
    sent = [parse_envelope(alice_session.encrypt(f"A{i}".encode(), rng)) for i in range(3)]
    ad = alice.public.to_bytes() + bob.identity.public.to_bytes()

    async def scenario() -> None:
        first = sent[1]  # the second message starts the session: A0 is late
        assert [m.kind for m in sent] == [PREKEY] * 3
        assert first.identity == alice.public.to_bytes()
        assert first.one_time_prekey_id == bundle.one_time_prekey_id
        one_time = None
        if with_one_time:
            assert first.one_time_prekey_id is not None
            one_time = bob.prekeys.one_time[first.one_time_prekey_id]
        bob_x3dh = _x3dh_state(
            bob.identity,
            bob.prekeys.signed_prekey,
            one_time,
            _encodings(alice, bob.identity),
        )
        x3dh_secret, x3dh_ad, _spk = await bob_x3dh.get_shared_secret_passive(
            X3dhHeader(
                identity_key=alice.public.dh_key.to_bytes(),
                ephemeral_key=first.ephemeral,
                signed_pre_key=bob.prekeys.signed_prekey.public_key().to_bytes(),
                pre_key=None if one_time is None else one_time.public_key().to_bytes(),
            ),
            require_pre_key=with_one_time,
        )
        assert x3dh_ad == ad  # AD = Encode(IK_A) || Encode(IK_B), section 3.3
        dh_outputs = _check_classical_part(x3dh_secret, x3dh_key_material[-1], with_one_time)
        shared_kem = _decapsulate(_kem_seed(bob.prekeys, first.kem_prekey_id), first.kem_ciphertext)
        secret = spec_kdf(dh_outputs + shared_kem)  # SK = KDF(DH1 || ... || SS)

        library_bob, plaintext = await LibraryRatchet.decrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            own_ratchet_priv=bob.prekeys.signed_prekey.to_bytes(),
            message=first.library_message,
            associated_data=ad,
        )
        assert plaintext == b"A1"

        replies = [await library_bob.encrypt_message(f"B{i}".encode(), ad) for i in range(2)]
        # B1 before B0: a DH ratchet step, then a skipped key.
        assert alice_session.decrypt(build_envelope(replies[1])) == b"B1"
        assert alice_session.decrypt(build_envelope(replies[0])) == b"B0"
        with pytest.raises(ReplayError):
            alice_session.decrypt(build_envelope(replies[1]))

        # A reply arrived, so Alice's next messages are normal ones, on a new chain.
        later = [parse_envelope(alice_session.encrypt(f"A{i}".encode())) for i in (3, 4)]
        assert [m.kind for m in later] == [NORMAL, NORMAL]
        assert [m.library_message.header.previous_sending_chain_length for m in later] == [3, 3]
        # A4 first: the library must keep A2's key through PN = 3 before its DH step.
        for message, text in ((later[1], b"A4"), (sent[2], b"A2"), (sent[0], b"A0")):
            assert await library_bob.decrypt_message(message.library_message, ad) == text
        assert await library_bob.decrypt_message(later[0].library_message, ad) == b"A3"

        last = await library_bob.encrypt_message(b"B2", ad)
        assert last.header.previous_sending_chain_length == 2
        assert alice_session.decrypt(build_envelope(last)) == b"B2"

    asyncio.run(scenario())


# ---- 2 + 3. independent initiator, our responder -------------------------------------
@pytest.mark.parametrize("with_one_time", [True, False], ids=["with-OPK", "without-OPK"])
def test_our_responder_completes_an_independent_session_start_and_reorders(
    with_one_time: bool, x3dh_key_material: list[bytes]
) -> None:
    alice, bob = _identities(b"independent vectors: their initiator")
    bundle = bob.bundle(one_time=with_one_time)
    alice_spk = DhPrivateKey.generate(DeterministicRng(b"alice's unused signed prekey"))
    ad = alice.public.to_bytes() + bob.identity.public.to_bytes()

    async def scenario() -> None:
        alice_x3dh = _x3dh_state(alice, alice_spk, None, _encodings(alice, bob.identity))
        one_time_public = bundle.one_time_prekey
        x3dh_secret, x3dh_ad, x3dh_header = await alice_x3dh.get_shared_secret_active(
            Bundle(
                identity_key=bob.identity.public.dh_key.to_bytes(),
                signed_pre_key=bundle.signed_prekey.to_bytes(),
                signed_pre_key_sig=_xeddsa_signature(bob.identity, bundle.signed_prekey.to_bytes()),
                pre_keys=frozenset([] if one_time_public is None else [one_time_public.to_bytes()]),
            ),
            require_pre_key=with_one_time,
        )
        assert x3dh_ad == ad
        dh_outputs = _check_classical_part(x3dh_secret, x3dh_key_material[-1], with_one_time)
        # Section 3.3: (CT, SS) = PQKEM-ENC(PQPK_B), with plain `cryptography`.
        kem_public = mlkem.MLKEM768PublicKey.from_public_bytes(bundle.kem_prekey.to_bytes())
        shared_kem, kem_ciphertext = kem_public.encapsulate()
        secret = spec_kdf(dh_outputs + shared_kem)

        library_alice, first = await LibraryRatchet.encrypt_initial_message(
            **CONFIG,
            shared_secret=secret,
            recipient_ratchet_pub=bundle.signed_prekey.to_bytes(),
            message=b"L0",
            associated_data=ad,
        )
        messages = [first] + [
            await library_alice.encrypt_message(f"L{i}".encode(), ad) for i in (1, 2)
        ]
        # Until she has a reply, every message carries the session-start fields.
        prekey = prekey_fields(
            alice.public.to_bytes(),
            x3dh_header.ephemeral_key,
            kem_ciphertext,
            (bundle.signed_prekey_id, bundle.kem_prekey_id, bundle.one_time_prekey_id),
        )
        envelopes = [build_envelope(m, prekey) for m in messages]

        # L2 starts the session; L0 and L1 arrive after it.
        bob_session, plaintext, remote = Session.respond(
            bob.identity, bob.prekeys, envelopes[2], DeterministicRng(b"bob's ratchet")
        )
        assert plaintext == b"L2"
        assert remote.to_bytes() == alice.public.to_bytes()
        if with_one_time:  # the one-time prekeys it used are gone
            assert bundle.kem_prekey_id not in bob.prekeys.one_time_kem
            assert bundle.one_time_prekey_id not in bob.prekeys.one_time
        else:
            assert bundle.kem_prekey_id == bob.prekeys.last_resort_id
        assert bob_session.decrypt(envelopes[0]) == b"L0"
        assert bob_session.decrypt(envelopes[1]) == b"L1"
        with pytest.raises(ReplayError):
            bob_session.decrypt(envelopes[0])

        replies = [parse_envelope(bob_session.encrypt(f"O{i}".encode())) for i in range(3)]
        assert [r.kind for r in replies] == [NORMAL] * 3
        # O2 then O0: the library's DH step and a skipped key; O1 stays in transit.
        for reply, text in ((replies[2], b"O2"), (replies[0], b"O0")):
            assert await library_alice.decrypt_message(reply.library_message, ad) == text

        answer = await library_alice.encrypt_message(b"L3", ad)
        assert answer.header.previous_sending_chain_length == 3
        assert bob_session.decrypt(build_envelope(answer)) == b"L3"
        assert await library_alice.decrypt_message(replies[1].library_message, ad) == b"O1"

        # Bob's next chain, after his DH step, reaches the library too.
        final = parse_envelope(bob_session.encrypt(b"O3"))
        assert final.library_message.header.previous_sending_chain_length == 3
        assert await library_alice.decrypt_message(final.library_message, ad) == b"O3"

    asyncio.run(scenario())
