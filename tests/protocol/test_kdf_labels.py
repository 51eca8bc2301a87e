"""Every key derivation in app.protocol has a label of its own (docs/protocol.md §10).

The labels are read from the source: every call to `hkdf_sha256` (its `info`),
`hmac_sha256` (its data: the chain-step constant) and `hpke_seal` (its `info`) in
`app/protocol`, resolved to the module constant or literal it uses. A label may be
used from several call sites only through one named constant (one use, e.g. seal
and open); an inline literal belongs to the one function it appears in. Group
(Sender Key) and pairwise (Double Ratchet) keys were once derived under the same
labels, because the group code called the ratchet's KDF functions; a protocol
module may not borrow another module's KDF functions any more.
"""

from __future__ import annotations

import ast
import hashlib
import hmac
import importlib
import pkgutil
import re
from collections import defaultdict
from pathlib import Path

import pytest

import app.protocol
from app.crypto import aead_open
from app.protocol import ratchet, sender_keys
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import MalformedMessage, ReplayError
from app.protocol.sender_keys import SenderKeyDistribution, SenderKeyState

ROOT = Path(__file__).resolve().parents[2]
KDF_CALLS = {  # function -> (keyword, position) of its label argument
    "hkdf_sha256": ("info", None),
    "hmac_sha256": ("data", 1),
    "hpke_seal": ("info", 2),
}


def _protocol_modules() -> dict[str, Path]:
    return {
        info.name: Path(importlib.import_module(info.name).__file__ or "")
        for info in pkgutil.walk_packages(app.protocol.__path__, "app.protocol.")
    }


def _function_of(tree: ast.Module) -> dict[ast.AST, str]:
    owner: dict[ast.AST, str] = {}

    def visit(node: ast.AST, name: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                inner = f"{name}.{child.name}" if name else child.name
                visit(child, inner)
            else:
                owner[child] = name
                visit(child, name)

    visit(tree, "")
    return owner


def _called_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class Label:
    def __init__(self, value: bytes, site: str, prefix: bool) -> None:
        self.value, self.site, self.prefix = value, site, prefix


def _resolve(node: ast.expr, module: str, function: str) -> Label:
    """The label an argument expression stands for, and where it is defined."""
    if isinstance(node, ast.Constant) and isinstance(node.value, bytes):
        return Label(node.value, f"{module}.{function} (literal)", prefix=False)
    if isinstance(node, ast.Name):
        value = getattr(importlib.import_module(module), node.id, None)
        assert isinstance(value, bytes), (
            f"{module}.{function}: KDF label {node.id} is not a module-level bytes constant"
        )
        return Label(value, f"{module}.{node.id}", prefix=False)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        head = _resolve(node.left, module, function)
        return Label(head.value, head.site, prefix=True)
    raise AssertionError(
        f"{module}.{function}: a KDF label must be a named constant or a literal,"
        f" not {ast.unparse(node)}"
    )


def collect_labels() -> list[Label]:
    labels = []
    for module, path in _protocol_modules().items():
        tree = ast.parse(path.read_text())
        owner = _function_of(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or _called_name(node) not in KDF_CALLS:
                continue
            keyword, position = KDF_CALLS[_called_name(node)]
            argument = next((k.value for k in node.keywords if k.arg == keyword), None)
            if argument is None and position is not None and len(node.args) > position:
                argument = node.args[position]
            assert argument is not None, f"{module}: {ast.unparse(node)} has no label"
            labels.append(_resolve(argument, module, owner.get(node, "")))
    return labels


LABELS = collect_labels()


def test_the_scan_sees_the_pairwise_and_group_derivations() -> None:
    values = {label.value for label in LABELS}
    assert {ratchet.RATCHET_INFO, ratchet.MESSAGE_INFO, b"\x01", b"\x02"} <= values
    assert {
        sender_keys.SENDER_CHAIN_LABEL,
        sender_keys.SENDER_MESSAGE_LABEL,
        sender_keys.SENDER_MESSAGE_INFO,
    } <= values


def test_no_two_uses_share_a_kdf_label() -> None:
    sites: dict[bytes, set[str]] = defaultdict(set)
    for label in LABELS:
        sites[label.value].add(label.site)
    shared = {value: sorted(where) for value, where in sites.items() if len(where) > 1}
    assert not shared, f"KDF labels used for more than one purpose: {shared}"


def test_no_label_extends_a_prefix_label() -> None:
    # "X " || op must not be able to spell another label.
    prefixes = {label.value for label in LABELS if label.prefix}
    for label in LABELS:
        for prefix in prefixes:
            assert label.value == prefix or not label.value.startswith(prefix), (
                f"{label.value!r} starts with the prefix label {prefix!r}"
            )


def _kdf_functions(tree: ast.Module) -> set[str]:
    """Module-level functions that derive keys, directly or through each other."""
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    calls = {
        name: {_called_name(c) for c in ast.walk(node) if isinstance(c, ast.Call)}
        for name, node in functions.items()
    }
    found = {name for name, called in calls.items() if called & set(KDF_CALLS)}
    while True:
        more = {name for name, called in calls.items() if called & found} - found
        if not more:
            return found
        found |= more


def test_no_protocol_module_borrows_another_modules_kdf() -> None:
    modules = _protocol_modules()
    kdf_functions = {
        module: _kdf_functions(ast.parse(path.read_text())) for module, path in modules.items()
    }
    assert {"kdf_ck", "message_key_material", "seal_with_message_key"} <= kdf_functions[
        "app.protocol.ratchet"
    ]
    borrowed = []
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in kdf_functions:
                if node.module == module:
                    continue
                borrowed += [
                    f"{module} imports {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name in kdf_functions[node.module]
                ]
    assert not borrowed, f"derivations shared between uses: {borrowed}"


def test_group_and_pairwise_derive_different_keys_from_the_same_input() -> None:
    secret = bytes(range(32))
    pairwise_chain, pairwise_message = ratchet.kdf_ck(secret)
    group_chain, group_message = sender_keys.sender_kdf_ck(secret)
    assert len({pairwise_chain, pairwise_message, group_chain, group_message}) == 4
    assert ratchet.message_key_material(secret) != sender_keys.sender_message_key_material(secret)


def test_docs_list_every_kdf_label() -> None:
    text = (ROOT / "docs" / "protocol.md").read_text()
    match = re.search(r"^## \d+\. KDF labels\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, "docs/protocol.md has no 'KDF labels' section"
    section = match.group(1)
    for label in LABELS:
        if len(label.value) == 1:
            shown = f"`0x{label.value[0]:02x}`"
        else:
            shown = f'`"{label.value.decode("ascii")}"'
        assert shown in section, f"docs/protocol.md §KDF labels does not list {shown}"
        where = label.site.rsplit(".", 1)[-1].split(" ")[0]  # constant or function name
        assert where in section, f"docs/protocol.md §KDF labels does not name {where}"


# ---- the group wire format changed with the labels: version 2 ------------------


def _hkdf(ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 with SHA-256 and a 32-zero-byte salt, written from the RFC."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def test_the_group_vectors_follow_the_documented_v2_derivation() -> None:
    """Decrypts tests/vectors/protocol_v1.json's group messages from docs/protocol.md §6."""
    import json

    vectors = json.loads((ROOT / "tests" / "vectors" / "protocol_v1.json").read_text())
    vector = vectors["sender_key"]
    distribution = Reader(bytes.fromhex(vector["distribution"]))
    assert distribution.u8() == 2
    group_id, chain_id = distribution.bytes16(), distribution.u32()
    iteration, chain_key = distribution.u32(), distribution.raw(32)
    plaintexts = []
    for message_hex in vector["messages"]:
        message = Reader(bytes.fromhex(message_hex)[:-64])
        assert message.u8() == 2
        assert (message.bytes16(), message.u32()) == (group_id, chain_id)
        number, ciphertext = message.u32(), message.bytes32()
        while iteration <= number:
            message_key = hmac.new(
                chain_key, b"Cipherline sender key message v2", hashlib.sha256
            ).digest()
            chain_key = hmac.new(
                chain_key, b"Cipherline sender key chain v2", hashlib.sha256
            ).digest()
            iteration += 1
        material = _hkdf(message_key, b"Cipherline sender key message keys v2", 44)
        ad = Writer().bytes16(group_id).u32(chain_id).u32(number).getvalue()
        plaintexts.append(aead_open(material[:32], material[32:], ciphertext, ad))
    assert plaintexts == [b"to the group", b"again"]


def test_version_1_group_messages_and_distributions_are_refused() -> None:
    state = SenderKeyState.create(b"g")
    view = SenderKeyState.from_distribution(state.distribution())
    distribution = state.distribution().to_bytes()
    message = state.encrypt(b"hello")
    assert distribution[0] == message[0] == sender_keys.SENDER_KEY_VERSION == 2
    with pytest.raises(MalformedMessage, match="version 1"):
        SenderKeyDistribution.from_bytes(b"\x01" + distribution[1:])
    with pytest.raises(MalformedMessage, match="version 1"):
        view.decrypt(b"\x01" + message[1:])
    assert view.decrypt(message) == b"hello"


def test_a_stored_version_1_state_still_loads_without_its_old_skipped_keys() -> None:
    owner = SenderKeyState.create(b"g")
    view = SenderKeyState.from_distribution(owner.distribution())
    first, second = owner.encrypt(b"one"), owner.encrypt(b"two")
    assert view.decrypt(second) == b"two"  # the key of "one" is kept as skipped
    stored = view.to_bytes()
    assert stored[0] == sender_keys.STATE_VERSION == 2
    legacy = SenderKeyState.from_bytes(b"\x01" + stored[1:])
    assert legacy.skipped == {}  # derived under version 1 labels: useless and dropped
    assert legacy.chain_key == view.chain_key and legacy.iteration == view.iteration
    assert legacy.decrypt(owner.encrypt(b"three")) == b"three"
    with pytest.raises(ReplayError):
        legacy.decrypt(first)
    assert SenderKeyState.from_bytes(stored).decrypt(first) == b"one"
    with pytest.raises(MalformedMessage):
        SenderKeyState.from_bytes(b"\x03" + stored[1:])
