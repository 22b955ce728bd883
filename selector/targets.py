"""The predictor address list: `--predictor-url HOST:PORT[,HOST:PORT...]`.

Each entry is an IP literal (one replica) or a DNS name, which may resolve to several addresses: a
Kubernetes headless Service answers with one A/AAAA record per ready Triton pod. IPv6 literals are
bracketed ("[::1]:8001"), as gRPC targets are. No imports from the rest of the selector, so config.py can
validate the flag without an import cycle.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    host: str            # IP literal or DNS name, without brackets
    port: int

    @property
    def is_literal(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        return grpc_target(self.host, self.port)


def grpc_target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_targets(text: str) -> tuple[Target, ...]:
    """'a:8001,10.0.0.7:8001,[::1]:8001' -> Targets; ValueError naming the bad entry otherwise."""
    entries = [entry.strip() for entry in text.split(",")]
    if not text.strip() or any(not entry for entry in entries):
        raise ValueError(f"the predictor URL must be HOST:PORT[,HOST:PORT...] with no empty entry, got {text!r}")
    targets = []
    for entry in entries:
        if "/" in entry:
            raise ValueError(f"predictor address {entry!r} must be HOST:PORT, without a scheme or path")
        if entry.startswith("["):
            host, sep, port_text = entry[1:].partition("]:")
        else:
            host, sep, port_text = entry.rpartition(":")
            if ":" in host:
                raise ValueError(f"predictor address {entry!r}: put an IPv6 address in brackets, as [{host}]:PORT")
        if not sep or not host:
            raise ValueError(f"predictor address {entry!r} must be HOST:PORT (for example triton:8001)")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"predictor address {entry!r}: the port must be 1-65535, got {port_text!r}")
        targets.append(Target(host, int(port_text)))
    if len(set(targets)) != len(targets):
        raise ValueError(f"the predictor URL {text!r} names an address twice")
    return tuple(targets)
