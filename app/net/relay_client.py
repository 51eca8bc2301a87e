"""HTTPS client for the relay, on `requests`, trusting only the pinned relay CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import requests


class RelayError(Exception):
    """The relay answered, but with an error; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RelayUnavailable(Exception):
    """The relay could not be reached (refused, timed out, TLS failure)."""


class RelayClient:
    def __init__(self, base_url: str, ca_file: Path, *, timeout: float = 10.0) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        # Only the relay's own CA: a certificate from any public CA is refused. It is
        # passed on every request because requests lets REQUESTS_CA_BUNDLE in the
        # environment override a Session's `verify`.
        self._ca_file = str(ca_file)
        self._session = requests.Session()

    @property
    def base_url(self) -> str:
        return self._base_url

    def close(self) -> None:
        self._session.close()

    def health(self) -> dict[str, Any]:
        try:
            response = self._session.get(
                f"{self._base_url}/health", timeout=self._timeout, verify=self._ca_file
            )
        except requests.RequestException as error:
            raise RelayUnavailable(f"cannot reach the relay at {self._base_url}: {error}") from None
        if response.status_code != 200:
            raise RelayError(response.status_code, response.text[:200])
        body: dict[str, Any] = response.json()
        return body
