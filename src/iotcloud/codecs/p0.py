"""Gizwits P0 data protocol, driven by a product's datapoint definition.

Standard products carry fixed-layout blocks (``dev_status`` and its writable half); var_len
products carry a presence bitmap over every attr followed by only the flagged values. In both,
multi-byte bitmaps and bit areas are the little-endian packed bytes reversed, i.e. a big-endian
integer whose bit ``p`` holds bit ``p`` of the area.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final

from iotcloud.codecs.datapoints import (
    Attr,
    DataType,
    LayoutArea,
    ProductDefinition,
    ProtocolType,
    StandardLayout,
)
from iotcloud.codecs.errors import DatapointError, P0Error

__all__ = ["Action", "P0Codec", "P0Message"]


class Action(IntEnum):
    """P0 action byte (first byte of every P0 payload)."""

    CONTROL = 0x01
    READ = 0x02
    READ_REPLY = 0x03
    REPORT = 0x04
    TRANSPARENT_DOWN = 0x05
    TRANSPARENT_UP = 0x06
    VAR_CONTROL = 0x11
    VAR_READ = 0x12
    VAR_READ_REPLY = 0x13
    VAR_REPORT = 0x14


_STANDARD_ACTIONS: Final = frozenset(
    {Action.CONTROL, Action.READ, Action.READ_REPLY, Action.REPORT}
)
_VAR_LEN_ACTIONS: Final = frozenset(
    {Action.VAR_CONTROL, Action.VAR_READ, Action.VAR_READ_REPLY, Action.VAR_REPORT}
)
_TRANSPARENT: Final = frozenset({Action.TRANSPARENT_DOWN, Action.TRANSPARENT_UP})

RawValue = int | bytes


@dataclass(frozen=True)
class P0Message:
    """A decoded P0 payload.

    ``values`` maps attr names to display values (bool, enum label, scaled number, bytes) for
    control (flagged attrs only), read reply and report messages. ``names`` lists the attrs the
    message concerns in id order: flagged attrs, requested attrs for a read (every attr for a
    standard read), every attr for a standard status. ``raw`` holds the bytes after the action for
    transparent (0x05/0x06) messages.
    """

    action: Action
    values: dict[str, Any] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    raw: bytes = b""


def _ceil_bytes(bits: int) -> int:
    return (bits + 7) // 8


def _bitmap(positions: Iterable[int], size: int) -> bytes:
    number = 0
    for position in positions:
        number |= 1 << position
    return number.to_bytes(size, "big")


def _field_bytes(attr: Attr, raw: RawValue | None) -> bytes:
    if raw is None:
        return bytes(attr.length)
    if isinstance(raw, bytes):
        return raw
    return raw.to_bytes(attr.length, "big")


def _field_value(attr: Attr, data: bytes) -> RawValue:
    return data if attr.data_type is DataType.BINARY else int.from_bytes(data, "big")


class P0Codec:
    """Encode and decode P0 payloads for one product (standard or var_len).

    Values are always in display form: bool True/False (0/1 accepted), enum label (or index),
    numbers in display units, binary as bytes of the declared length. Every method raises a
    `CodecError` subclass on bad input — `DatapointError` when a value or attr is at fault,
    `P0Error` when the payload as a whole is malformed — and never IndexError or struct errors.
    """

    def __init__(self, product: ProductDefinition) -> None:
        self.product = product
        self._attrs = product.attrs
        self._writable = product.writable_attrs
        self._is_standard = product.protocol_type is ProtocolType.STANDARD
        self._ordinal = {attr.name: index for index, attr in enumerate(self._attrs)}
        self._writable_ordinal = {attr.name: index for index, attr in enumerate(self._writable)}
        if self._is_standard:
            assert product.layout is not None
            self._layout: StandardLayout | None = product.layout
            self._flag_len = _ceil_bytes(len(self._writable))
        else:
            self._layout = None
            self._flag_len = _ceil_bytes(len(self._attrs))

    # -- encoding -----------------------------------------------------------------------------

    def encode_control(
        self, values: Mapping[str, Any], last_known: Mapping[str, Any] | None = None
    ) -> bytes:
        """Encode a write (action 0x01 standard, 0x11 var_len) of ``values``.

        Only ``status_writable`` attrs may be written (others raise `DatapointError` "read
        only"); an empty ``values`` raises `P0Error`. Standard: the full writable block is sent,
        unflagged writable fields are filled from ``last_known`` (display values; ones that no
        longer fit the attr are ignored) or zero. var_len: ``last_known`` is not needed and ignored.
        """
        if not values:
            raise P0Error("a control needs at least one value")
        for name in values:
            attr = self.product.attr(name)
            if not attr.is_writable:
                raise DatapointError(name, f"read only ({attr.type.value}) attr cannot be written")
        raw = self._convert(values)
        if not self._is_standard:
            flagged = self._in_id_order(raw)
            return (
                bytes([Action.VAR_CONTROL])
                + _bitmap((self._ordinal[a.name] for a in flagged), self._flag_len)
                + self._pack_segments(flagged, raw)
            )
        assert self._layout is not None
        block_values = dict(raw)
        for attr in self._writable:
            if attr.name in block_values or not last_known or attr.name not in last_known:
                continue
            try:
                block_values[attr.name] = attr.to_raw(last_known[attr.name])
            except DatapointError:
                continue
        flags = _bitmap((self._writable_ordinal[name] for name in raw), self._flag_len)
        block = self._pack_areas(
            self._layout.writable_areas, block_values, self._layout.writable_size
        )
        return bytes([Action.CONTROL]) + flags + block

    def encode_read(self, names: Sequence[str] | None = None) -> bytes:
        """Encode a status read (0x02 standard, 0x12 var_len).

        Standard reads carry no payload and always return the full status (``names`` is only
        checked). var_len reads flag the requested attrs, every attr when ``names`` is None.
        Unknown names raise `DatapointError`.
        """
        attrs = self._attrs if names is None else [self.product.attr(name) for name in names]
        if self._is_standard:
            return bytes([Action.READ])
        return bytes([Action.VAR_READ]) + _bitmap(
            (self._ordinal[attr.name] for attr in attrs), self._flag_len
        )

    def encode_status(
        self,
        values: Mapping[str, Any],
        action: int | None = None,
        changed: Iterable[str] | None = None,
    ) -> bytes:
        """Encode a device status message, as a device (or simulator) would send it.

        ``action`` defaults to the report (0x04 standard, 0x14 var_len); the read reply (0x03 /
        0x13) is the other choice, anything else raises `P0Error`. Standard: the full dev_status,
        attrs missing from ``values`` encoded as zero, ``changed`` ignored. var_len: flags and
        values of the ``changed`` attrs (default: every attr in ``values``); a changed attr without
        a value raises `DatapointError`.
        """
        raw = self._convert(values)
        if self._is_standard:
            chosen = self._status_action(action, Action.READ_REPLY, Action.REPORT)
            assert self._layout is not None
            status = self._pack_areas(self._layout.areas, raw, self._layout.size)
            return bytes([chosen]) + status
        chosen = self._status_action(action, Action.VAR_READ_REPLY, Action.VAR_REPORT)
        if changed is None:
            selected = raw
        else:
            selected = {}
            for name in changed:
                self.product.attr(name)
                if name not in raw:
                    raise DatapointError(name, "changed attr has no value")
                selected[name] = raw[name]
        flagged = self._in_id_order(selected)
        return (
            bytes([chosen])
            + _bitmap((self._ordinal[attr.name] for attr in flagged), self._flag_len)
            + self._pack_segments(flagged, selected)
        )

    def encode_transparent(self, data: bytes, *, upstream: bool = False) -> bytes:
        """Encode custom bytes: action 0x05 (cloud -> device) or 0x06 when ``upstream``."""
        action = Action.TRANSPARENT_UP if upstream else Action.TRANSPARENT_DOWN
        return bytes([action]) + bytes(data)

    # -- decoding -----------------------------------------------------------------------------

    def decode(self, p0: bytes) -> P0Message:
        """Decode any P0 payload of this product's protocol.

        Raises `P0Error` for an empty or truncated payload, trailing bytes, flags naming no attr,
        an unknown action or one of the other protocol flavour; `DatapointError` for an enum index
        without a label or a var_len control flagging a non-writable attr.
        """
        p0 = bytes(p0)
        if not p0:
            raise P0Error("empty P0 payload")
        try:
            action = Action(p0[0])
        except ValueError:
            raise P0Error(f"unknown action 0x{p0[0]:02x}") from None
        if action in _TRANSPARENT:
            return P0Message(action=action, raw=p0[1:])
        if self._is_standard:
            if action not in _STANDARD_ACTIONS:
                raise P0Error(f"action 0x{action:02x} is not valid for a standard product")
            return self._decode_standard(action, p0)
        if action not in _VAR_LEN_ACTIONS:
            raise P0Error(f"action 0x{action:02x} is not valid for a var_len product")
        return self._decode_var_len(action, p0)

    def _decode_standard(self, action: Action, p0: bytes) -> P0Message:
        layout = self._layout
        assert layout is not None
        if action is Action.READ:
            self._expect_length(p0, 1, action)
            return P0Message(action=action, names=tuple(a.name for a in self._attrs))
        if action is Action.CONTROL:
            self._expect_length(p0, 1 + self._flag_len + layout.writable_size, action)
            flagged = self._flagged(p0[1 : 1 + self._flag_len], self._writable)
            raw = self._unpack_areas(layout.writable_areas, p0[1 + self._flag_len :])
            return self._message(action, flagged, raw)
        self._expect_length(p0, 1 + layout.size, action)
        raw = self._unpack_areas(layout.areas, p0[1:])
        return self._message(action, self._attrs, raw)

    def _decode_var_len(self, action: Action, p0: bytes) -> P0Message:
        if len(p0) < 1 + self._flag_len:
            raise P0Error(
                f"P0 too short for the {self._flag_len}-byte attr flags of action 0x{action:02x}"
            )
        flagged = self._flagged(p0[1 : 1 + self._flag_len], self._attrs)
        if action is Action.VAR_READ:
            self._expect_length(p0, 1 + self._flag_len, action)
            return P0Message(action=action, names=tuple(a.name for a in flagged))
        if action is Action.VAR_CONTROL:
            for attr in flagged:
                if not attr.is_writable:
                    raise DatapointError(
                        attr.name, f"read only ({attr.type.value}) attr flagged in a control"
                    )
        raw = self._unpack_segments(flagged, p0, 1 + self._flag_len, action)
        return self._message(action, flagged, raw)

    # -- helpers ------------------------------------------------------------------------------

    def _convert(self, values: Mapping[str, Any]) -> dict[str, RawValue]:
        return {name: self.product.attr(name).to_raw(value) for name, value in values.items()}

    def _in_id_order(self, names: Iterable[str]) -> list[Attr]:
        wanted = set(names)
        return [attr for attr in self._attrs if attr.name in wanted]

    @staticmethod
    def _status_action(action: int | None, reply: Action, report: Action) -> Action:
        if action is None:
            return report
        if action not in (reply, report):
            raise P0Error(
                f"action 0x{action:02x} is not a status action (use 0x{reply:02x} or "
                f"0x{report:02x})"
            )
        return Action(action)

    @staticmethod
    def _expect_length(p0: bytes, expected: int, action: Action) -> None:
        if len(p0) < expected:
            raise P0Error(
                f"P0 too short for action 0x{action:02x}: expected {expected} bytes, got {len(p0)}"
            )
        if len(p0) > expected:
            raise P0Error(
                f"{len(p0) - expected} trailing bytes after action 0x{action:02x} "
                f"(expected {expected} bytes)"
            )

    def _flagged(self, flag_bytes: bytes, candidates: Sequence[Attr]) -> list[Attr]:
        number = int.from_bytes(flag_bytes, "big")
        if number >> len(candidates):
            raise P0Error(
                f"attr flags 0x{flag_bytes.hex()} set bits beyond the {len(candidates)} attrs"
            )
        return [attr for index, attr in enumerate(candidates) if number >> index & 1]

    @staticmethod
    def _message(action: Action, attrs: Sequence[Attr], raw: Mapping[str, RawValue]) -> P0Message:
        values = {attr.name: attr.to_display(raw[attr.name]) for attr in attrs}
        return P0Message(action=action, values=values, names=tuple(a.name for a in attrs))

    @staticmethod
    def _pack_areas(areas: Sequence[LayoutArea], raw: Mapping[str, RawValue], size: int) -> bytes:
        buffer = bytearray(size)
        for area in areas:
            if area.is_bits:
                number = 0
                for attr, bit in area.fields:
                    value = raw.get(attr.name, 0)
                    assert isinstance(value, int)
                    number |= value << bit
                buffer[area.start : area.start + area.size] = number.to_bytes(area.size, "big")
            else:
                for attr, offset in area.fields:
                    buffer[offset : offset + attr.length] = _field_bytes(attr, raw.get(attr.name))
        return bytes(buffer)

    @staticmethod
    def _unpack_areas(areas: Sequence[LayoutArea], data: bytes) -> dict[str, RawValue]:
        raw: dict[str, RawValue] = {}
        for area in areas:
            if area.is_bits:
                number = int.from_bytes(data[area.start : area.start + area.size], "big")
                for attr, bit in area.fields:
                    raw[attr.name] = (number >> bit) & ((1 << attr.length) - 1)
            else:
                for attr, offset in area.fields:
                    raw[attr.name] = _field_value(attr, data[offset : offset + attr.length])
        return raw

    @staticmethod
    def _pack_segments(flagged: Sequence[Attr], raw: Mapping[str, RawValue]) -> bytes:
        number = 0
        bit = 0
        byte_segment = bytearray()
        for attr in flagged:
            value = raw[attr.name]
            if attr.is_bit_field:
                assert isinstance(value, int)
                number |= value << bit
                bit += attr.length
            else:
                byte_segment += _field_bytes(attr, value)
        return number.to_bytes(_ceil_bytes(bit), "big") + bytes(byte_segment)

    @staticmethod
    def _unpack_segments(
        flagged: Sequence[Attr], p0: bytes, offset: int, action: Action
    ) -> dict[str, RawValue]:
        bit_attrs = [attr for attr in flagged if attr.is_bit_field]
        byte_attrs = [attr for attr in flagged if not attr.is_bit_field]
        bit_len = _ceil_bytes(sum(attr.length for attr in bit_attrs))
        expected = offset + bit_len + sum(attr.length for attr in byte_attrs)
        P0Codec._expect_length(p0, expected, action)
        raw: dict[str, RawValue] = {}
        number = int.from_bytes(p0[offset : offset + bit_len], "big")
        bit = 0
        for attr in bit_attrs:
            raw[attr.name] = (number >> bit) & ((1 << attr.length) - 1)
            bit += attr.length
        position = offset + bit_len
        for attr in byte_attrs:
            raw[attr.name] = _field_value(attr, p0[position : position + attr.length])
            position += attr.length
        return raw
