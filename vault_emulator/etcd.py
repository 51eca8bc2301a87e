"""The vault's connection to etcd: the v3 JSON gateway, tried member by member.

Kept apart from the record logic (`records.py`) so that how we reach etcd
(endpoints, TLS, credentials) changes without touching what we store there.

A production fleet reaches etcd over mutual TLS *and* as its own etcd user: in
etcd 3.4 the gateway never maps a client certificate to a user, so the
certificate only gets us onto the port and the user's token decides what we may
touch (the vault's role covers its key prefix and nothing else).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import requests

from vault_emulator.config import ConfigError, read_secret_file

# How etcd says a token can no longer be used: expired or from another signing key
# (401), or issued before the last change to users and roles (400, "auth store is
# old"). In both cases the request was refused before it was applied, so it is safe
# to authenticate again and resend it.
_STALE_TOKEN_MESSAGES = ("invalid auth token", "revision of auth store is old")


class StorageUnavailable(Exception):
    """The record store (etcd quorum) cannot be reached; nothing was changed."""


class EtcdAuthError(StorageUnavailable):
    """etcd refused the vault's credentials or its permissions; nothing was changed.

    A subclass of `StorageUnavailable` so that the node answers it the same way
    (503, try later) while an operator reading the error sees what to fix.
    """


def read_password_file(path: Path) -> str:
    """The vault's etcd password, from a file only its owner can read."""
    return read_secret_file(path, "etcd password")


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict) and (body.get("message") or body.get("error")):
        return str(body.get("message") or body.get("error"))
    return response.text[:200].strip()


class EtcdClient:
    """POSTs to etcd's v3 JSON gateway, one `requests.Session` per thread.

    With `user` and `password_file` it authenticates once, sends the token with
    every request, and authenticates again (once per request) when etcd says the
    token went stale. The password is read from its file at construction and kept
    only in this object; it never appears in its repr or in an error.
    """

    def __init__(
        self,
        endpoints: list[str],
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        user: str | None = None,
        password_file: Path | None = None,
    ) -> None:
        self._endpoints = [e.rstrip("/") for e in endpoints]
        if (cert_file is None) != (key_file is None):
            raise ConfigError("an etcd client certificate needs its key, and a key its certificate")
        if (user is None) != (password_file is None):
            raise ConfigError("an etcd user needs a password file, and a password file a user")
        if user is not None and any(not e.startswith("https://") for e in self._endpoints):
            raise ConfigError("etcd credentials are only sent over TLS: use https:// endpoints")
        self._verify: str | bool = str(ca_file) if ca_file is not None else True
        self._cert = (str(cert_file), str(key_file)) if cert_file and key_file else None
        self._user = user
        self._password = read_password_file(password_file) if password_file else None
        self._token: str | None = None
        self._auth_lock = threading.Lock()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"EtcdClient({self._endpoints!r}, user={self._user!r})"

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            session = requests.Session()
            # Only what we were configured with: REQUESTS_CA_BUNDLE would otherwise
            # replace our CA, and a proxy from the environment would see the token.
            session.trust_env = False
            session.verify = self._verify
            session.cert = self._cert
            self._local.session = session
        session_: requests.Session = self._local.session
        return session_

    def _send(self, path: str, body: dict[str, Any], token: str | None) -> requests.Response:
        """The first answer from a member that is up; 5xx and no answer try the next."""
        headers = {"Authorization": token} if token is not None else None
        for endpoint in list(self._endpoints):
            try:
                response = self._session().post(
                    endpoint + path, json=body, headers=headers, timeout=3
                )
            except requests.RequestException:
                continue
            if response.status_code >= 500:
                continue
            return response
        raise StorageUnavailable("no etcd member answered")

    def _authenticate(self, stale: str | None) -> str:
        """A token; a new one unless another thread already replaced `stale`."""
        with self._auth_lock:
            if self._token is not None and self._token != stale:
                return self._token
            response = self._send(
                "/v3/auth/authenticate", {"name": self._user, "password": self._password}, None
            )
            if response.status_code != 200:
                raise EtcdAuthError(
                    f"etcd refused the credentials of user {self._user!r} "
                    f"({response.status_code}: {_error_message(response)})"
                )
            token = response.json().get("token")
            if not isinstance(token, str) or not token:
                raise EtcdAuthError("etcd answered an authentication without a token")
            self._token = token
            return token

    @staticmethod
    def _token_is_stale(response: requests.Response) -> bool:
        if response.status_code == 401:
            return True
        return response.status_code == 400 and any(
            message in response.text for message in _STALE_TOKEN_MESSAGES
        )

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        token = None
        if self._user is not None:
            token = self._token or self._authenticate(None)
        response = self._send(path, body, token)
        if token is not None and self._token_is_stale(response):
            response = self._send(path, body, self._authenticate(token))
        if response.status_code in (401, 403):
            raise EtcdAuthError(
                f"etcd refused a request ({response.status_code}: {_error_message(response)})"
            )
        if response.status_code != 200:
            raise StorageUnavailable(
                f"etcd refused a request ({response.status_code}: {_error_message(response)})"
            )
        result: dict[str, Any] = response.json()
        return result
