"""Transport specifics: the Unix socket file, peer credentials, TLS with client certificates."""

from __future__ import annotations

import os
import socket
import ssl
import stat
from pathlib import Path

import pytest

import asyncipc
from tests.conftest import Certs


async def test_socket_file_is_private_and_removed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    async with asyncipc.Broker() as b:
        await b.listen(f"unix://{path}")
        assert stat.S_ISSOCK(path.stat().st_mode)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert list(tmp_path.iterdir()) == [path]  # its temporary name was renamed
    assert not path.exists()


@pytest.mark.one_loop("path lengths, not the event loop")
@pytest.mark.parametrize("name", ["b.sock", "a-much-longer-socket-file-name.sock"])
async def test_a_path_of_the_longest_length_a_unix_socket_takes_is_listened_on(
    short_tmp: Path, name: str
) -> None:
    """The socket is bound under a temporary name beside the path, then renamed: that name
    must fit wherever the path fits (107 bytes on Linux). One byte more is refused, with
    the length, before anything is created."""
    pad = 107 - len(f"{short_tmp}/") - len(f"/{name}")
    directory = short_tmp / ("d" * pad)
    directory.mkdir()
    path = directory / name
    assert len(os.fsencode(str(path))) == 107
    async with asyncipc.Broker() as b:
        url = (await b.listen(f"unix://{path}")).url
        assert list(directory.iterdir()) == [path]
        async with asyncipc.connect(url) as bus, bus.subscribe("x") as sub:
            await bus.publish("x", b"fits")
            assert (await sub.next_msg(timeout=5)).data == b"fits"
    assert list(directory.iterdir()) == []
    longer = directory / ("z" + name)
    async with asyncipc.Broker() as b:
        with pytest.raises(asyncipc.ConfigurationError, match=r"is 108 bytes long.* 107 at most"):
            await b.listen(f"unix://{longer}")
        with pytest.raises(asyncipc.ConfigurationError, match="is 108 bytes long"):
            await asyncipc.connect(f"unix://{longer}")
    assert list(directory.iterdir()) == []


async def test_mode_from_the_url(tmp_path: Path) -> None:
    path = tmp_path / "g.sock"
    async with asyncipc.Broker() as b:
        await b.listen(f"unix://{path}?mode=0660")
        assert stat.S_IMODE(path.stat().st_mode) == 0o660


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens: what a crashed broker leaves
    async with asyncipc.Broker() as b:
        url = (await b.listen(f"unix://{path}")).url
        async with asyncipc.connect(url) as bus:
            await bus.flush()


async def test_live_socket_and_regular_file_are_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    async with asyncipc.Broker() as first:
        await first.listen(f"unix://{path}")
        async with asyncipc.Broker() as second:
            with pytest.raises(asyncipc.ConfigurationError, match="in use: a live server"):
                await second.listen(f"unix://{path}")
        async with asyncipc.connect(f"unix://{path}") as bus:  # the first still serves
            await bus.flush()
    regular = tmp_path / "data.txt"
    regular.write_text("precious")
    async with asyncipc.Broker() as b:
        with pytest.raises(asyncipc.ConfigurationError, match="not a socket"):
            await b.listen(f"unix://{regular}")
    assert regular.read_text() == "precious"


async def test_close_leaves_a_newer_brokers_socket_alone(tmp_path: Path) -> None:
    path = tmp_path / "b.sock"
    old = asyncipc.Broker()
    await old.listen(f"unix://{path}")
    os.unlink(path)  # someone removed it and a newer broker took the path
    async with asyncipc.Broker() as new:
        await new.listen(f"unix://{path}")
        await old.close()
        assert path.exists(), "the old broker must not remove the new broker's socket"


async def test_peer_credentials(tmp_path: Path) -> None:
    async with asyncipc.Broker() as b:
        url = (await b.listen(f"unix://{tmp_path}/b.sock")).url
        async with asyncipc.connect(url) as bus:
            await bus.flush()
            [peer] = b.peers
            assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
            assert bus.peer.pid == os.getpid()


async def test_tls_client_certificate_required(certs: Certs) -> None:
    listen = f"tls://127.0.0.1:0{certs.server_query()}&ca={certs.ca_file}"
    async with asyncipc.Broker() as b:
        url = (await b.listen(listen)).url
        with_cert = f"{url}?ca={certs.ca_file}&cert={certs.client_cert}&key={certs.client_key}"
        async with asyncipc.connect(with_cert) as bus, bus.subscribe("s") as sub:
            await bus.publish("s", b"over mutual TLS")
            assert (await sub.next_msg(timeout=5)).data == b"over mutual TLS"
            [peer] = b.peers
            assert "peercert" in peer.extra
        # TLS 1.3 finishes the client side before the server checks the certificate, so
        # the refusal shows either at connect or as the link closing in the handshake.
        with pytest.raises((asyncipc.ConnectError, asyncipc.HandshakeError)):
            await asyncipc.connect(f"{url}?ca={certs.ca_file}")


async def test_tls_untrusted_server_is_refused(certs: Certs) -> None:
    async with asyncipc.Broker() as b:
        url = (await b.listen(f"tls://127.0.0.1:0{certs.server_query()}")).url
        with pytest.raises(asyncipc.ConnectError, match="TLS handshake"):
            await asyncipc.connect(url)  # system trust store: our private CA is unknown
        ctx = ssl.create_default_context(cafile=certs.ca_file)
        async with asyncipc.connect(url, ssl=ctx) as bus:
            await bus.flush()


async def test_tls_listener_needs_a_certificate() -> None:
    async with asyncipc.Broker() as b:
        with pytest.raises(asyncipc.ConfigurationError, match="needs a certificate"):
            await b.listen("tls://127.0.0.1:0")


async def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(
        asyncipc.ConfigurationError, match=r"no transport for scheme 'carrier'.*unix"
    ):
        await asyncipc.connect("carrier://pigeon")
