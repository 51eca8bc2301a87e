"""Cipherline desktop client.

This package must stay importable without Qt: the relay and the vault emulator
import its protocol and crypto layers.
"""

__version__ = "0.1.0"
