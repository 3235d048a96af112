"""``tcp://host:port`` and ``tls://host:port``: TCP sockets, optionally under TLS.

TLS settings come either as an ``ssl.SSLContext`` (``ssl=`` when listening or connecting)
or from the URL query, for the command line:

* listening: ``?cert=server.pem&key=server.key`` and, to require client certificates,
  ``&ca=clients-ca.pem`` (``&verify_client=optional`` to ask without requiring);
* connecting: ``?ca=ca.pem`` to trust a private CA, ``&cert=&key=`` for a client
  certificate, ``&server_hostname=name`` when the host in the URL is an address.

``TCP_NODELAY`` is set on every connection: writes are already batched per event-loop
turn, so Nagle's algorithm would only add latency to request/reply.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from ..errors import ConfigurationError, ConnectError
from ..link import Accept, Link, Listener, PeerInfo
from . import NOBODY, URL, TransportOptions, register
from ._stream.link import StreamLink, StreamListener

__all__ = ["TcpTransport", "client_ssl_context", "server_ssl_context"]


def server_ssl_context(url: URL) -> ssl.SSLContext:
    """A server context from ``?cert=&key=[&ca=&verify_client=]``."""
    q = url.query
    if "cert" not in q:
        raise ConfigurationError(
            f"tls listener {url.raw!r} needs a certificate: pass ssl= or ?cert=...&key=..."
        )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(q["cert"], q.get("key"))
        if "ca" in q:
            ctx.load_verify_locations(q["ca"])
            optional = q.get("verify_client") == "optional"
            ctx.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS files for {url.raw!r}: {exc}") from None
    return ctx


def client_ssl_context(url: URL) -> ssl.SSLContext:
    """A client context from ``?ca=&cert=&key=`` (system trust store without ``ca``)."""
    q = url.query
    try:
        ctx = ssl.create_default_context(cafile=q.get("ca"))
        if "cert" in q:
            ctx.load_cert_chain(q["cert"], q.get("key"))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load TLS files for {url.raw!r}: {exc}") from None
    return ctx


def _peer_info(scheme: str) -> Callable[[asyncio.Transport], PeerInfo]:
    def info(tr: asyncio.Transport) -> PeerInfo:
        sock = tr.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass
        extra = {}
        cert = tr.get_extra_info("peercert")
        if cert:
            extra["peercert"] = cert
        return PeerInfo(scheme, tr.get_extra_info("peername"), extra=extra)

    return info


class TcpTransport:
    """The ``tcp`` and ``tls`` schemes."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        if not url.host or url.port is None:
            raise ConfigurationError(f"{url.scheme} URL {url.raw!r} needs host:port")
        ctx: ssl.SSLContext | None = None
        server_hostname = None
        if url.scheme == "tls":
            ctx = options.ssl or client_ssl_context(url)
            server_hostname = url.query.get("server_hostname", url.host)
        info = _peer_info(url.scheme)
        loop = asyncio.get_running_loop()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that lands as the connect fails, which left a cancelled redial running.
            async with asyncio.timeout(options.connect_timeout):
                _, link = await loop.create_connection(
                    lambda: StreamLink(url.scheme, options, server_side=False, peer_info=info),
                    url.host,
                    url.port,
                    ssl=ctx,
                    server_hostname=server_hostname,
                )
        except ssl.SSLError as exc:
            raise ConnectError(
                f"TLS handshake with {url.raw} failed: {exc.reason or exc}"
            ) from None
        except TimeoutError:
            raise ConnectError(f"cannot connect to {url.raw}: timed out") from None
        except ConnectionRefusedError as exc:
            raise ConnectError(
                f"cannot connect to {url.raw}: {exc.strerror or exc}{NOBODY}"
            ) from None
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url.raw}: {exc.strerror or exc}") from None
        return link

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        if url.port is None:
            raise ConfigurationError(f"{url.scheme} URL {url.raw!r} needs a port (0: any free)")
        ctx: ssl.SSLContext | None = None
        if url.scheme == "tls":
            ctx = options.ssl or server_ssl_context(url)
        info = _peer_info(url.scheme)

        def factory() -> StreamLink:
            # Accepted once connected, when its peer (address, uid) is known: the
            # broker's per-peer limits need it before it takes the link.
            return StreamLink(
                url.scheme, options, server_side=True, peer_info=info, on_connected=accept
            )

        host = url.host or "127.0.0.1"
        try:
            server = await asyncio.get_running_loop().create_server(
                factory, host, url.port, ssl=ctx, backlog=512, reuse_address=True
            )
        except OSError as exc:
            raise ConfigurationError(f"cannot listen on {url.raw}: {exc.strerror or exc}") from None
        port = server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        # Without the query: the certificate paths are the server's, not a client's.
        return StreamListener(f"{url.scheme}://{shown}:{port}", server)


register("tcp", TcpTransport())
register("tls", TcpTransport())
