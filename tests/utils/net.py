"""Ports on loopback for the servers tests start (and for addresses nothing answers at)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on now: for a server to start on, or to find closed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
