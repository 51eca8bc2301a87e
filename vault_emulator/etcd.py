"""The vault's connection to etcd: the v3 JSON gateway, tried member by member.

Kept apart from the record logic (`records.py`) so that how we reach etcd
(endpoints, TLS, credentials) changes without touching what we store there.
"""

from __future__ import annotations

import threading
from typing import Any

import requests


class StorageUnavailable(Exception):
    """The record store (etcd quorum) cannot be reached; nothing was changed."""


class EtcdClient:
    """POSTs to etcd's v3 JSON gateway, one `requests.Session` per thread."""

    def __init__(self, endpoints: list[str]) -> None:
        self._endpoints = [e.rstrip("/") for e in endpoints]
        self._local = threading.local()

    @property
    def endpoints(self) -> list[str]:
        return list(self._endpoints)

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for endpoint in list(self._endpoints):
            try:
                response = self._session().post(endpoint + path, json=body, timeout=3)
            except requests.RequestException:
                continue
            if response.status_code >= 500:
                continue
            if response.status_code != 200:
                raise StorageUnavailable(f"etcd refused a request ({response.status_code})")
            result: dict[str, Any] = response.json()
            return result
        raise StorageUnavailable("no etcd member answered")
