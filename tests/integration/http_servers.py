"""HTTP(S) servers on loopback for the allowlist tests: a test TLS CA, nginx, and a tiny
scriptable Python server for the misbehaving cases (slow, garbage, oversized, 401,
connections reset, bodies trickled or cut short, a certificate switched...)."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server_plugin.allowlist import AllowlistEntry
from server_plugin.allowlist.document import render_document


def document(*entries: AllowlistEntry) -> bytes:
    return render_document(entries).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@dataclass(frozen=True)
class TLSFiles:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""

    ca: Path
    server_certificate: Path
    server_key: Path
    client_certificate: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "Allowlist Test") -> TLSFiles:
        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )

        def leaf(cn: str, usage: x509.ObjectIdentifier, path: str) -> None:
            key = ec.generate_private_key(ec.SECP256R1())
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                    critical=False,
                )
            )
            if usage == ExtendedKeyUsageOID.SERVER_AUTH:
                builder = builder.add_extension(
                    x509.SubjectAlternativeName(
                        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                    ),
                    critical=False,
                )
            certificate = builder.sign(ca_key, hashes.SHA256())
            (directory / f"{path}.pem").write_bytes(
                certificate.public_bytes(serialization.Encoding.PEM)
            )
            (directory / f"{path}.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

        (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH, "server")
        leaf("spire-server", ExtendedKeyUsageOID.CLIENT_AUTH, "client")
        return cls(
            ca=directory / "ca.pem",
            server_certificate=directory / "server.pem",
            server_key=directory / "server.key",
            client_certificate=directory / "client.pem",
            client_key=directory / "client.key",
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.server_certificate, self.server_key)
        return context


NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format probe '$status $request_method $uri "$http_if_none_match" "$http_authorization"';
    access_log {prefix}/access.log probe;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/json json; }}
    {server}
}}
"""
SERVER_BLOCK = """
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {tls.server_certificate};
        ssl_certificate_key {tls.server_key};
        {client_verification}
        root {root};
        location / {{ }}
    }}
"""


@dataclass
class Nginx:
    """nginx from the distribution, in the foreground, on a free loopback port, serving
    `root` over TLS; all its files (config, pid, logs, temp) live under `prefix`."""

    prefix: Path
    root: Path
    tls: TLSFiles
    require_client_certificate: bool = False
    port: int = 0
    server_block: str | None = None  # instead of SERVER_BLOCK, e.g. an example's
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        executable = shutil.which("nginx") or "/usr/sbin/nginx"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        client = (
            f"ssl_client_certificate {self.tls.ca}; ssl_verify_client on;"
            if self.require_client_certificate
            else ""
        )
        server = self.server_block or SERVER_BLOCK.format(
            port=self.port, tls=self.tls, root=self.root, client_verification=client
        )
        config = self.prefix / "nginx.conf"
        config.write_text(NGINX_CONF.format(prefix=self.prefix, server=server))
        with open(self.prefix / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [executable, "-p", str(self.prefix), "-c", str(config), "-e", "error.log"],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        try:
            wait_for_port(self.port)
        except OSError:
            self.stop()
            raise RuntimeError(f"nginx did not start: {self.logs()}") from None
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.prefix / "stderr.log", self.prefix / "error.log")
            if path.exists()
        )

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text().splitlines() if path.exists() else []

    def statuses(self, count: int = 1, including: str = "") -> list[str]:
        """The status of each request, once `count` are logged (nginx logs a request
        just after answering it, so the client can be faster than the log), and one
        with the status `including` if given."""
        deadline = time.monotonic() + 10
        while True:
            statuses = [line.split()[0] for line in self.access_log()]
            if len(statuses) >= count and (not including or including in statuses):
                return statuses
            assert time.monotonic() < deadline, f"nginx logged {statuses}"
            time.sleep(0.02)


def publish(path: Path, body: bytes) -> None:
    """Replace a served file atomically, with an mtime that surely differs (nginx's ETag)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(body)
    previous = path.stat().st_mtime_ns if path.exists() else 0
    stamp = max(time.time_ns(), previous + 2_000_000_000)
    os.utime(temporary, ns=(stamp, stamp))
    os.replace(temporary, path)


# The ways DocumentServer can break an answer (`fault`):
FAULTS = (
    "reset_in_headers",  # the connection reset halfway through the status line
    "reset_in_body",  # reset after the headers and half the body
    "trickle",  # the body one byte at a time, `trickle_gap` apart: never a read timeout
    "trickle_headers",  # so are the headers (a long one), and the body never comes
    "short_body",  # Content-Length larger than what is sent, then the connection closed
    "short_chunks",  # chunked, closed before the last chunk
)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        """A connection the test breaks on purpose is no error worth a traceback."""


@dataclass
class DocumentServer:
    """A tiny HTTP(S) server whose behaviour each test sets: status, body, delay, size,
    and the faults above."""

    tls: TLSFiles | None = None
    body: bytes = document()
    status: int = 200
    delay: float = 0.0
    hold: threading.Event | None = None  # when set by a test, each answer waits for it
    chunked: bool = False
    fault: str | None = None  # one of FAULTS
    trickle_gap: float = 0.02
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    token: str | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # each request's path
    connections: list[tuple[str, int]] = field(default_factory=list)  # each request's peer
    _server: ThreadingHTTPServer | None = None
    _context: ssl.SSLContext | None = None
    _open: set[socket.socket] = field(default_factory=set)  # kept-alive connections

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + '"'

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}/allowlist.json"

    def start(self) -> DocumentServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without this, Nagle and the
            # client's delayed ACK hold every answer for ~40 ms.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                owner._open.add(self.connection)

            def finish(self) -> None:
                owner._open.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                owner.requests.append(dict(self.headers.items()))
                owner.paths.append(self.path)
                owner.connections.append(self.client_address)
                if owner.delay:
                    time.sleep(owner.delay)
                if owner.hold is not None:
                    owner.hold.wait(timeout=60)
                if owner.token and self.headers.get("Authorization") != f"Bearer {owner.token}":
                    self._send(401, b"{}")
                elif self.headers.get("If-None-Match") == owner.etag and owner.status == 200:
                    self._send(304, b"")
                else:
                    self._send(owner.status, owner.body)

            def _reset(self) -> None:
                """Abort the connection: RST, not FIN."""
                self.wfile.flush()
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True

            def _send(self, status: int, body: bytes) -> None:
                if owner.fault == "reset_in_headers":
                    self.wfile.write(b"HTTP/1.1 20")
                    self._reset()
                    return
                if owner.fault == "trickle_headers":
                    for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"." * 8000:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(owner.trickle_gap)
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in owner.headers.items():
                    self.send_header(name, value)
                if status == 200:
                    self.send_header("ETag", owner.etag)
                if owner.fault in ("reset_in_body", "trickle", "short_body"):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if owner.fault == "trickle":
                        for index in range(len(body)):
                            self.wfile.write(body[index : index + 1])
                            self.wfile.flush()
                            time.sleep(owner.trickle_gap)
                        return
                    self.wfile.write(body[: len(body) // 2])
                    if owner.fault == "reset_in_body":
                        self._reset()
                    self.close_connection = True
                    return
                if owner.fault == "short_chunks":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[: len(body) // 2]
                    self.wfile.write(f"{len(half):x}\r\n".encode() + half + b"\r\n")
                    self.close_connection = True
                    return
                if owner.chunked and body:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(body), 4096):
                        chunk = body[start : start + 4096]
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Quiet: the test's own output is not the place for access logs."""

        server = _QuietServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            self._context = self.tls.server_context()
            server.socket = self._context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Stops listening and drops the kept-alive connections, as an outage would."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.drop_connections()

    def drop_connections(self) -> None:
        for connection in list(self._open):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def switch_certificate(self, tls: TLSFiles) -> None:
        """Serve `tls`'s certificate from the next connection on (and drop the open ones,
        as a restarted server would)."""
        assert self._context is not None, "a TLS server"
        self._context.load_cert_chain(tls.server_certificate, tls.server_key)
        self.tls = tls
        self.drop_connections()


def json_body(value: object) -> bytes:
    return json.dumps(value).encode()
