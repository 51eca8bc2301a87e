"""Cipherline relay (the seed's ChatD): routes ciphertext between devices.

It stores and forwards only what clients have already encrypted end to end.
"""

from app import __version__

__all__ = ["__version__"]
