"""Gizwits product datapoint definitions (the JSON served by ``GET /app/datapoint``).

`parse_product_definition` validates a datapoint JSON and returns an immutable
`ProductDefinition`; `Attr.to_raw` / `Attr.to_display` convert between the values apps see
(display form) and the unsigned transport values carried in P0.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Context, Decimal
from enum import StrEnum
from typing import Any, Final

from iotcloud.codecs.errors import DatapointError, ProductDefinitionError

__all__ = [
    "Attr",
    "AttrType",
    "DataType",
    "LayoutArea",
    "ProductDefinition",
    "ProtocolType",
    "StandardLayout",
    "UintSpec",
    "load_product_definition",
    "parse_product_definition",
]


class AttrType(StrEnum):
    """Role of a datapoint, the JSON ``type`` field."""

    STATUS_WRITABLE = "status_writable"
    STATUS_READONLY = "status_readonly"
    ALERT = "alert"
    FAULT = "fault"


class DataType(StrEnum):
    """Value type of a datapoint, the JSON ``data_type`` field."""

    BOOL = "bool"
    UINT8 = "uint8"
    UINT16 = "uint16"
    UINT32 = "uint32"
    ENUM = "enum"
    BINARY = "binary"


class ProtocolType(StrEnum):
    """P0 flavour of a product, the JSON ``protocolType`` field."""

    STANDARD = "standard"
    VAR_LEN = "var_len"


NUMERIC_WIDTHS: Final[Mapping[DataType, int]] = {
    DataType.UINT8: 1,
    DataType.UINT16: 2,
    DataType.UINT32: 4,
}
BIT_DATA_TYPES: Final = frozenset({DataType.BOOL, DataType.ENUM})
MAX_ENUM_BITS: Final = 16
"""Widest enum accepted; generated device code handles at most a 2-byte spill."""
MAX_BINARY_BYTES: Final = 65_535
"""Longest binary attr accepted (a sanity bound: real products use up to 255)."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_]+")
_DECIMAL: Final = Context(prec=60)


def _finite(number: int | float) -> bool:
    return not isinstance(number, float) or math.isfinite(number)


def _to_decimal(number: int | float) -> Decimal:
    # repr() gives the shortest decimal that round-trips, so 0.1 becomes exactly Decimal("0.1").
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


@dataclass(frozen=True)
class UintSpec:
    """Scaling of a numeric datapoint: ``display = raw * ratio + addition``.

    ``min``/``max`` are limits of the transport (raw) value; ``ratio`` must be finite and > 0
    (`ProductDefinitionError` otherwise). Display values are ints when both ``ratio`` and
    ``addition`` are integral, otherwise floats computed in exact decimal arithmetic (so raw 3
    with ratio 0.1 is 0.3, not 0.30000000000000004). ``to_raw`` rounds half to even.
    """

    min: int
    max: int
    ratio: int | float
    addition: int | float
    _ratio: Decimal = field(init=False, repr=False, compare=False)
    _addition: Decimal = field(init=False, repr=False, compare=False)
    _integral: bool = field(init=False, repr=False, compare=False)
    _int_scale: tuple[int, int] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (_finite(self.ratio) and self.ratio > 0 and _finite(self.addition)):
            raise ProductDefinitionError(
                None, f"uint_spec needs a finite ratio > 0 and a finite addition, got {self!r}"
            )
        ratio = _to_decimal(self.ratio)
        addition = _to_decimal(self.addition)
        object.__setattr__(self, "_ratio", ratio)
        object.__setattr__(self, "_addition", addition)
        integral = ratio == ratio.to_integral_value() and addition == addition.to_integral_value()
        object.__setattr__(self, "_integral", integral)
        # integral scaling is exact in integers: the report path skips Decimal for it
        scale = (int(ratio), int(addition)) if integral else None
        object.__setattr__(self, "_int_scale", scale)

    @property
    def integral(self) -> bool:
        """True when display values are always integers."""
        return self._integral

    @property
    def display_min(self) -> int | float:
        """Smallest display value (``min`` scaled)."""
        return self.to_display(self.min)

    @property
    def display_max(self) -> int | float:
        """Largest display value (``max`` scaled)."""
        return self.to_display(self.max)

    def to_display(self, raw: int) -> int | float:
        """Scale a transport value to its display value; no range check."""
        if self._int_scale is not None:
            return raw * self._int_scale[0] + self._int_scale[1]
        value = _DECIMAL.add(_DECIMAL.multiply(Decimal(raw), self._ratio), self._addition)
        return int(value) if self._integral else float(value)

    def to_raw(self, display: int | float) -> int:
        """Unscale a finite display value to the nearest transport value; no range check."""
        quotient = _DECIMAL.divide(
            _DECIMAL.subtract(_to_decimal(display), self._addition), self._ratio
        )
        return int(quotient.to_integral_value(rounding=ROUND_HALF_EVEN))


@dataclass(frozen=True)
class Attr:
    """One datapoint of a product.

    ``length`` is in bits for bool/enum (``unit == "bit"``) and in bytes for numeric/binary
    (``unit == "byte"``). ``byte_offset``/``bit_offset`` are meaningful only for the standard
    protocol. ``uint_spec`` is set exactly for numeric types, ``enum_labels`` exactly for enums.
    """

    id: int
    name: str
    display_name: str
    type: AttrType
    data_type: DataType
    byte_offset: int
    bit_offset: int
    length: int
    unit: str
    uint_spec: UintSpec | None = None
    enum_labels: tuple[str, ...] = ()
    desc: str = ""

    @property
    def is_writable(self) -> bool:
        """True for ``status_writable`` attrs, the only ones a control may set."""
        return self.type is AttrType.STATUS_WRITABLE

    @property
    def is_bit_field(self) -> bool:
        """True for bool and enum attrs, which live in bit areas/segments."""
        return self.data_type in BIT_DATA_TYPES

    def to_raw(self, value: Any) -> int | bytes:
        """Convert a display value to its transport value.

        bool: True/False (or 0/1) -> 0/1; enum: label or index -> index; numerics: display number
        -> rounded raw int within ``uint_spec`` min..max; binary: bytes of exactly ``length``
        bytes -> the same bytes. Raises `DatapointError` naming this attr when the value does not
        fit.
        """
        data_type = self.data_type
        if data_type is DataType.BOOL:
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int) and value in (0, 1):
                return value
            raise DatapointError(self.name, f"expected true/false, got {value!r}")
        if data_type is DataType.ENUM:
            return self._enum_index(value)
        if data_type is DataType.BINARY:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise DatapointError(self.name, f"expected bytes, got {type(value).__name__}")
            data = bytes(value)
            if len(data) != self.length:
                raise DatapointError(
                    self.name, f"expected exactly {self.length} bytes, got {len(data)}"
                )
            return data
        return self._numeric_raw(value)

    def to_display(self, raw: int | bytes) -> Any:
        """Convert a transport value to its display value.

        bool -> True/False, enum -> label, numerics -> scaled int/float (not range-checked: devices
        are trusted to report what they measure), binary -> bytes. Raises `DatapointError` for an
        enum index without a label.
        """
        if isinstance(raw, bytes | bytearray):
            return bytes(raw)
        data_type = self.data_type
        if data_type is DataType.BOOL:
            return bool(raw)
        if data_type is DataType.ENUM:
            if not 0 <= raw < len(self.enum_labels):
                raise DatapointError(
                    self.name,
                    f"enum index {raw} out of range (labels: {len(self.enum_labels)})",
                )
            return self.enum_labels[raw]
        assert self.uint_spec is not None
        return self.uint_spec.to_display(raw)

    def _enum_index(self, value: Any) -> int:
        if isinstance(value, str):
            try:
                return self.enum_labels.index(value)
            except ValueError:
                raise DatapointError(
                    self.name,
                    f"unknown enum label {value!r} (expected one of {list(self.enum_labels)})",
                ) from None
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value < len(self.enum_labels):
                return value
            raise DatapointError(
                self.name,
                f"enum index {value} out of range 0..{len(self.enum_labels) - 1}",
            )
        raise DatapointError(self.name, f"expected an enum label or index, got {value!r}")

    def _numeric_raw(self, value: Any) -> int:
        spec = self.uint_spec
        assert spec is not None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DatapointError(self.name, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise DatapointError(self.name, f"expected a finite number, got {value!r}")
        raw = spec.to_raw(value)
        if not spec.min <= raw <= spec.max:
            raise DatapointError(
                self.name,
                f"value {value!r} out of range {spec.display_min}..{spec.display_max}",
            )
        return raw


@dataclass(frozen=True)
class LayoutArea:
    """One group of the standard ``dev_status`` block.

    For a bit area ``fields`` pairs each attr with its bit position ``p`` inside the area, read
    as a big-endian integer of ``size`` bytes; for a byte area with its absolute byte offset.
    """

    name: str
    is_bits: bool
    start: int
    size: int
    fields: tuple[tuple[Attr, int], ...]


@dataclass(frozen=True)
class StandardLayout:
    """The standard ``dev_status`` layout: six areas in protocol order.

    Order: writable bits, writable bytes, read-only bits, read-only bytes, alert bits, fault
    bits. The writable half (``writable_size`` bytes) is a prefix of ``dev_status``.
    """

    areas: tuple[LayoutArea, ...]
    size: int
    writable_size: int

    @property
    def writable_areas(self) -> tuple[LayoutArea, ...]:
        """The two areas making up a control's ``attr_vals``."""
        return self.areas[:2]


@dataclass(frozen=True)
class ProductDefinition:
    """A validated product datapoint definition; build it with `parse_product_definition`.

    ``attrs`` are ordered by id. ``layout`` is set for the standard protocol only. ``source`` is a
    private copy of the JSON object it was parsed from, to be served back verbatim; do not mutate
    it.
    """

    name: str
    product_key: str | None
    protocol_type: ProtocolType
    packet_version: str | None
    attrs: tuple[Attr, ...]
    layout: StandardLayout | None = field(default=None, repr=False, compare=False)
    source: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _by_name: dict[str, Attr] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {attr.name: attr for attr in self.attrs})

    @property
    def writable_attrs(self) -> tuple[Attr, ...]:
        """The ``status_writable`` attrs in id order."""
        return tuple(attr for attr in self.attrs if attr.is_writable)

    def attr(self, name: str) -> Attr:
        """Return the attr called ``name``; raises `DatapointError` ("unknown attr") otherwise."""
        try:
            return self._by_name[name]
        except (KeyError, TypeError):
            raise DatapointError(str(name), "unknown attr") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


def load_product_definition(text: str | bytes) -> ProductDefinition:
    """Parse datapoint JSON text; raises `ProductDefinitionError` for invalid JSON or content."""
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProductDefinitionError(None, f"not valid JSON: {exc}") from exc
    return parse_product_definition(data)


def parse_product_definition(data: Any) -> ProductDefinition:
    """Validate a Gizwits datapoint JSON object and build a `ProductDefinition`.

    Raises `ProductDefinitionError` (naming the attr where there is one) for missing fields,
    unknown ``type``/``data_type``/``protocolType``, bad or duplicate names, duplicate ids, bool
    ``len != 1``, enums too narrow for their labels, numeric ``len`` not matching the type width,
    binary without a byte length, ``uint_spec`` limits outside the transport range or min > max,
    ``ratio <= 0``, and (standard protocol) positions outside their dev_status group or
    overlapping each other.
    """
    if not isinstance(data, Mapping):
        raise ProductDefinitionError(None, "datapoint definition must be a JSON object")
    name = _product_str(data, "name", required=True)
    assert name is not None
    product_key = _product_str(data, "product_key", required=False)
    packet_version = _product_str(data, "packetVersion", required=False)
    protocol_raw = data.get("protocolType", ProtocolType.STANDARD.value)
    try:
        protocol = ProtocolType(protocol_raw)
    except ValueError:
        raise ProductDefinitionError(
            None, f"unknown protocolType {protocol_raw!r} (expected standard or var_len)"
        ) from None

    entities = data.get("entities")
    if not isinstance(entities, Sequence) or isinstance(entities, str):
        raise ProductDefinitionError(None, "missing field 'entities' (a list)")
    if len(entities) != 1:
        raise ProductDefinitionError(
            None, f"exactly one entity is supported, found {len(entities)}"
        )
    entity = entities[0]
    if not isinstance(entity, Mapping):
        raise ProductDefinitionError(None, "entities[0] must be an object")
    raw_attrs = entity.get("attrs")
    if not isinstance(raw_attrs, Sequence) or isinstance(raw_attrs, str):
        raise ProductDefinitionError(None, "missing field 'entities[0].attrs' (a list)")

    attrs = [_parse_attr(index, raw, protocol) for index, raw in enumerate(raw_attrs)]
    _check_unique(attrs)
    attrs.sort(key=lambda attr: attr.id)
    layout = _standard_layout(attrs) if protocol is ProtocolType.STANDARD else None
    return ProductDefinition(
        name=name,
        product_key=product_key,
        protocol_type=protocol,
        packet_version=packet_version,
        attrs=tuple(attrs),
        layout=layout,
        source=copy.deepcopy(dict(data)),
    )


def _product_str(data: Mapping[str, Any], key: str, *, required: bool) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise ProductDefinitionError(None, f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise ProductDefinitionError(None, f"field {key!r} must be a string")
    return value


def _int_field(obj: Mapping[str, Any], key: str, label: str, *, default: int | None = None) -> int:
    value = obj.get(key, default)
    if value is None:
        raise ProductDefinitionError(label, f"missing field {key!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProductDefinitionError(label, f"field {key!r} must be an integer, got {value!r}")
    return value


def _non_negative(obj: Mapping[str, Any], key: str, label: str, default: int | None = None) -> int:
    value = _int_field(obj, key, label, default=default)
    if value < 0:
        raise ProductDefinitionError(label, f"field {key!r} must not be negative, got {value}")
    return value


def _number_field(obj: Mapping[str, Any], key: str, label: str) -> int | float:
    value = obj.get(key)
    if value is None:
        raise ProductDefinitionError(label, f"missing field 'uint_spec.{key}'")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProductDefinitionError(label, f"uint_spec.{key} must be a number, got {value!r}")
    if not _finite(value):
        raise ProductDefinitionError(label, f"uint_spec.{key} must be finite, got {value!r}")
    return value


def _parse_attr(index: int, raw: Any, protocol: ProtocolType) -> Attr:
    if not isinstance(raw, Mapping):
        raise ProductDefinitionError(None, f"attrs[{index}] must be an object")
    name = raw.get("name")
    if name is None:
        raise ProductDefinitionError(None, f"attrs[{index}]: missing field 'name'")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ProductDefinitionError(
            str(name), "bad name (use letters, digits and '_' only, not empty)"
        )
    attr_id = _non_negative(raw, "id", name)
    display_name = raw.get("display_name", name)
    desc = raw.get("desc", "")
    if not isinstance(display_name, str) or not isinstance(desc, str):
        raise ProductDefinitionError(name, "display_name and desc must be strings")

    type_raw = raw.get("type")
    if type_raw is None:
        raise ProductDefinitionError(name, "missing field 'type'")
    try:
        attr_type = AttrType(type_raw)
    except ValueError:
        raise ProductDefinitionError(name, f"unknown type {type_raw!r}") from None
    data_type_raw = raw.get("data_type")
    if data_type_raw is None:
        raise ProductDefinitionError(name, "missing field 'data_type'")
    try:
        data_type = DataType(data_type_raw)
    except ValueError:
        raise ProductDefinitionError(name, f"unknown data_type {data_type_raw!r}") from None
    if attr_type in (AttrType.ALERT, AttrType.FAULT) and data_type is not DataType.BOOL:
        raise ProductDefinitionError(name, f"{attr_type.value} attrs must be bool")

    position = raw.get("position")
    if not isinstance(position, Mapping):
        raise ProductDefinitionError(name, "missing field 'position'")
    offset_default = 0 if protocol is ProtocolType.VAR_LEN else None
    byte_offset = _non_negative(position, "byte_offset", name, offset_default)
    bit_offset = _non_negative(position, "bit_offset", name, offset_default)
    length = _non_negative(position, "len", name)
    unit = position.get("unit")
    if unit is None:
        raise ProductDefinitionError(name, "missing field 'position.unit'")
    expected_unit = "bit" if data_type in BIT_DATA_TYPES else "byte"
    if unit != expected_unit:
        raise ProductDefinitionError(
            name, f"position.unit must be {expected_unit!r} for {data_type.value}, got {unit!r}"
        )

    uint_spec: UintSpec | None = None
    labels: tuple[str, ...] = ()
    if data_type is DataType.BOOL:
        if length != 1:
            raise ProductDefinitionError(name, f"bool must have len 1, got {length}")
    elif data_type is DataType.ENUM:
        labels = _parse_enum(raw, name, length)
    elif data_type is DataType.BINARY:
        if not 1 <= length <= MAX_BINARY_BYTES:
            raise ProductDefinitionError(
                name,
                f"binary needs a byte length 1..{MAX_BINARY_BYTES} (position.len), got {length}",
            )
    else:
        width = NUMERIC_WIDTHS[data_type]
        if length != width:
            raise ProductDefinitionError(
                name,
                f"len {length} does not match {data_type.value} ({width} byte"
                f"{'s' if width > 1 else ''})",
            )
        uint_spec = _parse_uint_spec(raw, name, width)

    return Attr(
        id=attr_id,
        name=name,
        display_name=display_name,
        type=attr_type,
        data_type=data_type,
        byte_offset=byte_offset,
        bit_offset=bit_offset,
        length=length,
        unit=unit,
        uint_spec=uint_spec,
        enum_labels=labels,
        desc=desc,
    )


def _parse_enum(raw: Mapping[str, Any], name: str, length: int) -> tuple[str, ...]:
    labels = raw.get("enum")
    if labels is None:
        raise ProductDefinitionError(name, "missing field 'enum'")
    if (
        not isinstance(labels, Sequence)
        or isinstance(labels, str)
        or not labels
        or not all(isinstance(label, str) for label in labels)
    ):
        raise ProductDefinitionError(name, "enum must be a non-empty list of strings")
    if len(set(labels)) != len(labels):
        raise ProductDefinitionError(name, "enum has duplicate labels")
    if not 1 <= length <= MAX_ENUM_BITS:
        raise ProductDefinitionError(
            name, f"enum len must be 1..{MAX_ENUM_BITS} bits, got {length}"
        )
    if len(labels) > 1 << length:
        raise ProductDefinitionError(
            name, f"enum len {length} bits is too small for {len(labels)} labels"
        )
    return tuple(labels)


def _parse_uint_spec(raw: Mapping[str, Any], name: str, width: int) -> UintSpec:
    spec = raw.get("uint_spec")
    if not isinstance(spec, Mapping):
        raise ProductDefinitionError(name, "missing field 'uint_spec'")
    low = _int_field(spec, "min", name)
    high = _int_field(spec, "max", name)
    ratio = _number_field(spec, "ratio", name)
    addition = _number_field(spec, "addition", name)
    limit = (1 << (8 * width)) - 1
    for key, value in (("min", low), ("max", high)):
        if not 0 <= value <= limit:
            raise ProductDefinitionError(
                name, f"uint_spec.{key} {value} outside the uint{8 * width} range 0..{limit}"
            )
    if low > high:
        raise ProductDefinitionError(name, f"uint_spec.min {low} > uint_spec.max {high}")
    if ratio <= 0:
        raise ProductDefinitionError(name, f"uint_spec.ratio must be > 0, got {ratio}")
    return UintSpec(min=low, max=high, ratio=ratio, addition=addition)


def _check_unique(attrs: Sequence[Attr]) -> None:
    names: set[str] = set()
    ids: dict[int, str] = {}
    for attr in attrs:
        if attr.name in names:
            raise ProductDefinitionError(attr.name, "duplicate name")
        names.add(attr.name)
        if attr.id in ids:
            raise ProductDefinitionError(
                attr.name, f"duplicate id {attr.id} (also used by {ids[attr.id]!r})"
            )
        ids[attr.id] = attr.name


_GROUPS: Final = (
    ("writable bits", AttrType.STATUS_WRITABLE, True),
    ("writable bytes", AttrType.STATUS_WRITABLE, False),
    ("read-only bits", AttrType.STATUS_READONLY, True),
    ("read-only bytes", AttrType.STATUS_READONLY, False),
    ("alert bits", AttrType.ALERT, True),
    ("fault bits", AttrType.FAULT, True),
)


def _standard_layout(attrs: Sequence[Attr]) -> StandardLayout:
    """Check the JSON positions against the dev_status group order and record them."""
    areas: list[LayoutArea] = []
    cursor = 0
    for group_name, attr_type, is_bits in _GROUPS:
        members = [a for a in attrs if a.type is attr_type and a.is_bit_field is is_bits]
        if is_bits:
            size = (sum(a.length for a in members) + 7) // 8
            fields = _place_bits(group_name, members, cursor, size)
        else:
            size = sum(a.length for a in members)
            fields = _place_bytes(group_name, members, cursor, size)
        areas.append(LayoutArea(group_name, is_bits, cursor, size, fields))
        cursor += size
    return StandardLayout(
        areas=tuple(areas), size=cursor, writable_size=areas[0].size + areas[1].size
    )


def _place_bits(
    group: str, members: Sequence[Attr], start: int, size: int
) -> tuple[tuple[Attr, int], ...]:
    owners: dict[int, str] = {}
    fields = []
    for attr in members:
        if not start <= attr.byte_offset < start + size:
            raise ProductDefinitionError(
                attr.name,
                f"byte_offset {attr.byte_offset} is outside the {group} area "
                f"(bytes {start}..{start + size - 1})",
            )
        bit = (attr.byte_offset - start) * 8 + attr.bit_offset % 8
        if bit + attr.length > size * 8:
            raise ProductDefinitionError(
                attr.name,
                f"bits {bit}..{bit + attr.length - 1} extend past the {group} area "
                f"({size * 8} bits)",
            )
        for position in range(bit, bit + attr.length):
            if position in owners:
                raise ProductDefinitionError(
                    attr.name, f"position overlaps attr {owners[position]!r} in the {group} area"
                )
            owners[position] = attr.name
        fields.append((attr, bit))
    return tuple(fields)


def _place_bytes(
    group: str, members: Sequence[Attr], start: int, size: int
) -> tuple[tuple[Attr, int], ...]:
    placed: list[tuple[int, int, str]] = []
    fields = []
    for attr in members:
        begin, end = attr.byte_offset, attr.byte_offset + attr.length
        if begin < start or end > start + size:
            raise ProductDefinitionError(
                attr.name,
                f"bytes {begin}..{end - 1} are outside the {group} area "
                f"(bytes {start}..{start + size - 1})",
            )
        for other_begin, other_end, other in placed:
            if begin < other_end and other_begin < end:
                raise ProductDefinitionError(
                    attr.name, f"position overlaps attr {other!r} in the {group} area"
                )
        placed.append((begin, end, attr.name))
        fields.append((attr, begin))
    return tuple(fields)
