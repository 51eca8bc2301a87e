"""etcd as the fleet runs it: mutual TLS, auth on, the vault confined to its prefix.

Every test talks to real etcd members. Raw `requests` calls play someone on
loopback who is not the vault; `EtcdClient` is what the vault itself uses;
`cluster.put`/`get` are the operator (etcd root), whom later tests cast as the
malicious party editing the vault's records directly. The keys written here sit
under their own name inside the vault's prefix, apart from what a node reads at
start, because the session cluster is shared with other tests.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.components import VAULT_ETCD_PREFIX, VAULT_ETCD_USER, EtcdCluster
from tests.support.processes import python_env
from tests.vault.conftest import Fleet
from vault_emulator.config import ConfigError
from vault_emulator.etcd import EtcdAuthError, EtcdClient, StorageUnavailable


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _put(key: bytes, value: bytes) -> dict[str, str]:
    return {"key": _b64(key), "value": _b64(value)}


def _session(cluster: EtcdCluster, *, client_cert: bool) -> requests.Session:
    session = requests.Session()
    # Without this, REQUESTS_CA_BUNDLE from the environment replaces our CA.
    session.trust_env = False
    session.verify = str(cluster.ca_file)
    if client_cert:
        session.cert = (str(cluster.vault_cert_file), str(cluster.vault_key_file))
    return session


def _password_file(path: Path, password: str, mode: int = 0o600) -> Path:
    path.write_text(password)
    path.chmod(mode)
    return path


def _client(cluster: EtcdCluster, password_file: Path) -> EtcdClient:
    return EtcdClient(
        cluster.endpoints,
        ca_file=cluster.ca_file,
        cert_file=cluster.vault_cert_file,
        key_file=cluster.vault_key_file,
        user=VAULT_ETCD_USER,
        password_file=password_file,
    )


def test_plain_http_to_a_member_gets_nothing(etcd_cluster: EtcdCluster) -> None:
    key = VAULT_ETCD_PREFIX + b"security-tests/plain-http"
    etcd_cluster.put(key, b"operator's value")
    plain = etcd_cluster.members[0].client_url.replace("https://", "http://")
    session = requests.Session()
    session.trust_env = False
    for path, body in (
        ("/v3/kv/put", _put(key, b"rewritten")),
        ("/v3/kv/range", {"key": _b64(key)}),
    ):
        try:
            response = session.post(plain + path, json=body, timeout=5)
        except requests.ConnectionError:
            continue
        assert response.status_code != 200
        assert _b64(b"operator's value") not in response.text
    assert etcd_cluster.get(key) == b"operator's value"


def test_tls_without_a_client_certificate_is_refused(etcd_cluster: EtcdCluster) -> None:
    session = _session(etcd_cluster, client_cert=False)
    for member in etcd_cluster.members:
        with pytest.raises(requests.ConnectionError):
            session.get(f"{member.client_url}/health", timeout=5)
        with pytest.raises(requests.ConnectionError):
            session.post(f"{member.client_url}/v3/kv/range", json={"key": _b64(b"/")}, timeout=5)


def test_a_client_certificate_without_a_token_cannot_read_or_write(
    etcd_cluster: EtcdCluster,
) -> None:
    key = VAULT_ETCD_PREFIX + b"security-tests/no-token"
    etcd_cluster.put(key, b"operator's value")
    session = _session(etcd_cluster, client_cert=True)
    url = etcd_cluster.members[0].client_url
    assert session.get(f"{url}/health", timeout=5).status_code == 200  # TLS itself works
    read = session.post(f"{url}/v3/kv/range", json={"key": _b64(key)}, timeout=5)
    assert read.status_code != 200
    assert "user name is empty" in read.text
    assert _b64(b"operator's value") not in read.text
    write = session.post(f"{url}/v3/kv/put", json=_put(key, b"rewritten"), timeout=5)
    assert write.status_code != 200
    forged = session.post(
        f"{url}/v3/kv/range",
        json={"key": _b64(key)},
        headers={"Authorization": "forged"},
        timeout=5,
    )
    assert forged.status_code == 401
    assert etcd_cluster.get(key) == b"operator's value"


def test_the_vault_user_reads_and_writes_its_prefix_and_nothing_else(
    etcd_cluster: EtcdCluster,
) -> None:
    client = etcd_cluster.vault_client()
    inside = VAULT_ETCD_PREFIX + b"security-tests/inside"
    client.post("/v3/kv/put", _put(inside, b"the vault's value"))
    result = client.post("/v3/kv/range", {"key": _b64(inside)})
    assert base64.b64decode(result["kvs"][0]["value"]) == b"the vault's value"
    assert etcd_cluster.get(inside) == b"the vault's value"

    etcd_cluster.put(b"/other", b"not the vault's")
    # Just past the prefix's range end, and a range that starts inside but runs past it.
    beyond = VAULT_ETCD_PREFIX[:-1] + b"0"
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("/v3/kv/put", _put(b"/other", b"rewritten")),
        ("/v3/kv/range", {"key": _b64(b"/other")}),
        ("/v3/kv/put", _put(beyond, b"x")),
        ("/v3/kv/range", {"key": _b64(VAULT_ETCD_PREFIX), "range_end": _b64(b"\0")}),
        ("/v3/kv/deleterange", {"key": _b64(b"/other")}),
        (
            "/v3/kv/txn",
            {"success": [{"requestPut": _put(b"/other", b"rewritten")}]},
        ),
    ]
    for path, body in attempts:
        with pytest.raises(EtcdAuthError, match="permission denied"):
            client.post(path, body)
    assert etcd_cluster.get(b"/other") == b"not the vault's"
    assert etcd_cluster.get(beyond) is None


def test_the_operator_as_root_can_rewrite_the_vaults_records(etcd_cluster: EtcdCluster) -> None:
    key = VAULT_ETCD_PREFIX + b"security-tests/operator"
    client = etcd_cluster.vault_client()
    client.post("/v3/kv/put", _put(key, b"the vault's value"))
    etcd_cluster.put(key, b"the operator's value")
    result = client.post("/v3/kv/range", {"key": _b64(key)})
    assert base64.b64decode(result["kvs"][0]["value"]) == b"the operator's value"


def test_a_wrong_password_is_refused(etcd_cluster: EtcdCluster, tmp_path: Path) -> None:
    client = _client(etcd_cluster, _password_file(tmp_path / "wrong", "not-the-password"))
    with pytest.raises(EtcdAuthError, match="refused the credentials") as refused:
        client.post("/v3/kv/range", {"key": _b64(VAULT_ETCD_PREFIX + b"security-tests/x")})
    assert "not-the-password" not in str(refused.value)
    assert "not-the-password" not in repr(client)


def test_a_password_file_others_can_read_is_refused(
    etcd_cluster: EtcdCluster, tmp_path: Path
) -> None:
    password = etcd_cluster.vault_password_file.read_text()
    for mode in (0o644, 0o640, 0o604):
        loose = _password_file(tmp_path / f"loose-{mode:o}", password, mode)
        with pytest.raises(ConfigError, match="chmod 600"):
            _client(etcd_cluster, loose)
    # The same refusal at provisioning, before anything is written.
    loose = _password_file(tmp_path / "loose", password, 0o644)
    args = [
        a if a != str(etcd_cluster.vault_password_file) else str(loose)
        for a in etcd_cluster.vault_client_args()
    ]
    data = tmp_path / "node"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "vault_emulator",
            "init",
            "--backend",
            "soft",
            "--insecure-dev",
            "--data",
            str(data),
            *args,
        ],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "chmod 600" in result.stderr
    assert password not in result.stdout + result.stderr
    assert not (data / "vault.json").exists()


def test_credentials_are_never_sent_without_tls(etcd_cluster: EtcdCluster) -> None:
    plain = [e.replace("https://", "http://") for e in etcd_cluster.endpoints]
    with pytest.raises(ConfigError, match="TLS"):
        EtcdClient(plain, user=VAULT_ETCD_USER, password_file=etcd_cluster.vault_password_file)


def test_no_password_in_vault_json_or_on_a_command_line(
    fleet_factory: Callable[..., Fleet], etcd_cluster: EtcdCluster
) -> None:
    fleet = fleet_factory(count=1, cluster=etcd_cluster)
    node = fleet.nodes[0]
    passwords = [
        etcd_cluster.vault_password_file.read_text(),
        etcd_cluster.root_password_file.read_text(),
    ]
    config = (node.data_dir / "vault.json").read_text()
    extra = json.loads(config)["extra"]
    assert extra["etcd_user"] == VAULT_ETCD_USER
    assert extra["etcd_password_file"] == str(etcd_cluster.vault_password_file)
    assert extra["cluster"].startswith("https://")
    assert node.process is not None
    processes = [m.process for m in etcd_cluster.members] + [node.process]
    for process in processes:
        assert process is not None
        for name in ("cmdline", "environ"):
            seen = Path(f"/proc/{process.pid}/{name}").read_bytes().decode(errors="replace")
            assert seen  # the process is alive and readable, so the check means something
            for password in passwords:
                assert password not in seen, (name, process.argv[0])
    for password in passwords:
        assert password not in config
        for log in [node.data_dir / "vault.log", *etcd_cluster.directory.glob("*.log")]:
            assert password not in log.read_text(errors="replace"), log
    for path in [*etcd_cluster.tls_dir.iterdir(), etcd_cluster.vault_password_file]:
        assert path.stat().st_mode & 0o077 == 0, path


def test_the_client_authenticates_again_when_users_change(fresh_etcd_cluster: EtcdCluster) -> None:
    cluster = fresh_etcd_cluster
    key = VAULT_ETCD_PREFIX + b"security-tests/reauth"
    client = cluster.vault_client()
    client.post("/v3/kv/put", _put(key, b"before"))
    session = _session(cluster, client_cert=True)
    url = cluster.members[0].client_url
    old_token = session.post(
        f"{url}/v3/auth/authenticate",
        json={"name": VAULT_ETCD_USER, "password": cluster.vault_password_file.read_text()},
    ).json()["token"]
    # Any change to users or roles makes every token issued before it stale.
    root_token = session.post(
        f"{url}/v3/auth/authenticate",
        json={"name": "root", "password": cluster.root_password_file.read_text()},
    ).json()["token"]
    added = session.post(
        f"{url}/v3/auth/user/add",
        json={"name": "someone-else", "password": "irrelevant"},
        headers={"Authorization": root_token},
    )
    assert added.status_code == 200, added.text
    stale = session.post(
        f"{url}/v3/kv/range", json={"key": _b64(key)}, headers={"Authorization": old_token}
    )
    assert "auth store is old" in stale.text
    client.post("/v3/kv/put", _put(key, b"after"))
    assert cluster.get(key) == b"after"


def test_quorum_loss_is_storage_unavailable_not_an_auth_error(
    fresh_etcd_cluster: EtcdCluster,
) -> None:
    cluster = fresh_etcd_cluster
    client = cluster.vault_client()
    key = VAULT_ETCD_PREFIX + b"security-tests/quorum"
    client.post("/v3/kv/put", _put(key, b"value"))
    cluster.stop_member(1)
    cluster.stop_member(2)
    with pytest.raises(StorageUnavailable) as lost:
        client.post("/v3/kv/range", {"key": _b64(key)})
    assert type(lost.value) is StorageUnavailable
    cluster.restart_member(1)
    deadline = time.monotonic() + 20
    while True:
        # Healthy is not yet led: the two members may still be electing.
        try:
            result = client.post("/v3/kv/range", {"key": _b64(key)})
            break
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert base64.b64decode(result["kvs"][0]["value"]) == b"value"
