"""Vault logins and registrations per second against the same server's echo.

A complete login is two round trips (login_start, which checks the request and
then, before releasing anything, durably counts the attempt and opens a
single-use ticket; login_finish, which consumes the ticket in the write that
resets or records). Many clients run at
once, so the node is the bottleneck; the client's own OPAQUE work (Argon2 in the
KSF, ~35 ms) happens between the two timed phases, so what is timed is the node
serving both round trips. The limit, measured in the same run, is the same server
answering `/v1/echo` with the same bodies, the same concurrency and the same number
of round trips. Beside it: the raw opaque-ke server operations per second
in-process, and the p50/p99 latency of a complete login as a user feels it
(client work included). Then the same with three nodes over a three-member etcd
cluster (mutual TLS, the vault's own etcd user), round-robin. Targets: one node at
least 50% of its echo; three nodes at least 50% of what etcd alone allows for the
same compare-and-swaps (measured in the same run, same TLS and concurrency). Last,
the offline guess rate of an operator holding every vault secret.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from app.crypto import (
    OpaqueLoginFailed,
    OpaqueServerSetup,
    client_login_finish,
    client_login_start,
    client_registration_finish,
    client_registration_start,
    random_bytes,
    server_login_finish,
    server_login_start,
    server_registration_finish,
    server_registration_start,
)
from app.net.vault_transport import DirectTransport, fleet_key, run_flow, run_split_flow
from app.protocol import vault as protocol
from app.protocol import vault_split
from bench.harness import BenchReport, Comparison, Figure, percentile
from tests.support.components import EtcdCluster, SoftHSMToken, VaultProcess, write_private
from vault_emulator.records import EtcdRecords

CONCURRENCY = 8
PASSWORD = "bench password"
Flow = Generator[protocol.VaultRequest, tuple[int, bytes], Any]


class Poster:
    """Posts bodies to the nodes round-robin from a pool of clients, one session each."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(max_workers=CONCURRENCY)

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        session: requests.Session = self._local.session
        return session

    def post_all(
        self, path: str, requests_: list[protocol.VaultRequest]
    ) -> tuple[float, list[Any]]:
        def post(item: tuple[int, protocol.VaultRequest]) -> tuple[int, bytes]:
            index, request = item
            url = f"{self.urls[index % len(self.urls)]}{path}/{request.op}"
            response = self._session().post(url, data=request.body, timeout=60)
            return response.status_code, response.content

        started = time.perf_counter()
        replies = list(self.pool.map(post, enumerate(requests_)))
        return time.perf_counter() - started, replies


def _two_phases(poster: Poster, flows: list[Flow]) -> tuple[float, list[Any]]:
    """Runs both round trips of every flow; returns (timed seconds, results)."""
    first = [next(flow) for flow in flows]
    elapsed_a, replies = poster.post_all("/v1/vault", first)
    # The client's OPAQUE step (Argon2) runs here, outside the timed phases.
    second = [flow.send(reply) for flow, reply in zip(flows, replies, strict=True)]
    elapsed_b, replies = poster.post_all("/v1/vault", second)
    results = []
    for flow, reply in zip(flows, replies, strict=True):
        try:
            flow.send(reply)
        except StopIteration as done:
            results.append(done.value)
        else:
            raise RuntimeError("a vault flow did not finish in two round trips")
    return elapsed_a + elapsed_b, results


def _recorded(flows: list[Flow], poster: Poster) -> list[list[protocol.VaultRequest]]:
    """Both requests of real flows (for the echo to replay), running them for real."""
    first = [next(flow) for flow in flows]
    _elapsed, replies = poster.post_all("/v1/vault", first)
    second = [flow.send(reply) for flow, reply in zip(flows, replies, strict=True)]
    poster.post_all("/v1/vault", second)
    return [first, second]


def _echo_rate(poster: Poster, phases: list[list[protocol.VaultRequest]]) -> float:
    elapsed = sum(poster.post_all("/v1/echo", phase)[0] for phase in phases)
    return len(phases[0]) / elapsed


def _raw_opaque(count: int) -> tuple[float, float]:
    """opaque-ke server logins/s and registrations/s in-process (server side only)."""
    setup = OpaqueServerSetup.generate()
    secret = PASSWORD.encode()
    started = client_registration_start(secret)
    response = server_registration_start(setup, started.message, b"record")
    upload, _ = client_registration_finish(secret, started.state, response)
    password_file = server_registration_finish(upload)
    login_seconds = register_seconds = 0.0
    for _ in range(count):
        login = client_login_start(secret)
        t0 = time.perf_counter()
        credential_response, state = server_login_start(
            setup, password_file, login.message, b"record"
        )
        login_seconds += time.perf_counter() - t0
        finished = client_login_finish(secret, login.state, credential_response)
        t0 = time.perf_counter()
        server_login_finish(state, finished.finalization)
        login_seconds += time.perf_counter() - t0
        registration = client_registration_start(secret)
        t0 = time.perf_counter()
        answer = server_registration_start(setup, registration.message, b"record")
        register_seconds += time.perf_counter() - t0
        upload, _ = client_registration_finish(secret, registration.state, answer)
        t0 = time.perf_counter()
        server_registration_finish(upload)
        register_seconds += time.perf_counter() - t0
    return count / login_seconds, count / register_seconds


def _measure(
    report: BenchReport,
    label: str,
    nodes: list[VaultProcess],
    count: int,
    echo_target: float | None,
) -> float:
    """Adds the figures for this fleet; returns its logins/s."""
    urls = [node.url for node in nodes]
    key = fleet_key(DirectTransport(urls), _pins(nodes))
    poster = Poster(urls)
    backup_key = bytes(32)
    try:
        register_seconds, record_ids = _two_phases(
            poster, [protocol.register(PASSWORD, backup_key, key) for _ in range(count)]
        )
        login_seconds, keys_back = _two_phases(
            poster, [protocol.retrieve(rid, PASSWORD, key) for rid in record_ids]
        )
        if any(k != backup_key for k in keys_back):
            raise RuntimeError("a benchmark login returned the wrong key")
        login_phases = _recorded(
            [protocol.retrieve(rid, PASSWORD, key) for rid in record_ids], poster
        )
        register_phases = _recorded(
            [protocol.register(PASSWORD, backup_key, key) for _ in range(count)], poster
        )
        echo_login = _echo_rate(poster, login_phases)
        echo_register = _echo_rate(poster, register_phases)
        latencies = []
        for record_id in record_ids[: max(5, count // 4)]:
            t0 = time.perf_counter()
            run_flow(protocol.retrieve(record_id, PASSWORD, key), DirectTransport(urls))
            latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        poster.pool.shutdown()
    logins = count / login_seconds
    registrations = count / register_seconds
    report.comparisons.append(
        Comparison(f"{label}: logins/s", logins, echo_login, "1/s", "echo", echo_target)
    )
    report.comparisons.append(
        Comparison(
            f"{label}: registrations/s", registrations, echo_register, "1/s", "echo", echo_target
        )
    )
    for name, fraction in (("p50", 0.5), ("p99", 0.99)):
        report.figures.append(
            Figure(f"{label}: login {name}, client included", percentile(latencies, fraction), "ms")
        )
    report.figures.append(Figure(f"{label}: logins/s per node", logins / len(nodes), "1/s"))
    return logins


def _etcd_counter_rate(cluster: EtcdCluster, count: int) -> float:
    """Logins/s etcd alone could carry: the two compare-and-swaps of a login (charge
    the counter and open the ticket; consume it and reset), no vault, no crypto."""
    records = EtcdRecords(cluster.vault_client())
    value = bytes(700)  # about the size of a sealed record state
    created = {}
    for record_id in (random_bytes(16) for _ in range(count)):
        _written, now = records.swap(record_id, None, value)
        created[record_id] = now

    def login(record_id: bytes) -> None:
        current = created[record_id]
        for _step in range(2):
            written, current = records.swap(record_id, current, value)
            if not written:
                raise RuntimeError("an uncontended compare-and-swap failed")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        list(pool.map(login, created))
    return count / (time.perf_counter() - started)


def _offline_guess_rate(count: int) -> float:
    """Password guesses/s on one core for someone holding every vault secret (the
    operator with the PIN): each guess is a run of OPAQUE's client, KSF included."""
    setup = OpaqueServerSetup.generate()
    started = client_registration_start(PASSWORD.encode())
    answer = server_registration_start(setup, started.message, b"record")
    upload, _export = client_registration_finish(PASSWORD.encode(), started.state, answer)
    password_file = server_registration_finish(upload)
    elapsed = 0.0
    for guess in range(count):
        login = client_login_start(f"guess {guess}".encode())
        response, _state = server_login_start(setup, password_file, login.message, b"record")
        t0 = time.perf_counter()
        with contextlib.suppress(OpaqueLoginFailed):
            client_login_finish(f"guess {guess}".encode(), login.state, response)
        elapsed += time.perf_counter() - t0
    return count / elapsed


def _pins(nodes: list[VaultProcess]) -> list[protocol.PinnedNode]:
    pins = []
    for node in nodes:
        keys = node.public_keys()
        pins.append(
            protocol.PinnedNode(
                keys["node"],
                bytes.fromhex(keys["hpke_public_key"]),
                bytes.fromhex(keys["signing_public_key"]),
            )
        )
    return pins


def _split_recovery(domains: list[VaultProcess], count: int) -> tuple[float, float]:
    """Seconds of one complete split recovery (blind, evaluate at all three domains
    at once, combine, Argon2id, unwrap, reset at all three: every counter written
    durably) and of three single-vault logins one after another (each a complete
    OPAQUE login with its Argon2id, two round trips, two durable writes), the
    median of `count` each, against the same three nodes."""
    transports = [DirectTransport([node.url]) for node in domains]
    keys = [
        fleet_key(transport, _pins([node]))
        for transport, node in zip(transports, domains, strict=True)
    ]
    backup_key = bytes(range(32))
    record_id, _stored = run_split_flow(
        vault_split.register(PASSWORD, backup_key, keys), list(transports)
    )
    singles = [
        run_flow(protocol.register(PASSWORD, backup_key, k), t)
        for k, t in zip(keys, transports, strict=True)
    ]
    split_times, single_times = [], []
    for _ in range(count):
        started = time.perf_counter()
        got = run_split_flow(vault_split.recover(PASSWORD, keys, record_id), list(transports))
        split_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        for single, key, transport in zip(singles, keys, transports, strict=True):
            got_single = run_flow(protocol.retrieve(single, PASSWORD, key), transport)
        single_times.append(time.perf_counter() - started)
        if got != backup_key or got_single != backup_key:
            raise RuntimeError("a benchmark recovery returned the wrong key")
    return percentile(split_times, 0.5), percentile(single_times, 0.5)


def _nodes(
    base: Path, name: str, count: int, cluster: EtcdCluster | None, started: list[VaultProcess]
) -> list[VaultProcess]:
    root = base / name
    root.mkdir()
    use_hsm = shutil.which("softhsm2-util") is not None
    passphrase = root / "fleet-passphrase"
    write_private(passphrase, b"bench fleet passphrase")
    nodes: list[VaultProcess] = []
    for index in range(count):
        extra: list[str] = []
        if cluster is not None:
            extra += cluster.vault_client_args()
        if index:
            exported = nodes[0].export_fleet(root / "fleet.export", passphrase)
            extra += ["--join", str(exported), "--join-passphrase-file", str(passphrase)]
        node = VaultProcess(
            root / f"node-{index}",
            backend="softhsm" if use_hsm else "soft",
            token=SoftHSMToken(root / f"token-{index}").create() if use_hsm else None,
            node_name=f"node-{index + 1}",
            extra_init=extra,
            extra_serve=["--bench-echo"],
        ).provision()
        started.append(node)
        nodes.append(node.start())
    return nodes


def run(quick: bool) -> BenchReport:
    report = BenchReport("vault", quick)
    count = 16 if quick else 160
    raw_logins, raw_registrations = _raw_opaque(5 if quick else 50)
    started: list[VaultProcess] = []
    with tempfile.TemporaryDirectory(prefix="cipherline-bench-vault-") as tmp:
        root = Path(tmp)
        cluster: EtcdCluster | None = None
        try:
            backend = "softhsm" if shutil.which("softhsm2-util") else "soft"
            one_node_logins = _measure(
                report,
                f"1 node ({backend}, SQLite)",
                _nodes(root, "one", 1, None, started),
                count,
                echo_target=0.5,
            )
            domains = [_nodes(root, f"domain-{n}", 1, None, started)[0] for n in range(3)]
            split_seconds, singles_seconds = _split_recovery(domains, 3 if quick else 15)
            report.comparisons.append(
                Comparison(
                    "split vault: one recovery (2 of 3 domains) vs three single-vault logins",
                    split_seconds,
                    singles_seconds,
                    "s",
                    "3 single-vault logins",
                    1.5,
                    higher_is_better=False,
                    notes="medians; all round trips and durable counter writes; SafetyPin "
                    "(NSDI 2022) reports 1.01 s for a recovery over 100 HSMs",
                )
            )
            report.figures.append(Figure("split vault recovery, median", split_seconds, "s"))
            if shutil.which("etcd"):
                cluster = EtcdCluster(root / "etcd").start()
                fleet = _nodes(root, "three", 3, cluster, started)
                # Three nodes are held to what etcd allows, not to the echo: every
                # login is two replicated compare-and-swaps on one disk here.
                fleet_logins = _measure(report, "3 nodes on etcd", fleet, count, echo_target=None)
                report.comparisons.append(
                    Comparison(
                        "3 nodes logins/s vs bare etcd counter updates",
                        fleet_logins,
                        _etcd_counter_rate(cluster, count),
                        "1/s",
                        "etcd CAS pairs",
                        0.5,
                        notes="limit = the two compare-and-swaps of a login straight on "
                        "etcd, same concurrency and TLS: the durable writes a login needs",
                    )
                )
        finally:
            for node in started:
                node.stop()
            if cluster is not None:
                cluster.stop()
    report.comparisons.append(
        Comparison(
            "1 node logins/s vs raw opaque-ke server",
            one_node_logins,
            raw_logins,
            "1/s",
            "opaque-ke",
            notes="raw = server_login_start + server_login_finish in-process",
        )
    )
    report.figures.append(Figure("raw opaque-ke server registrations/s", raw_registrations, "1/s"))
    # What the operator with the PIN and all storage is left with (threat model).
    report.figures.append(
        Figure(
            "offline password guesses/s on one core (OPAQUE client with its KSF)",
            _offline_guess_rate(3 if quick else 30),
            "1/s",
        )
    )
    return report
