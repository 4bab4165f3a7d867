"""The agent's HTTP over real TLS on loopback: certificates are verified, by default.

Nothing is mocked: a self-signed certificate for 127.0.0.1 is made with ``cryptography``
and a threading HTTP server wrapped in TLS serves with it. The agent's fetcher refuses
it until the certificate is trusted the way an operator would trust it (``SSL_CERT_FILE``),
and plain HTTP works beside it.
"""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tuf.api import exceptions

from fleetup.agent._config import load_config
from fleetup.agent._fetcher import FetchSettings, HttpxFetcher
from fleetup.agent._fleet import FleetClient
from fleetup.agent._store import DeviceStore
from fleetup.errors import NetworkError

BODY = b"served over loopback\n"


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetup test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    return _self_signed(tmp_path)


@pytest.fixture
def https_url(cert: tuple[Path, Path]) -> Iterator[str]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    for address in _serve(server):
        yield f"https://{address}/file"


@pytest.fixture
def http_url() -> Iterator[str]:
    for address in _serve(ThreadingHTTPServer(("127.0.0.1", 0), _Handler)):
        yield f"http://{address}/file"


@pytest.fixture(autouse=True)
def no_ambient_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY",
                 "https_proxy", "http_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_an_unknown_certificate_is_refused(https_url: str) -> None:
    with HttpxFetcher(FetchSettings(max_attempts=1)) as fetcher, \
            pytest.raises(exceptions.DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
        b"".join(fetcher.fetch(https_url))


def test_a_certificate_trusted_through_ssl_cert_file_is_accepted(
        https_url: str, cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(cert[0]))
    with HttpxFetcher(FetchSettings(max_attempts=1)) as fetcher:
        assert b"".join(fetcher.fetch(https_url)) == BODY


def test_plain_http_works_beside_verified_https(http_url: str, https_url: str) -> None:
    with HttpxFetcher(FetchSettings(max_attempts=1)) as fetcher:
        assert b"".join(fetcher.fetch(http_url)) == BODY
        with pytest.raises(exceptions.DownloadError, match="CERTIFICATE_VERIFY_FAILED"):
            b"".join(fetcher.fetch(https_url))
        assert b"".join(fetcher.fetch(http_url)) == BODY


def test_the_fleet_client_refuses_an_unknown_certificate(https_url: str, tmp_path: Path) -> None:
    server_url = https_url.removesuffix("file")
    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'app = "demo"\nroot = "{tmp_path / "device"}"\n'
                           f'server_url = "{server_url}"\nenrollment_token = "t"\n'
                           f'trusted_root = "{tmp_path / "1.root.json"}"\n')
    config = load_config(config_file)
    store = DeviceStore(config.root)
    client = FleetClient(config, store)
    try:
        with pytest.raises(NetworkError, match=r"unreachable: .*CERTIFICATE_VERIFY_FAILED"):
            client.enroll()
    finally:
        client.close()
    assert not (store.layout.state / "fleet.json").exists()
