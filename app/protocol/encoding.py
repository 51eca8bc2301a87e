"""Length-explicit binary encoding shared by every protocol format.

All integers are big-endian. Variable-length fields carry a length prefix whose
width the format names (u8, u16 or u32). The reader refuses trailing bytes and
short input with `MalformedMessage`, so a parser built on it cannot raise
IndexError or struct.error.
"""

from __future__ import annotations

from app.protocol.errors import MalformedMessage


class Writer:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def u8(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(1, "big"))
        return self

    def u16(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(2, "big"))
        return self

    def u32(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(4, "big"))
        return self

    def u64(self, value: int) -> Writer:
        self._parts.append(value.to_bytes(8, "big"))
        return self

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def bytes8(self, data: bytes) -> Writer:
        if len(data) > 0xFF:
            raise ValueError("field too long for a u8 length")
        return self.u8(len(data)).raw(data)

    def bytes16(self, data: bytes) -> Writer:
        if len(data) > 0xFFFF:
            raise ValueError("field too long for a u16 length")
        return self.u16(len(data)).raw(data)

    def bytes32(self, data: bytes) -> Writer:
        return self.u32(len(data)).raw(data)

    def text16(self, text: str) -> Writer:
        return self.bytes16(text.encode("utf-8"))

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    def __init__(self, data: bytes, what: str = "message") -> None:
        self._data = memoryview(bytes(data))
        self._offset = 0
        self._what = what

    def _take(self, length: int) -> bytes:
        if length < 0 or self._offset + length > len(self._data):
            raise MalformedMessage(f"the {self._what} is truncated")
        chunk = bytes(self._data[self._offset : self._offset + length])
        self._offset += length
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self._take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self._take(4), "big")

    def u64(self) -> int:
        return int.from_bytes(self._take(8), "big")

    def raw(self, length: int) -> bytes:
        return self._take(length)

    def bytes8(self) -> bytes:
        return self._take(self.u8())

    def bytes16(self) -> bytes:
        return self._take(self.u16())

    def bytes32(self, limit: int = 1 << 26) -> bytes:
        length = self.u32()
        if length > limit:
            raise MalformedMessage(f"a field of the {self._what} is too long")
        return self._take(length)

    def text16(self) -> str:
        try:
            return self.bytes16().decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMessage(f"the {self._what} holds invalid UTF-8") from None

    def rest(self) -> bytes:
        return self._take(len(self._data) - self._offset)

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def end(self) -> None:
        if self._offset != len(self._data):
            raise MalformedMessage(f"the {self._what} has trailing bytes")

    def version(self, expected: int) -> None:
        found = self.u8()
        if found != expected:
            raise MalformedMessage(f"{self._what} version {found} is not supported")
