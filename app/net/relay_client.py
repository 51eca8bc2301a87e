"""HTTPS client for the relay, on `requests`, trusting only the pinned relay CA.

Idempotent calls (and message sends, which carry client-chosen ids) are retried
with exponential backoff and jitter; the rest fail fast with a typed error. A
relay that names its own wait (`Retry-After` on a 429 or 503) is not retried
here: the typed error carries the wait, and the caller schedules the retry.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import math
import random
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import requests

# How often a vault call waits out the relay's rate limit before giving up, and the
# longest it waits each time (a relay asking for more is answered with the 429).
VAULT_RATE_LIMIT_RETRIES = 5
VAULT_RATE_LIMIT_MAX_WAIT = 5.0
# A link mailbox's sides (docs/relay-api.md, "Linking a device").
LINK_ROLES = ("new", "existing")
# The relay holds a long poll at most this long; the request waits a little more.
LINK_MAX_WAIT = 25.0


def parse_retry_after(header: str | None, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` value (delay-seconds or an HTTP date), or None
    when there is none or it cannot be read."""
    if header is None or not header.strip():
        return None
    try:
        seconds = float(header)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _retry_after(header: str | None) -> float:
    wait = parse_retry_after(header)
    return min(max(1.0 if wait is None else wait, 0.1), VAULT_RATE_LIMIT_MAX_WAIT)


def _path(segment: str) -> str:
    """One path segment: what the caller typed cannot reach another route."""
    return urllib.parse.quote(segment, safe="")


class RelayError(Exception):
    """The relay answered, but with an error; `status` is the HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RelayUnavailable(RelayError):
    """The relay could not be reached (refused, timed out, TLS failure; `status` 0)
    or failed the request as a whole (5xx, e.g. 503 when overloaded, with the
    `Retry-After` it named, if any). Nothing of the request was stored."""

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(status, message)
        self.retry_after = retry_after


class AuthError(RelayError):
    pass


class NotFound(RelayError):
    pass


class Conflict(RelayError):
    pass


class RateLimited(RelayError):
    """429: this account or address sent too much; nothing of the request was stored."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, message)
        self.retry_after = retry_after


class SendOutcome(str):
    """The relay's answer for one message of a send: the status itself (`queued`,
    `duplicate`, `unknown_recipient`, `mailbox_full`, or one this client does not
    know), so it compares equal to the plain status string, plus the `retry_after`
    seconds the relay named for `mailbox_full`."""

    retry_after: float | None

    def __new__(cls, status: str, retry_after: float | None = None) -> SendOutcome:
        outcome = super().__new__(cls, status)
        outcome.retry_after = retry_after
        return outcome

    def __repr__(self) -> str:
        return f"SendOutcome({str(self)!r}, retry_after={self.retry_after!r})"


@dataclass(frozen=True)
class Envelope:
    seq: int
    client_id: str
    sender: str
    sender_device: int
    body: bytes
    server_time: int
    # Sealed mail: the relay does not know the sender ("" and 0 above); who sent
    # it is inside the envelope (app/protocol/sealed.py).
    sealed: bool = False

    @staticmethod
    def from_json(raw: dict[str, Any]) -> Envelope:
        sealed = raw["sender"] is None
        return Envelope(
            seq=int(raw["seq"]),
            client_id=str(raw["id"]),
            sender="" if sealed else str(raw["sender"]),
            sender_device=0 if sealed else int(raw["sender_device"]),
            body=base64.b64decode(raw["body"]),
            server_time=int(raw["server_time"]),
            sealed=sealed,
        )


@dataclass(frozen=True)
class OutgoingEnvelope:
    client_id: str
    recipient: str
    device_id: int
    body: bytes
    # For a sealed send: the recipient device's delivery token (None: the device
    # accepts sealed mail from anyone).
    access_key: bytes | None = None


class RelayClient:
    def __init__(
        self,
        base_url: str,
        ca_file: Path,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._retries = retries
        # Only the relay's own CA: a certificate from any public CA is refused. It is
        # passed on every request because requests lets REQUESTS_CA_BUNDLE in the
        # environment override a Session's `verify`.
        self._ca_file = str(ca_file)
        self._session = requests.Session()
        self.token = token

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def ca_file(self) -> str:
        return self._ca_file

    def close(self) -> None:
        self._session.close()

    # ---- plumbing -------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | IO[bytes] | Iterator[bytes] | None = None,
        params: dict[str, Any] | None = None,
        retry: bool = False,
        stream: bool = False,
        auth: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        attempts = self._retries + 1 if retry else 1
        all_headers = dict(headers or {})
        if auth and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        delay = 0.2
        for attempt in range(attempts):
            try:
                response = self._session.request(
                    method,
                    f"{self._base_url}{path}",
                    json=json_body,
                    data=data,
                    params=params,
                    headers=all_headers,
                    timeout=self._timeout if timeout is None else timeout,
                    verify=self._ca_file,
                    stream=stream,
                )
            except requests.RequestException as error:
                if attempt + 1 < attempts:
                    time.sleep(delay * (1 + random.random()))  # noqa: S311 - jitter only
                    delay *= 2
                    continue
                raise RelayUnavailable(
                    f"cannot reach the relay at {self._base_url}: {type(error).__name__}"
                ) from None
            # A relay that names its wait is not asked again sooner: the error
            # carries the wait to the caller.
            if (
                response.status_code >= 500
                and attempt + 1 < attempts
                and parse_retry_after(response.headers.get("Retry-After")) is None
            ):
                time.sleep(delay * (1 + random.random()))  # noqa: S311
                delay *= 2
                continue
            if response.status_code >= 400:
                raise self._error(response)
            return response
        raise RelayUnavailable("the relay kept failing")  # pragma: no cover

    @staticmethod
    def _error(response: requests.Response) -> RelayError:
        try:
            message = str(response.json().get("error", response.reason))
        except ValueError:
            message = response.reason or f"HTTP {response.status_code}"
        status = response.status_code
        if status == 401:
            return AuthError(status, message)
        if status == 404:
            return NotFound(status, message)
        if status == 409:
            return Conflict(status, message)
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429:
            return RateLimited(message, 1.0 if retry_after is None else retry_after)
        if status >= 500:
            return RelayUnavailable(
                f"the relay failed ({status}): {message}", status=status, retry_after=retry_after
            )
        return RelayError(status, message)

    # ---- service ----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self._request("GET", "/health", auth=False).json()
        return body

    # ---- accounts ---------------------------------------------------------------
    def register(self, username: str, device_name: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request(
            "POST",
            "/v1/accounts",
            json_body={"username": username, "device_name": device_name},
            auth=False,
        ).json()
        self.token = str(body["token"])
        return body

    def add_device(self, device_name: str) -> dict[str, Any]:
        body: dict[str, Any] = self._request(
            "POST", "/v1/devices", json_body={"device_name": device_name}
        ).json()
        return body

    def devices(self) -> list[dict[str, Any]]:
        devices: list[dict[str, Any]] = self._request("GET", "/v1/devices", retry=True).json()[
            "devices"
        ]
        return devices

    def rename_own_device(self, stored_name: str) -> None:
        self._request("PUT", "/v1/devices/self/name", json_body={"device_name": stored_name})

    def remove_device(self, device_id: int) -> None:
        self._request("DELETE", f"/v1/devices/{device_id}")

    def revoke_token(self) -> None:
        self._request("POST", "/v1/tokens/revoke")

    # ---- device lists (docs/protocol.md §13) ------------------------------------
    def publish_device_list(self, signed: bytes) -> int:
        """Publishes the account's signed device list; the version now published.

        Safe to retry: the same list again is accepted. A list not newer than the
        published one raises Conflict (the relay's code `stale_device_list`)."""
        body = {"device_list": base64.b64encode(signed).decode("ascii")}
        raw = self._request("PUT", "/v1/devices/list", json_body=body, retry=True).json()
        return int(raw["version"])

    def fetch_device_list(self, username: str) -> bytes | None:
        """The signed list `username` last published (unverified: open it with
        app.protocol.device_list), or None if none; NotFound for no such user."""
        raw = self._request("GET", f"/v1/users/{_path(username)}/device-list", retry=True).json()
        published = raw.get("device_list")
        return None if published is None else base64.b64decode(published)

    # ---- linking a device -----------------------------------------------------
    # Never with this device's token (auth=False): a new device has none, and the
    # relay need not learn which account links. The mailbox id is the capability.
    def open_link_mailbox(self, public_key: bytes) -> tuple[str, int]:
        """Opens a link mailbox for the new device's 32-byte public key:
        (its id, when it expires in ms). Not retried: a retry would open another."""
        body = {"public_key": base64.b64encode(public_key).decode("ascii")}
        raw = self._request("POST", "/v1/provisioning", json_body=body, auth=False).json()
        return str(raw["id"]), int(raw["expires_at"])

    def link_mailbox_key(self, mailbox_id: str) -> bytes:
        """The public key the new device opened `mailbox_id` with; NotFound once
        it has expired or was closed."""
        raw = self._request(
            "GET", f"/v1/provisioning/{_path(mailbox_id)}", retry=True, auth=False
        ).json()
        return base64.b64decode(raw["public_key"])

    def post_link_message(self, mailbox_id: str, role: str, body: bytes) -> int:
        """Posts an (end-to-end encrypted) message as `role` ("new" or "existing");
        its index. Not retried: a retry would post it twice."""
        if role not in LINK_ROLES:
            raise ValueError(f"a link role is one of {LINK_ROLES}")
        raw = self._request(
            "POST",
            f"/v1/provisioning/{_path(mailbox_id)}/messages/{role}",
            json_body={"body": base64.b64encode(body).decode("ascii")},
            auth=False,
        ).json()
        return int(raw["index"])

    def link_messages(
        self, mailbox_id: str, role: str, after: int, wait: float = 0
    ) -> list[tuple[int, bytes]]:
        """`role`'s messages with index > `after` (-1 for all), as (index, body).
        With `wait` (seconds, at most 25) the relay holds the request until one
        arrives or the time is up."""
        if role not in LINK_ROLES:
            raise ValueError(f"a link role is one of {LINK_ROLES}")
        wait = min(max(wait, 0.0), LINK_MAX_WAIT)
        raw = self._request(
            "GET",
            f"/v1/provisioning/{_path(mailbox_id)}/messages/{role}",
            params={"after": after, "wait": wait},
            retry=True,
            auth=False,
            timeout=self._timeout + wait,
        ).json()
        return [(int(item["index"]), base64.b64decode(item["body"])) for item in raw["messages"]]

    def close_link_mailbox(self, mailbox_id: str) -> None:
        """Ends a link early, deleting what it holds. One already gone (closed by
        the other side, or expired) is not an error: either way it is closed."""
        with contextlib.suppress(NotFound):
            self._request("DELETE", f"/v1/provisioning/{_path(mailbox_id)}", auth=False)

    # ---- prekeys ----------------------------------------------------------------
    def upload_keys(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._request("PUT", "/v1/keys", json_body=body, retry=True).json()
        return result

    def key_status(self) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", "/v1/keys/status", retry=True).json()
        return result

    def fetch_keys(self, username: str) -> dict[str, Any]:
        result: dict[str, Any] = self._request("GET", f"/v1/users/{username}/keys").json()
        return result

    # ---- mailbox ----------------------------------------------------------------
    def send(self, envelopes: list[OutgoingEnvelope]) -> dict[str, SendOutcome]:
        """Sends a batch; returns client id -> outcome. Safe to retry: ids dedupe.

        Raises RateLimited (429) or RelayUnavailable (unreachable, 5xx) when nothing
        of the batch was stored, each with the relay's `Retry-After` if it named
        one, and RelayError for another refusal of the whole request (a 4xx: the
        batch holds something the relay does not take)."""
        body = {
            "messages": [
                {
                    "id": e.client_id,
                    "recipient": e.recipient,
                    "device_id": e.device_id,
                    "body": base64.b64encode(e.body).decode("ascii"),
                }
                for e in envelopes
            ]
        }
        response = self._request("POST", "/v1/messages", json_body=body, retry=True)
        return self._outcomes(response)

    def send_sealed(self, envelopes: list[OutgoingEnvelope]) -> dict[str, SendOutcome]:
        """As `send`, for sealed envelopes: without this device's token, each with
        its recipient's delivery token. An item whose token the relay refuses comes
        back `access_denied`."""
        body = {
            "messages": [
                {
                    "id": e.client_id,
                    "recipient": e.recipient,
                    "device_id": e.device_id,
                    "body": base64.b64encode(e.body).decode("ascii"),
                    "access_key": None
                    if e.access_key is None
                    else base64.b64encode(e.access_key).decode("ascii"),
                }
                for e in envelopes
            ]
        }
        response = self._request(
            "POST", "/v1/sealed/messages", json_body=body, retry=True, auth=False
        )
        return self._outcomes(response)

    def sender_certificate(self) -> tuple[bytes, int]:
        """A fresh sender certificate for this device, and when it expires (ms)."""
        raw = self._request("GET", "/v1/certificate", retry=True).json()
        return base64.b64decode(raw["certificate"]), int(raw["expires"])

    def set_sealed_access(self, access_key: bytes | None, *, allow_anyone: bool) -> None:
        body = {
            "access_key": None if access_key is None else base64.b64encode(access_key).decode(),
            "allow_anyone": allow_anyone,
        }
        self._request("PUT", "/v1/sealed/access", json_body=body, retry=True)

    @staticmethod
    def _outcomes(response: requests.Response) -> dict[str, SendOutcome]:
        outcomes: dict[str, SendOutcome] = {}
        try:
            for result in response.json()["results"]:
                retry_after = result.get("retry_after")
                outcomes[str(result["id"])] = SendOutcome(
                    str(result["status"]),
                    None if retry_after is None else parse_retry_after(str(retry_after)),
                )
        except (ValueError, KeyError, TypeError, AttributeError):
            # Unreadable, so nothing is known to be stored: the same as no answer.
            raise RelayUnavailable("the relay's answer to a send could not be read") from None
        return outcomes

    def fetch(self, after: int = 0, limit: int = 500) -> list[Envelope]:
        raw = self._request(
            "GET", "/v1/messages", params={"after": after, "limit": limit}, retry=True
        ).json()
        return [Envelope.from_json(item) for item in raw["envelopes"]]

    def ack(self, seqs: list[int]) -> None:
        if seqs:
            self._request("POST", "/v1/messages/ack", json_body={"seqs": seqs}, retry=True)

    # ---- attachments ------------------------------------------------------------
    def upload_attachment(self, source: IO[bytes]) -> str:
        response = self._request(
            "POST",
            "/v1/attachments",
            data=source,
            headers={"Content-Type": "application/octet-stream"},
        )
        return str(response.json()["id"])

    def download_attachment(self, blob_id: str, target: IO[bytes]) -> int:
        response = self._request("GET", f"/v1/attachments/{blob_id}", stream=True, retry=True)
        size = 0
        for chunk in response.iter_content(64 * 1024):
            target.write(chunk)
            size += len(chunk)
        return size

    # ---- vault pass-through -----------------------------------------------------
    @staticmethod
    def _vault_path(domain: int | None) -> str:
        # The split vault's domains sit under their own prefix (relay-api.md).
        return "/v1/vault" if domain is None else f"/v1/vault/domains/{int(domain)}"

    def vault_call(self, op: str, body: bytes, domain: int | None = None) -> tuple[int, bytes]:
        """Forwards an opaque, end-to-end encrypted vault message; (status, body).

        A 429 comes from the relay's own rate limit, before any vault node saw the
        request, so nothing was counted: the call waits as told and tries again (a
        few times, then the 429 goes to the caller)."""
        for attempt in range(VAULT_RATE_LIMIT_RETRIES + 1):
            try:
                response = self._session.post(
                    f"{self._base_url}{self._vault_path(domain)}/{op}",
                    data=body,
                    headers={"Content-Type": "application/octet-stream"},
                    timeout=self._timeout,
                    verify=self._ca_file,
                )
            except requests.RequestException as error:
                raise RelayUnavailable(f"cannot reach the relay: {type(error).__name__}") from None
            if response.status_code != 429 or attempt == VAULT_RATE_LIMIT_RETRIES:
                break
            time.sleep(_retry_after(response.headers.get("Retry-After")))
        return response.status_code, response.content

    def vault_fleet(self, domain: int | None = None) -> tuple[int, bytes]:
        try:
            response = self._session.get(
                f"{self._base_url}{self._vault_path(domain)}/fleet",
                timeout=self._timeout,
                verify=self._ca_file,
            )
        except requests.RequestException as error:
            raise RelayUnavailable(f"cannot reach the relay: {type(error).__name__}") from None
        return response.status_code, response.content

    def push_url(self) -> str:
        return self._base_url.replace("https://", "wss://", 1) + "/v1/push"
