"""The encrypted local store (SQLCipher) and its repositories."""
