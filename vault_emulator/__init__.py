"""Cipherline Backup Key Vault emulator.

Holds password-protected backup keys behind OPAQUE with an attempt limit, sealed
by an HSM-style backend (SoftHSM2 over PKCS#11, a TPM 2.0, or - for development
only - software keys).
"""

from app import __version__

__all__ = ["__version__"]
