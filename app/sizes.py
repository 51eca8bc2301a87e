"""Byte counts for people: binary units under their proper names (KiB, not KB).

One function, shared by the desktop app and the command line, so a backup that
the wizard calls "1.5 MiB" is called the same by `cipherline backup status`.
It lives outside the client's layers because both the UI and app.backup use it.
"""

from __future__ import annotations

_UNITS = ("KiB", "MiB", "GiB", "TiB")


def format_size(size: float) -> str:
    """`size` bytes as "512 bytes", "1.5 KiB", "12.3 MiB", "2.0 GiB"."""
    if size < 1024:
        count = max(0, round(size))
        return "1 byte" if count == 1 else f"{count:,} bytes"
    value = float(size)
    for unit in _UNITS:
        value /= 1024
        # 1023.96 KiB would print as "1,024.0 KiB": the next unit reads better.
        if round(value, 1) < 1024 or unit == _UNITS[-1]:
            return f"{value:,.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover
