"""mTLS on the listener: a real ``holdfast serve`` process with ``HOLDFAST_TLS_CERT``,
``HOLDFAST_TLS_KEY`` and ``HOLDFAST_TLS_CLIENT_CA``, and certificates made here with the openssl
command line. A client with a certificate from the configured CA gets answers; one without a
certificate, or with one from another CA, is refused during the TLS handshake and never reaches
HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from authz.settings import Settings, SettingsError
from authz.signatures import sign_native
from authz.tls import TlsConfigError, server_ssl_context
from tests.conftest import TOKENS
from tests.support import Api, auth_body, uid

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STARTUP_S = 20.0
HOST = "127.0.0.1"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=30)


@dataclasses.dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from another CA
    stranger_key: Path


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = (d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem",
                               d / f"{name}.ext")
    extfile.write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-set_serial",
             str(int.from_bytes(os.urandom(8), "big")), "-out", cert, "-days", "2",
             "-extfile", extfile)
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = _ca(d, "holdfast-test-client-ca")
    other = _ca(d, "some-other-ca")
    server = _leaf(d, "server", ca, f"subjectAltName=IP:{HOST}\nextendedKeyUsage=serverAuth\n")
    client = _leaf(d, "processor", ca, "extendedKeyUsage=clientAuth\n")
    stranger = _leaf(d, "stranger", other, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], stranger[0], stranger[1])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def client_context(pki: Pki, cert: tuple[Path, Path] | None,
                   version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client that trusts the server's CA and presents ``cert`` (or none)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


@dataclasses.dataclass
class TlsServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"https://{HOST}:{self.port}"


def _spawn(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "authz.cli", *args], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
async def tls_server(settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
                     ) -> AsyncIterator[TlsServer]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("tls") / "holdfast-tls.log"
    env = {
        **os.environ,
        "HOLDFAST_DATABASE_URL": settings.database_url,
        "HOLDFAST_REDIS_URL": settings.redis_url,
        "HOLDFAST_REDIS_PREFIX": settings.redis_prefix,
        "HOLDFAST_HOST": HOST,
        "HOLDFAST_PORT": str(port),
        "HOLDFAST_ADMIN_TOKENS": ",".join(f"{t}={s}" for s, t in TOKENS.items()),
        "HOLDFAST_WEBHOOK_SECRET": settings.webhook_secrets[0].reveal(),
        "HOLDFAST_TLS_CERT": str(pki.server_cert),
        "HOLDFAST_TLS_KEY": str(pki.server_key),
        "HOLDFAST_TLS_CLIENT_CA": str(pki.ca),
        "HOLDFAST_PG_POOL_SIZE": "4",
        "HOLDFAST_DECISION_DEADLINE_MS": "5000",
        "HOLDFAST_REDIS_TIMEOUT_MS": "2000",
        "HOLDFAST_LOG_LEVEL": "INFO",
    }
    proc = _spawn(["serve"], env, log_path)
    server = TlsServer(proc, port, log_path)
    try:
        await _wait_healthy(server, client_context(pki, (pki.client_cert, pki.client_key)))
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def _wait_healthy(server: TlsServer, ctx: ssl.SSLContext) -> None:
    deadline = time.monotonic() + STARTUP_S
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        while time.monotonic() < deadline and server.proc.poll() is None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(server.base_url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)  # bounded by the deadline
    log = server.log_path.read_text(errors="replace")[-2000:]
    pytest.fail(f"TLS server did not become healthy (exit {server.proc.poll()}):\n{log}")


def _create_account(port: int, ctx: ssl.SSLContext, account_id: str) -> bytes:
    """Handshake, then ask (as admin) for a new account; the first bytes of the answer, b"" when
    the server closed the connection instead (blocking: run it in a thread)."""
    body = orjson.dumps({"id": account_id, "currency": "GBP"})
    request = (f"POST /v1/accounts HTTP/1.1\r\nHost: holdfast\r\nConnection: close\r\n"
               f"Authorization: Bearer {TOKENS['admin']}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection((HOST, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=HOST) as tls:
        tls.sendall(request)
        return tls.recv(64)


async def test_a_client_with_a_certificate_from_the_ca_gets_answers(
        tls_server: TlsServer, pki: Pki, api: Api) -> None:
    account = await api.account("GBP", funds=10_000)
    card = await api.card(account)
    ctx = client_context(pki, (pki.client_cert, pki.client_key))
    created = uid("acct")
    answer = await asyncio.to_thread(_create_account, tls_server.port, ctx, created)
    assert answer.startswith(b"HTTP/1.1 201"), answer
    assert (await api.admin("GET", f"/v1/accounts/{created}")).status == 200
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        raw = orjson.dumps(auth_body(card, 700))
        headers = {"Content-Type": "application/json",
                   "Holdfast-Signature": sign_native(api.secret, int(time.time()), raw)}
        async with session.post(tls_server.base_url + "/v1/authorize", data=raw,
                                headers=headers) as resp:
            decision = orjson.loads(await resp.read())
            assert resp.status == 200, decision
        assert (decision["decision"], decision["approved_amount"]) == ("approve", 700)
        async with session.get(tls_server.base_url + f"/v1/accounts/{account}",
                               headers={"Authorization": f"Bearer {TOKENS['support']}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["held"] == 700


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("who", ["no_certificate", "certificate_from_another_ca"])
async def test_a_client_without_a_certificate_from_the_ca_is_refused_at_the_handshake(
        tls_server: TlsServer, pki: Pki, api: Api, who: str, version: ssl.TLSVersion) -> None:
    cert = None if who == "no_certificate" else (pki.stranger_cert, pki.stranger_key)
    ctx = client_context(pki, cert, version)
    account_id = uid("acct")
    # The server's handshake fails on the client's (missing or foreign) certificate and it drops
    # the connection (asyncio and uvloop close without flushing the TLS alert). With TLS 1.2 the
    # client sees that inside its handshake; with TLS 1.3 it has finished its half already, sends
    # its request, and reads the end of the connection instead of an answer.
    try:
        answer = await asyncio.to_thread(_create_account, tls_server.port, ctx, account_id)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
        refused_in_handshake = True
        answer = repr(exc).encode()
    else:
        refused_in_handshake = False
    if version == ssl.TLSVersion.TLSv1_2:
        assert refused_in_handshake, answer
    else:
        assert refused_in_handshake or answer == b"", answer
    # the request never reached HTTP: the account it asked for does not exist
    assert (await api.admin("GET", f"/v1/accounts/{account_id}")).status == 404
    assert tls_server.proc.poll() is None, "the server must survive refused handshakes"
    # and a client with a good certificate is still served on the same port
    good = client_context(pki, (pki.client_cert, pki.client_key), version)
    answer = await asyncio.to_thread(_create_account, tls_server.port, good, account_id)
    assert answer.startswith(b"HTTP/1.1 201"), answer


async def test_plain_http_to_the_tls_port_gets_no_answer(tls_server: TlsServer) -> None:
    def plain() -> bytes:
        with socket.create_connection((HOST, tls_server.port), timeout=10) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: holdfast\r\n\r\n")
            return s.recv(64)

    with contextlib.suppress(ConnectionResetError):
        assert not (await asyncio.to_thread(plain)).startswith(b"HTTP/1.1 200")


def test_tls_settings_come_in_pairs() -> None:
    base = {"HOLDFAST_TLS_CERT": "/x/cert.pem", "HOLDFAST_TLS_KEY": "/x/key.pem"}
    assert Settings.from_env(base).tls_cert == "/x/cert.pem"
    with pytest.raises(SettingsError, match="together"):
        Settings.from_env({"HOLDFAST_TLS_CERT": "/x/cert.pem"})
    with pytest.raises(SettingsError, match="CLIENT_CA needs"):
        Settings.from_env({"HOLDFAST_TLS_CLIENT_CA": "/x/ca.pem"})
    assert server_ssl_context(Settings()) is None


def test_unreadable_tls_files_fail_at_start_without_echoing_them(pki: Pki, tmp_path: Path
                                                                  ) -> None:
    with pytest.raises(TlsConfigError, match="could not be loaded"):
        server_ssl_context(Settings(tls_cert=str(tmp_path / "missing.pem"),
                                    tls_key=str(pki.server_key)))
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="CLIENT_CA") as bad:
        server_ssl_context(Settings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                                    tls_client_ca=str(garbage)))
    assert "not a certificate" not in str(bad.value)
    ctx = server_ssl_context(Settings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                                      tls_client_ca=str(pki.ca)))
    assert ctx is not None
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    # only the configured CA: a publicly issued client certificate must not pass
    assert [c["subject"] for c in ctx.get_ca_certs()] == [
        ((("commonName", "holdfast-test-client-ca"),),)]


def test_serve_refuses_to_start_with_a_bad_certificate(tmp_path: Path) -> None:
    env = {**os.environ, "HOLDFAST_TLS_CERT": str(tmp_path / "nope.pem"),
           "HOLDFAST_TLS_KEY": str(tmp_path / "nope.key"), "HOLDFAST_PORT": str(_free_port())}
    out = subprocess.run([sys.executable, "-m", "authz.cli", "serve"], cwd=REPO, env=env,
                         capture_output=True, timeout=30, check=False)
    assert out.returncode == 2, out.stderr
    assert b"configuration error: HOLDFAST_TLS_CERT" in out.stderr

