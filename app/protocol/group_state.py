"""Group membership as a chain of signed, numbered states (sans-I/O).

Theory of operation. A group's state (title, members, admins) has an *epoch*,
counting from 0 at creation, and names the digest of the state it replaced. Every
change is a whole new state, signed by the device identity of the admin who made
it, and travels inside the pairwise sessions like any other content. A member
applies a change only if it moves its own state forward:

- the next epoch, naming the digest of the state this member holds, by someone
  who is an admin in that state: applied;
- the same state again: a duplicate, ignored;
- an older epoch: stale, refused (a relay replaying the creation message cannot
  put a removed member back);
- the same epoch with other contents, or the next epoch naming another parent: a
  conflict. Two admins who changed the group at once made two branches; every
  member keeps the branch whose state digest is lower, so all converge on one,
  and the member says what it saw;
- a later epoch with a gap (changes this member missed): applied if an admin of
  this member's state signed it, since only admins move the chain;
- a first state for a group this member does not know: accepted if it lists this
  member and its author is one of its admins (the invitation).

Who may change membership: the creator is the first admin; admins may add and
remove members, rename, and name or drop admins; a member may remove only
themselves (leaving), by a change they sign. An admin who is removed stops being an
admin. Every rule lives in `apply`; `create`, `change` and `leave` only build
states that `apply` accepts. Specification: docs/protocol.md, "Group state".
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass

from app.crypto import CryptoError, SigningKey, VerifyKey
from app.protocol.encoding import Reader, Writer
from app.protocol.errors import AuthenticationError, MalformedMessage, ProtocolError

STATE_VERSION = 1
STATE_CONTEXT = b"Cipherline group state v1"
CHANGE_CONTEXT = b"Cipherline group change v1"
GROUP_ID_LENGTH = 16
NO_PARENT = bytes(32)
MAX_MEMBERS = 1000


class GroupStateError(ProtocolError):
    """A group change that is malformed, or that its author may not make."""


@dataclass(frozen=True)
class GroupState:
    group_id: bytes
    epoch: int
    title: str
    members: tuple[str, ...]
    admins: tuple[str, ...]
    parent: bytes

    def __post_init__(self) -> None:
        if len(self.group_id) != GROUP_ID_LENGTH:
            raise MalformedMessage("a group id is 16 bytes")
        if len(self.parent) != len(NO_PARENT):
            raise MalformedMessage("a group state names its parent by a 32-byte digest")
        if list(self.members) != sorted(set(self.members)) or list(self.admins) != sorted(
            set(self.admins)
        ):
            raise MalformedMessage("group members and admins are sorted and unique")
        if not set(self.admins) <= set(self.members):
            raise MalformedMessage("every group admin is a member")
        if len(self.members) > MAX_MEMBERS:
            raise MalformedMessage(f"a group has at most {MAX_MEMBERS} members")
        if (self.epoch == 0) != (self.parent == NO_PARENT):
            raise MalformedMessage("only the first state of a group has no parent")

    def to_bytes(self) -> bytes:
        writer = (
            Writer()
            .u8(STATE_VERSION)
            .raw(self.group_id)
            .u32(self.epoch)
            .raw(self.parent)
            .text16(self.title)
            .u16(len(self.members))
        )
        for member in self.members:
            writer.text16(member)
        writer.u16(len(self.admins))
        for admin in self.admins:
            writer.text16(admin)
        return writer.getvalue()

    @staticmethod
    def read(reader: Reader) -> GroupState:
        reader.version(STATE_VERSION)
        group_id, epoch, parent = reader.raw(GROUP_ID_LENGTH), reader.u32(), reader.raw(32)
        title = reader.text16()
        members = tuple(reader.text16() for _ in range(reader.u16()))
        admins = tuple(reader.text16() for _ in range(reader.u16()))
        return GroupState(group_id, epoch, title, members, admins, parent)

    @staticmethod
    def from_bytes(data: bytes) -> GroupState:
        reader = Reader(data, "group state")
        state = GroupState.read(reader)
        reader.end()
        return state

    def digest(self) -> bytes:
        return hashlib.sha256(STATE_CONTEXT + self.to_bytes()).digest()


@dataclass(frozen=True)
class GroupChange:
    """A new state, its author and the author's device signature over both."""

    state: GroupState
    author: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return CHANGE_CONTEXT + Writer().text16(self.author).raw(self.state.to_bytes()).getvalue()

    def to_bytes(self) -> bytes:
        return (
            Writer().text16(self.author).raw(self.state.to_bytes()).raw(self.signature).getvalue()
        )

    @staticmethod
    def from_bytes(data: bytes) -> GroupChange:
        reader = Reader(data, "group change")
        author = reader.text16()
        state = GroupState.read(reader)
        signature = reader.raw(64)
        reader.end()
        return GroupChange(state, author, signature)


class Outcome(enum.Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT_KEPT = "conflict, ours kept"  # a branch with a higher digest: refused
    CONFLICT_SWITCHED = "conflict, switched"  # a branch with a lower digest: taken
    NOT_FOR_US = "not for us"


@dataclass(frozen=True)
class Applied:
    outcome: Outcome
    state: GroupState | None  # the state to hold from now on

    @property
    def changed(self) -> bool:
        return self.outcome in (Outcome.APPLIED, Outcome.CONFLICT_SWITCHED)


def _sign(state: GroupState, author: str, key: SigningKey) -> GroupChange:
    unsigned = GroupChange(state, author, b"")
    return GroupChange(state, author, key.sign(unsigned.signed_bytes()))


def create(
    group_id: bytes, title: str, creator: str, members: list[str], key: SigningKey
) -> GroupChange:
    names = tuple(sorted(set(members) | {creator}))
    return _sign(GroupState(group_id, 0, title, names, (creator,), NO_PARENT), creator, key)


def change(
    current: GroupState,
    author: str,
    key: SigningKey,
    *,
    title: str | None = None,
    add: tuple[str, ...] = (),
    remove: tuple[str, ...] = (),
    admins: tuple[str, ...] | None = None,
) -> GroupChange:
    """The next state, made by `author`, who must be an admin of `current`."""
    if author not in current.admins:
        raise GroupStateError("only a group's admins change its members, title or admins")
    members = (set(current.members) | set(add)) - set(remove)
    chosen = set(current.admins if admins is None else admins) & members
    state = GroupState(
        current.group_id,
        current.epoch + 1,
        current.title if title is None else title,
        tuple(sorted(members)),
        tuple(sorted(chosen)),
        current.digest(),
    )
    return _sign(state, author, key)


def leave(current: GroupState, member: str, key: SigningKey) -> GroupChange:
    """The next state without `member`, signed by that member (anyone may leave)."""
    members = tuple(m for m in current.members if m != member)
    state = GroupState(
        current.group_id,
        current.epoch + 1,
        current.title,
        members,
        tuple(a for a in current.admins if a != member),
        current.digest(),
    )
    return _sign(state, member, key)


def _may_make(current: GroupState, new: GroupState, author: str) -> bool:
    if author in current.admins:
        return True
    # A member leaving: exactly themselves removed, nothing else touched.
    return (
        author in current.members
        and new.title == current.title
        and set(new.members) == set(current.members) - {author}
        and set(new.admins) == set(current.admins) - {author}
    )


def apply(
    current: GroupState | None,
    received: GroupChange,
    author_key: VerifyKey,
    me: str,
    *,
    parent: GroupState | None = None,
) -> Applied:
    """What a member holding `current` (and, if it has it, the state before it,
    `parent`) does with a change `received` from its author, whose device identity
    (as this member knows it) is `author_key`.

    Raises AuthenticationError for a bad signature and GroupStateError for a change
    its author may not make; otherwise says what happened and the state to hold.
    """
    try:
        author_key.verify(received.signature, received.signed_bytes())
    except CryptoError:
        raise AuthenticationError("a group change's signature does not verify") from None
    new, author = received.state, received.author
    if current is None:
        if me not in new.members:
            return Applied(Outcome.NOT_FOR_US, None)
        if author not in new.admins:
            raise GroupStateError("an invitation must come from one of the group's admins")
        return Applied(Outcome.APPLIED, new)
    if new.group_id != current.group_id:
        raise GroupStateError("a change for another group")
    if new.epoch < current.epoch:
        return Applied(Outcome.STALE, current)
    if new.epoch == current.epoch:
        if new.digest() == current.digest():
            return Applied(Outcome.DUPLICATE, current)
        # Two branches from one parent: whoever made the other one must have been
        # allowed to, by the parent (or, if we never held the parent, by ours).
        judge = parent if parent is not None and parent.digest() == current.parent else current
        if current.epoch == 0 or new.parent != current.parent or not _may_make(judge, new, author):
            raise GroupStateError(f"{author} sent a group state no member could have made")
        if new.digest() < current.digest():
            return Applied(Outcome.CONFLICT_SWITCHED, new)
        return Applied(Outcome.CONFLICT_KEPT, current)
    if not _may_make(current, new, author):
        raise GroupStateError(f"{author} may not change this group")
    if new.epoch == current.epoch + 1 and new.parent != current.digest():
        # The next step of a branch this member did not keep.
        return Applied(Outcome.CONFLICT_KEPT, current)
    return Applied(Outcome.APPLIED, new)


def adopt(received: GroupChange, me: str) -> Applied:
    """A state handed on by a member, for a group this member does not hold yet,
    whose author's signature it cannot check (the author is an earlier install of
    its own, or someone it holds no key for): taken on the word of the member who
    sent it over their authenticated session, the trust of a first invitation. From
    then on only changes `apply` accepts move it."""
    if me not in received.state.members:
        return Applied(Outcome.NOT_FOR_US, None)
    return Applied(Outcome.APPLIED, received.state)


__all__ = [
    "Applied",
    "GroupChange",
    "GroupState",
    "GroupStateError",
    "Outcome",
    "adopt",
    "apply",
    "change",
    "create",
    "leave",
]
