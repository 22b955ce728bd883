"""RouteDecision.scores written straight in protobuf wire format, the costliest piece of a Route's answer."""

from __future__ import annotations

import struct


class ScoresWire:
    """RouteDecision.scores (one ModelScore per pool model, in pool order) in protobuf wire format.

    Merged into the decision with MergeFromString, which parses it like any other message: ~4x cheaper than
    32 `scores.add(...)` calls, the largest piece of Route's own work. Per model, the field-6 tag and length
    and the model name are fixed; only quality (field 2, float) and expected_cost_usd (field 3, double) vary.
    """

    _VALUES = struct.Struct("<BfBd")                 # tag of field 2 (fixed32), float, tag of field 3, double

    def __init__(self, names: list[str]):
        self._prefixes = []
        for name in names:
            data = name.encode("utf-8")
            name_field = b"\x0a" + _varint(len(data)) + data                     # field 1, length-delimited
            entry_length = len(name_field) + self._VALUES.size
            self._prefixes.append(b"\x32" + _varint(entry_length) + name_field)   # field 6, length-delimited

    def encode(self, quality: list[float], expected_cost_usd: list[float]) -> bytes:
        pack = self._VALUES.pack
        return b"".join([prefix + pack(0x15, q, 0x19, c)
                         for prefix, q, c in zip(self._prefixes, quality, expected_cost_usd)])


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
