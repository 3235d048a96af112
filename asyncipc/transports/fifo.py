"""``fifo:///path``: named pipes in the file system, for unrelated processes of one user.

A broker listening on ``fifo:///run/app.fifo`` owns two things:

* ``/run/app.fifo``, the *rendezvous*: a FIFO (mode 0600) clients write requests to;
* ``/run/app.fifo.d/``, a directory (mode 0700) where each client makes its own pair of
  FIFOs, ``<id>.up`` (client → broker) and ``<id>.down`` (broker → client).

The handshake, in the order that makes every step non-blocking and every failure visible
(full account with the races in ``docs/transports.md``):

1. the client makes ``<id>.up`` and ``<id>.down`` (mode 0600; ``id`` is 32 random hex
   digits) and opens ``down`` for reading;
2. it writes the line ``AIPC-FIFO/1 <id>\\n`` to the rendezvous: 45 bytes, under
   ``PIPE_BUF``, so concurrent clients' requests never interleave;
3. the broker opens ``up`` for reading and ``down`` for writing (a client that died since
   step 1 has no reader on ``down``: ``ENXIO``, and its pair is removed), checks both are
   FIFOs of its own user, and writes ``OK\\n`` on ``down``;
4. the client, having read ``OK``, opens ``up`` for writing (it cannot block: the broker
   reads it) and removes both names. From here on it is the stream protocol of
   ``docs/protocol.md`` (preamble, HELLO, ...) over the two FIFOs, as over a socket.

The broker holds an ``flock`` on the directory for as long as it listens: that is how a
new broker tells a live one (refuse) from a dead one's leftovers (clean). It never removes
anything that is not a FIFO of its own user, and refuses, with ConfigurationError naming
the problem, a path that is a regular file (or anything but a FIFO) or that belongs to
another user. Pairs abandoned half-way (a client killed between steps 1 and 2) are
removed after :data:`STALE_AFTER` seconds, and at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import stat
import time

from .._logsafe import peer_log, printable
from ..errors import ConfigurationError, ConnectError
from ..link import Accept, Link, Listener, PeerInfo
from . import URL, TransportOptions, register
from ._stream.link import StreamLink
from ._stream.pipes import open_pipe_link

__all__ = ["REQUEST", "STALE_AFTER", "FifoTransport"]

log = logging.getLogger("asyncipc.transport")

REQUEST = b"AIPC-FIFO/1 %s\n"
"""The request line a client writes to the rendezvous, ``%s`` being its 32-hex-digit id."""
_REQUEST_RE = re.compile(rb"AIPC-FIFO/1 ([0-9a-f]{32})\Z")
_OK = b"OK\n"
_ENTRY_RE = re.compile(r"[0-9a-f]{32}\.(up|down)\Z")
_TMP = "rendezvous.tmp"

STALE_AFTER = 60.0
"""Seconds a client's pair may sit in the directory unclaimed before the broker removes
it (a client killed half-way through the handshake; a live one takes milliseconds)."""

_SWEEP_EVERY = 10.0
_MAX_BUFFER = 4096  # bytes of rendezvous input kept without a newline (garbage)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _path(url: URL) -> str:
    path = url.path if not url.host else f"/{url.host}{url.path}"
    if not path or path == "/" or path.endswith("/"):
        raise ConfigurationError(f"fifo URL {url.raw!r} has no FIFO path (fifo:///path)")
    return path


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a FIFO"),
    ):
        if test(mode):
            return name
    return "a device"


def _refuse(path: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"refusing to use {path}: {why}")


def _check_own_fifo(path: str, st: os.stat_result, euid: int) -> None:
    if not stat.S_ISFIFO(st.st_mode):
        raise _refuse(path, f"it is {_kind(st.st_mode)}, not a FIFO")
    if st.st_uid != euid:
        raise _refuse(path, f"it belongs to uid {st.st_uid}, not to this broker's uid {euid}")


def _open_dir(dpath: str, euid: int) -> int:
    """Open (making it if needed) the broker's directory; check it is ours and private."""
    try:
        os.mkdir(dpath, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(dpath) or "."
        raise ConfigurationError(f"cannot create {dpath}: no directory {parent}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot create {dpath}: {exc.strerror or exc}") from None
    try:
        dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            st = os.lstat(dpath)
            raise _refuse(dpath, f"it is {_kind(st.st_mode)}, not a directory") from None
        raise ConfigurationError(f"cannot open {dpath}: {exc.strerror or exc}") from None
    st = os.fstat(dfd)
    if st.st_uid != euid:
        os.close(dfd)
        raise _refuse(
            dpath, f"the directory belongs to uid {st.st_uid}, not to this broker's uid {euid}"
        )
    return dfd


def _clean_dir(dfd: int, dpath: str, euid: int) -> None:
    """Remove a dead broker's FIFOs; refuse if anything else is in the directory."""
    doomed = []
    for name in os.listdir(dfd):
        st = os.lstat(name, dir_fd=dfd)
        full = os.path.join(dpath, name)
        if not stat.S_ISFIFO(st.st_mode):
            raise _refuse(dpath, f"{full} is {_kind(st.st_mode)}, not one of our FIFOs")
        if st.st_uid != euid:
            raise _refuse(dpath, f"{full} belongs to uid {st.st_uid}, not to uid {euid}")
        if not (_ENTRY_RE.match(name) or name == _TMP):
            raise _refuse(dpath, f"{full} is a FIFO with a name asyncipc never makes")
        doomed.append(name)
    for name in doomed:
        os.unlink(name, dir_fd=dfd)
    if doomed:
        log.info("removed %d FIFOs left in %s by a broker that is gone", len(doomed), dpath)


class _Refused(Exception):
    """A request the broker cannot serve; logged, and only that client is affected."""


class _FifoListener(Listener):
    def __init__(
        self,
        path: str,
        dfd: int,
        rfd: int,
        keep_fd: int,
        ino: int,
        accept: Accept,
        options: TransportOptions,
    ) -> None:
        self.url = f"fifo://{path}"
        self._path = path
        self._dpath = path + ".d"
        self._dfd = dfd
        self._rfd = rfd
        self._keep_fd = keep_fd  # our own writer: the rendezvous never reads as EOF
        self._ino = ino
        self._accept = accept
        self._options = options
        self._euid = os.geteuid()
        self._buf = b""
        self._tasks: set[asyncio.Task[None]] = set()
        self._connecting: set[str] = set()
        self._loop = asyncio.get_running_loop()
        self._next_sweep = 0.0
        self._closed = False
        self._loop.add_reader(rfd, self._readable)

    # --- requests on the rendezvous ------------------------------------------------------

    def _readable(self) -> None:
        while True:
            try:
                data = os.read(self._rfd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > _MAX_BUFFER:
            # Garbage without a newline: keep only a tail long enough to hold the start
            # of a genuine request appended to it.
            log.warning("%s: dropping %d bytes of garbage", self._path, len(self._buf) - 64)
            self._buf = self._buf[-64:]
        bad = 0
        for line in lines:
            # Each request is one atomic write, so it is whole; garbage written before it
            # without a newline would only prefix it: look at the end of the line.
            m = _REQUEST_RE.search(line)
            if m is None:
                bad += 1
            else:
                self._request(m.group(1).decode())
        if bad:  # one line per read, however much garbage came
            log.warning("%s: ignoring %d malformed request line(s)", self._path, bad)
        if self._loop.time() >= self._next_sweep:
            self._next_sweep = self._loop.time() + _SWEEP_EVERY
            self._sweep()

    def _request(self, cid: str) -> None:
        if cid in self._connecting:
            return
        try:
            rfd, wfd, uid = self._open_pair(cid)
        except _Refused as exc:
            peer_log().warning(
                "fifo-refused", "%s: refusing client %s: %s", self._path, cid, exc, logger=log
            )
            return
        self._connecting.add(cid)
        task = self._loop.create_task(self._start_link(cid, rfd, wfd, uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open_pair(self, cid: str) -> tuple[int, int, int]:
        """Open the client's FIFOs (step 3 of the handshake) and answer OK."""
        up, down = f"{cid}.up", f"{cid}.down"
        flags = os.O_NONBLOCK | os.O_NOFOLLOW | _O_CLOEXEC
        try:
            rfd = os.open(up, os.O_RDONLY | flags, dir_fd=self._dfd)
        except OSError as exc:
            raise _Refused(f"cannot open {up}: {exc.strerror}") from None
        wfd = -1
        try:
            uid = self._check(rfd, up)
            try:
                wfd = os.open(down, os.O_WRONLY | flags, dir_fd=self._dfd)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise _Refused(f"cannot open {down}: {exc.strerror}") from None
                self._remove(cid)  # nobody reads down: the client died after step 1
                raise _Refused("it left before the handshake") from None
            self._check(wfd, down)
            try:
                os.write(wfd, _OK)
            except OSError as exc:
                raise _Refused(f"cannot answer on {down}: {exc.strerror}") from None
        except BaseException:
            os.close(rfd)
            if wfd >= 0:
                os.close(wfd)
            raise
        return rfd, wfd, uid

    def _check(self, fd: int, name: str) -> int:
        st = os.fstat(fd)
        if not stat.S_ISFIFO(st.st_mode) or st.st_uid != self._euid:
            raise _Refused(f"{name} is not a FIFO of uid {self._euid}")
        return st.st_uid

    async def _start_link(self, cid: str, rfd: int, wfd: int, uid: int) -> None:
        peer = PeerInfo("fifo", self._path, uid=uid, extra={"id": cid})
        link = StreamLink("fifo", self._options, server_side=True, peer_info=lambda _: peer)
        try:
            await open_pipe_link(link, rfd, wfd, on_closed=lambda: self._remove(cid))
        except OSError as exc:
            log.warning("%s: client %s: %s", self._path, printable(cid), exc)
            self._remove(cid)
            return
        finally:
            self._connecting.discard(cid)
        self._accept(link)

    # --- the directory ---------------------------------------------------------------------

    def _remove(self, cid: str) -> None:
        """Remove a client's pair if still there (the client normally removed it)."""
        if self._closed:
            return
        for name in (f"{cid}.up", f"{cid}.down"):
            with contextlib.suppress(OSError):
                st = os.lstat(name, dir_fd=self._dfd)
                if stat.S_ISFIFO(st.st_mode) and st.st_uid == self._euid:
                    os.unlink(name, dir_fd=self._dfd)

    def _sweep(self, max_age: float = STALE_AFTER) -> None:
        """Remove pairs nobody claimed for ``max_age`` seconds (clients killed between
        making their FIFOs and asking for them)."""
        cutoff = time.time() - max_age
        try:
            names = os.listdir(self._dfd)
        except OSError:
            return
        for name in names:
            m = _ENTRY_RE.match(name)
            if m is None or name[:32] in self._connecting:
                continue
            with contextlib.suppress(OSError):
                st = os.lstat(name, dir_fd=self._dfd)
                if st.st_mtime < cutoff:
                    self._remove(name[:32])
                    log.info("%s: removed %s, abandoned by its client", self._path, name)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._loop.remove_reader(self._rfd)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._sweep(max_age=-1.0)  # every pair not yet claimed: their clients get EOF
        self._closed = True
        os.close(self._rfd)
        os.close(self._keep_fd)
        with contextlib.suppress(OSError):
            if os.lstat(self._path).st_ino == self._ino:  # not a newer broker's
                os.unlink(self._path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dpath)
        os.close(self._dfd)  # releases the flock


class FifoTransport:
    """The ``fifo`` scheme; see the module docstring."""

    async def connect(self, url: URL, options: TransportOptions) -> Link:
        path = _path(url)
        dpath = path + ".d"
        fail = f"cannot connect to {url.raw}"
        try:
            st = os.lstat(path)
            if not stat.S_ISFIFO(st.st_mode):
                raise ConnectError(f"{fail}: {path} is {_kind(st.st_mode)}, not a FIFO")
            dst = os.lstat(dpath)
        except FileNotFoundError as exc:
            raise ConnectError(f"{fail}: no {exc.filename} (is a broker listening?)") from None
        # Our FIFOs go in there: it must be the broker's private directory.
        if not stat.S_ISDIR(dst.st_mode) or dst.st_uid != st.st_uid or dst.st_mode & 0o077:
            raise ConnectError(f"{fail}: {dpath} is not a private directory of uid {st.st_uid}")
        cid = os.urandom(16).hex()
        up, down = os.path.join(dpath, f"{cid}.up"), os.path.join(dpath, f"{cid}.down")
        rfd = wfd = -1
        try:
            for name in (up, down):
                try:
                    os.mkfifo(name, 0o600)
                except OSError as exc:
                    raise ConnectError(
                        f"{fail}: cannot make a FIFO in {dpath}: {exc.strerror}"
                    ) from None
            rfd = os.open(down, os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
            try:
                async with asyncio.timeout(options.connect_timeout):
                    await _send_request(path, cid, fail)
                    await _read_answer(rfd, fail, up, dpath)
            except TimeoutError:
                raise ConnectError(
                    f"{fail}: no answer from the broker within {options.connect_timeout:g} s"
                ) from None
            try:
                wfd = os.open(up, os.O_WRONLY | os.O_NONBLOCK | _O_CLOEXEC)
            except OSError as exc:
                raise ConnectError(f"{fail}: the broker let go of {up}: {exc.strerror}") from None
        except BaseException:
            for fd in (rfd, wfd):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            # Both ends hold both FIFOs open now (or never will): the names can go.
            for name in (up, down):
                with contextlib.suppress(OSError):
                    os.unlink(name)
        peer = PeerInfo("fifo", path, uid=st.st_uid)
        link = StreamLink("fifo", options, server_side=False, peer_info=lambda _: peer)
        return await open_pipe_link(link, rfd, wfd)

    async def listen(self, url: URL, accept: Accept, options: TransportOptions) -> Listener:
        path = _path(url)
        dpath = path + ".d"
        euid = os.geteuid()
        with contextlib.suppress(FileNotFoundError):
            _check_own_fifo(path, os.lstat(path), euid)
        dfd = _open_dir(dpath, euid)
        try:
            try:
                fcntl.flock(dfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigurationError(
                    f"{path} is in use: a live broker is listening there"
                ) from None
            os.fchmod(dfd, 0o700)
            _clean_dir(dfd, dpath, euid)
            # Made under a temporary name in our private directory, chmod-ed, then renamed
            # into place: the path never exists with looser permissions, and a dead
            # broker's FIFO there is replaced atomically.
            os.mkfifo(_TMP, 0o600, dir_fd=dfd)
            os.chmod(_TMP, 0o600, dir_fd=dfd)
            os.rename(_TMP, path, src_dir_fd=dfd)
            rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | _O_CLOEXEC)
            keep_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | _O_CLOEXEC)
            ino = os.fstat(rfd).st_ino
        except OSError as exc:
            os.close(dfd)
            raise ConfigurationError(f"cannot listen on {url.raw}: {exc.strerror or exc}") from None
        except BaseException:
            os.close(dfd)
            raise
        return _FifoListener(path, dfd, rfd, keep_fd, ino, accept, options)


async def _send_request(path: str, cid: str, fail: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | _O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise ConnectError(
                f"{fail}: no broker reads {path} (left behind by one that died?)"
            ) from None
        raise ConnectError(f"{fail}: cannot open {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise ConnectError(f"{fail}: {path} is not a FIFO")
        line = REQUEST % cid.encode()
        while True:
            try:
                os.write(fd, line)  # <= PIPE_BUF: all of it, or EAGAIN and nothing
                return
            except BlockingIOError:
                await asyncio.sleep(0.005)  # the rendezvous is full: the broker is busy
            except BrokenPipeError:
                raise ConnectError(f"{fail}: the broker went away") from None
    finally:
        os.close(fd)


_WATCH = 0.05
"""Seconds between two looks, while waiting for the broker's answer, at whether a broker
still holds the directory's lock and our FIFO is still there."""


def _broker_gone(up: str, dpath: str) -> bool:
    """True when no broker can answer any more: our FIFO was swept by a new broker, or no
    broker holds the directory's lock. A client that wrote its request just as the broker
    died would otherwise wait out the whole ``connect_timeout`` (a reconnect too)."""
    if not os.path.exists(up):
        return True
    try:
        dfd = os.open(dpath, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(dfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a broker holds it exclusively: it is alive
    finally:
        os.close(dfd)  # also drops the shared lock if we got it
    return True


async def _read_answer(fd: int, fail: str, up: str, dpath: str) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    buf = b""
    watch: asyncio.TimerHandle | None = None

    def look() -> None:
        nonlocal watch
        if done.done():
            return
        if _broker_gone(up, dpath):
            done.set_exception(ConnectError(f"{fail}: the broker went away during the handshake"))
        else:
            watch = loop.call_later(_WATCH, look)

    def readable() -> None:
        nonlocal buf
        try:
            data = os.read(fd, 256)
        except (BlockingIOError, InterruptedError):
            return
        buf += data
        if (not data or b"\n" in buf or len(buf) > 200) and not done.done():
            done.set_result(buf)

    loop.add_reader(fd, readable)
    watch = loop.call_later(_WATCH, look)
    try:
        answer = await done
    finally:
        loop.remove_reader(fd)
        if watch is not None:
            watch.cancel()
    if answer != _OK:
        if not answer:
            raise ConnectError(f"{fail}: the broker hung up during the FIFO handshake")
        raise ConnectError(f"{fail}: unexpected answer from the broker: {answer[:100]!r}")


register("fifo", FifoTransport())
