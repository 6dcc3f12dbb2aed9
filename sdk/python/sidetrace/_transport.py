"""Endpoint parsing and the non-blocking sockets the sender thread writes to.

Only the sender thread touches a transport; nothing here is thread-safe.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from dataclasses import dataclass

DEFAULT_ENDPOINT = "unix:///run/sidetrace/agent.sock"

# Largest datagram the SDK builds by batching messages; a single larger
# message is sent alone, up to the transport's own limit.
DATAGRAM_BATCH_BYTES = 16 * 1024
UDP_MAX_DATAGRAM = 65507
UNIXGRAM_MAX_DATAGRAM = 64 * 1024  # the agent's datagram size


class EndpointError(ValueError):
    """The endpoint string is not one of unix://, unixgram://, udp://."""


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # "unix", "unixgram" or "udp"
    path: str = ""  # unix, unixgram
    host: str = ""  # udp
    port: int = 0  # udp

    @property
    def is_stream(self) -> bool:
        return self.scheme == "unix"

    @property
    def max_datagram(self) -> int:
        return UDP_MAX_DATAGRAM if self.scheme == "udp" else UNIXGRAM_MAX_DATAGRAM

    def __str__(self) -> str:
        if self.scheme == "udp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"udp://{host}:{self.port}"
        return f"{self.scheme}://{self.path}"


def parse_endpoint(text: str) -> Endpoint:
    """Parses `unix://PATH`, `unixgram://PATH` or `udp://HOST:PORT`."""
    scheme, sep, rest = text.partition("://")
    if not sep or not rest:
        raise EndpointError(f"endpoint {text!r}: expected unix://, unixgram:// or udp://")
    if scheme in ("unix", "unixgram"):
        return Endpoint(scheme, path=rest)
    if scheme == "udp":
        if rest.startswith("["):
            host, _, port = rest[1:].partition("]:")
        else:
            host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EndpointError(f"endpoint {text!r}: expected udp://HOST:PORT")
        return Endpoint("udp", host=host, port=int(port))
    raise EndpointError(f"endpoint {text!r}: unknown scheme {scheme!r}")


class Transport:
    """One connected, non-blocking socket to the agent."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.sock: socket.socket | None = None

    def connect(self) -> None:
        """Opens the socket; raises OSError when the agent is not reachable."""
        self.close()
        ep = self.endpoint
        if ep.scheme == "udp":
            infos = socket.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM)
            family, _, _, _, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_DGRAM)
            target = addr
        else:
            kind = socket.SOCK_STREAM if ep.is_stream else socket.SOCK_DGRAM
            sock = socket.socket(socket.AF_UNIX, kind)
            target = ep.path
        try:
            sock.setblocking(False)
            try:
                sock.connect(target)
            except BlockingIOError:
                # A Unix stream connect whose backlog is full: wait briefly.
                _, writable, _ = select.select([], [sock], [], 0.5)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if not writable or err:
                    raise OSError(err or errno.ETIMEDOUT, os.strerror(err or errno.ETIMEDOUT))
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def send(self, data: memoryview) -> int:
        """Writes what the socket takes now; returns the byte count.

        Returns 0 when the socket is full (try again later). A datagram is
        all-or-nothing. Raises OSError on a broken connection.
        """
        assert self.sock is not None
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                return 0
            raise

    def wait_writable(self, timeout: float) -> None:
        if self.sock is not None:
            try:
                select.select([], [self.sock], [], max(0.0, timeout))
            except (OSError, ValueError):
                pass
