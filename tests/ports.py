"""Ports for brokers that tests start on their own."""

from __future__ import annotations

import random
import socket

# Used by other tests and runs: the shared broker, chaos brokers, worker web views.
RESERVED = {9092, 9093, 19092, 19093, 19192, 19193, *range(6066, 6070), *range(6166, 6170)}
# Below Linux's ephemeral range (32768-60999): a port the kernel hands to an outgoing
# connection between our check and the broker's start would make the broker fail to bind.
CANDIDATES = range(20000, 32000)


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for port in random.sample(CANDIDATES, 200):
        run = set(range(port, port + count))
        if run & RESERVED:
            continue
        if all(bindable(p) for p in run):
            return port
    raise RuntimeError(f"no {count} consecutive free ports")


def broker_port() -> int:
    """A port free together with the next one (a local broker's controller listens there)."""
    return free_ports(2)


def cluster_port(brokers: int = 3) -> int:
    """The first port of a local cluster: each node takes two (broker, controller)."""
    return free_ports(2 * brokers)
