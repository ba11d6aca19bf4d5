"""Tencent IoT Explorer data templates (物模型): validation of the template and of its values.

`parse_data_template` validates a data-template JSON object (``version``, ``profile``,
``properties``, ``events``, ``actions``) and returns an immutable `DataTemplate`. The template
is then the single judge of what a data-template device may report, post and be sent:
`DataTemplate.check_report`, `check_control`, `check_event`, `check_action_input` and
`check_action_output` check every value against its ``define`` and return the values in their
canonical Tencent form (bool as 0/1), so storage never holds a value the template refuses.

Tencent writes numeric limits as strings (``"min": "0"``); numbers are accepted too. Limits are
kept as `Decimal` so a float step or bound compares exactly (``0.1`` is ``Decimal("0.1")``).
Errors in the template raise `TemplateDefinitionError` naming the JSON path
(``properties[2].define.max``); errors in values raise `TemplateValueError` naming the property
or parameter (``brightness: 120 is above max 100``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import (
    Context,
    Decimal,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
    Underflow,
)
from fractions import Fraction
from typing import Any, Final, Literal

from iotcloud.codecs.errors import CodecError

__all__ = [
    "DATA_TEMPLATE_PROTOCOL",
    "DataTemplate",
    "TemplateAction",
    "TemplateDefinitionError",
    "TemplateEvent",
    "TemplateField",
    "TemplateProperty",
    "TemplateValueError",
    "is_data_template",
    "load_data_template",
    "parse_data_template",
]

DATA_TEMPLATE_PROTOCOL: Final = "data_template"
"""``protocol_type`` of a product defined by a data template."""

Kind = Literal["bool", "int", "float", "enum", "string", "timestamp", "struct"]
KINDS: Final[frozenset[str]] = frozenset(
    {"bool", "int", "float", "enum", "string", "timestamp", "struct"}
)
EVENT_TYPES: Final[frozenset[str]] = frozenset({"info", "alert", "fault"})
DEFAULT_STRING_MAX: Final = 2048
"""Longest string when a template gives no ``max`` (the console's default)."""

PRODUCT_ID_RE: Final = re.compile(r"[A-Z0-9]{10}")
_ID_RE: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
_INT_KEY_RE: Final = re.compile(r"0|-?[1-9][0-9]*")


class TemplateDefinitionError(CodecError):
    """A data template is invalid; ``path`` is the JSON path of the fault ("" for the root)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason


class TemplateValueError(CodecError):
    """A value does not fit the data template; ``name`` is the property or parameter at fault.

    ``str()`` is ``"name: reason"``. For a struct member ``name`` is ``"prop.member"``; for a
    problem with the message as a whole it is the message field (``params``, ``eventId``...).
    """

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _decimal(number: int | float) -> Decimal:
    # repr() is the shortest round-tripping decimal, so 0.1 compares as exactly 0.1
    return Decimal(number) if isinstance(number, int) else Decimal(repr(number))


_EXACT: Final = Context(prec=80, traps=[InvalidOperation, Inexact, Rounded, Overflow, Underflow])
"""Decimal arithmetic that raises rather than rounds: a step check through it is exact when it
returns (the quotient's integer part fits 80 digits), and falls back to `Fraction` otherwise."""


def _integral_int(number: Decimal | None) -> int | None:
    return int(number) if number is not None and number == number.to_integral_value() else None


def _plain(number: Decimal) -> int | float:
    return int(number) if number == number.to_integral_value() else float(number)


@dataclass(frozen=True)
class TemplateField:
    """A typed value slot: a property, a struct member, an event or action parameter.

    ``kind`` is the ``define.type``. ``mapping`` (bool, enum) maps integer keys to labels.
    ``min``/``max``/``step``/``start`` are set for int and float; for string ``min``/``max``
    bound the length. ``members`` are a struct's fields, in template order.
    """

    id: str
    name: str
    kind: Kind
    mapping: Mapping[int, str] = field(default_factory=dict)
    min: Decimal | None = None
    max: Decimal | None = None
    step: Decimal | None = None
    start: Decimal | None = None
    unit: str = ""
    members: tuple[TemplateField, ...] = ()

    @property
    def max_length(self) -> int | None:
        """The longest string accepted (string fields only)."""
        return int(self.max) if self.kind == "string" and self.max is not None else None

    def member(self, member_id: str) -> TemplateField | None:
        """The struct member called ``member_id``, or None."""
        for member in self.members:
            if member.id == member_id:
                return member
        return None

    def check(self, value: Any, name: str | None = None) -> Any:
        """Check ``value`` against this field and return it in canonical form.

        bool: 0/1 or JSON true/false -> 0/1; int: an integral number within [min, max] on the
        step grid counted from min; float: a finite number within [min, max] whose shortest
        repr is exactly on that grid (``(Decimal(repr(v)) - min) / step`` integral; a float
        step of 0 means no grid); enum: an integer key of ``mapping``; string: length within
        [min, max]; timestamp: a non-negative integer (seconds or milliseconds); struct: an
        object of known members, each checked. Raises `TemplateValueError` naming ``name``
        (default: this field's id).
        """
        label = self.id if name is None else name
        kind = self.kind
        if kind == "bool":
            if isinstance(value, bool):
                return int(value)
            if isinstance(value, int) and value in (0, 1):
                return value
            raise TemplateValueError(label, f"expected 0 or 1, got {value!r}")
        if kind == "int":
            return self._check_int(value, label)
        if kind == "float":
            return self._check_float(value, label)
        if kind == "enum":
            if isinstance(value, int) and not isinstance(value, bool) and value in self.mapping:
                return value
            keys = ", ".join(str(key) for key in self.mapping)
            raise TemplateValueError(
                label, f"unknown enum value {value!r} (expected one of {keys})"
            )
        if kind == "string":
            if not isinstance(value, str):
                raise TemplateValueError(label, f"expected a string, got {value!r}")
            low = 0 if self.min is None else int(self.min)
            high = DEFAULT_STRING_MAX if self.max is None else int(self.max)
            if len(value) > high:
                raise TemplateValueError(
                    label, f"string of {len(value)} characters is longer than max {high}"
                )
            if len(value) < low:
                raise TemplateValueError(
                    label, f"string of {len(value)} characters is shorter than min {low}"
                )
            return value
        if kind == "timestamp":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise TemplateValueError(
                    label, f"expected a non-negative integer timestamp, got {value!r}"
                )
            return value
        return self._check_struct(value, label)

    def _number(self, value: Any, label: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TemplateValueError(label, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TemplateValueError(label, f"expected a finite number, got {value!r}")
        number = _decimal(value)
        if self.min is not None and number < self.min:
            raise TemplateValueError(label, f"{value!r} is below min {_plain(self.min)}")
        if self.max is not None and number > self.max:
            raise TemplateValueError(label, f"{value!r} is above max {_plain(self.max)}")
        return number

    @functools.cached_property
    def _int_grid(self) -> tuple[int | None, int | None, int] | None:
        """``(min, max, step)`` as ints (step 0: no grid) when every limit is integral, so an
        int value is checked without Decimal; None otherwise."""
        low, high = _integral_int(self.min), _integral_int(self.max)
        if (self.min is not None and low is None) or (self.max is not None and high is None):
            return None
        step = self.step
        if step is None or step <= 0 or low is None:
            return low, high, 0
        whole = _integral_int(step)
        return None if whole is None else (low, high, whole)

    def _check_int(self, value: Any, label: str) -> int:
        grid = self._int_grid
        if grid is not None and type(value) is int:  # the common case, exactly as below
            low, high, step = grid
            if (
                (low is None or value >= low)
                and (high is None or value <= high)
                and (not step or (value - low) % step == 0)  # type: ignore[operator]
            ):
                return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, float):
            raise TemplateValueError(label, f"expected an integer, got {value!r}")
        number = self._number(value, label)
        self._check_step(number, value, label)
        return int(number)

    def _check_float(self, value: Any, label: str) -> int | float:
        self._check_step(self._number(value, label), value, label)
        result: int | float = value
        return result

    def _check_step(self, number: Decimal, value: Any, label: str) -> None:
        """Refuse ``number`` (the exact decimal of ``value``) when it is off the step grid.

        The grid is ``min + k * step`` for integral k; a field without a positive step has none.
        The remainder is taken in `_EXACT`, which raises rather than rounds; when it does, over
        `Fraction`, so no Decimal context precision can round it either way.
        """
        step, base = self.step, self.min
        if step is None or step <= 0 or base is None:
            return
        try:  # exact or raising (see _EXACT): cheaper than Fraction for every value
            if not _EXACT.remainder(_EXACT.subtract(number, base), step):
                return
            off_grid = True
        except ArithmeticError:
            off_grid = (Fraction(number) - Fraction(base)) / Fraction(step) % 1 != 0
        if off_grid:
            raise TemplateValueError(
                label, f"{value!r} is not on the step {_plain(step)} grid from {_plain(base)}"
            )

    def _check_struct(self, value: Any, label: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise TemplateValueError(label, f"expected an object, got {value!r}")
        checked: dict[str, Any] = {}
        for key, member_value in value.items():
            member = self.member(key) if isinstance(key, str) else None
            if member is None:
                raise TemplateValueError(f"{label}.{key}", "unknown struct member")
            checked[key] = member.check(member_value, f"{label}.{key}")
        return checked


@dataclass(frozen=True)
class TemplateProperty(TemplateField):
    """A property of the template: a field with a ``mode`` (``r`` read-only, ``rw`` writable)."""

    mode: Literal["r", "rw"] = "rw"
    required: bool = False
    desc: str = ""

    @property
    def writable(self) -> bool:
        """True for ``rw`` properties, the only ones a control may set."""
        return self.mode == "rw"


@dataclass(frozen=True)
class TemplateEvent:
    """An event a device may post: ``type`` is info, alert or fault."""

    id: str
    name: str
    type: str
    params: Mapping[str, TemplateField]
    desc: str = ""


@dataclass(frozen=True)
class TemplateAction:
    """An action the cloud may call on a device, with its input and output parameters."""

    id: str
    name: str
    input: Mapping[str, TemplateField]
    output: Mapping[str, TemplateField]
    desc: str = ""


def _check_params(
    fields: Mapping[str, TemplateField], params: Any, what: str, label: str
) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise TemplateValueError(label, f"expected an object, got {params!r}")
    checked: dict[str, Any] = {}
    for key, value in params.items():
        slot = fields.get(key) if isinstance(key, str) else None
        if slot is None:
            raise TemplateValueError(str(key), f"unknown {what}")
        checked[key] = slot.check(value)
    return checked


@dataclass(frozen=True)
class DataTemplate:
    """A validated data template; build it with `parse_data_template`.

    ``properties``, ``events`` and ``actions`` are keyed by id, in template order. ``source`` is
    a private copy of the JSON object it was parsed from, served back as imported; do not mutate.
    """

    product_id: str
    category_id: str
    version: str
    properties: Mapping[str, TemplateProperty]
    events: Mapping[str, TemplateEvent]
    actions: Mapping[str, TemplateAction]
    source: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def check_report(self, params: Any) -> dict[str, Any]:
        """Check a device report's ``params``; returns the values in canonical form.

        Raises `TemplateValueError` for a non-object (name ``params``), an unknown property or a
        value that does not fit its property; nothing is returned for a partially good report.
        """
        return _check_params(self.properties, params, "property", "params")

    def check_control(self, params: Any) -> dict[str, Any]:
        """Check the properties to write to a device; like `check_report`, and also refuses an
        empty object (name ``params``) and a read-only property (named)."""
        checked = self.check_report(params)
        if not checked:
            raise TemplateValueError("params", "no property to control")
        for key in checked:
            if not self.properties[key].writable:
                raise TemplateValueError(key, "property is read-only")
        return checked

    def check_event(self, event_id: Any, params: Any) -> dict[str, Any]:
        """Check a posted event; raises `TemplateValueError` (name ``eventId``) for an unknown
        event, or naming the parameter that is unknown or does not fit."""
        event = self.events.get(event_id) if isinstance(event_id, str) else None
        if event is None:
            raise TemplateValueError("eventId", f"unknown event {event_id!r}")
        return _check_params(event.params, params, "event parameter", "params")

    def check_action_input(self, action_id: Any, params: Any) -> dict[str, Any]:
        """Check the input of an action call; raises `TemplateValueError` (name ``actionId``)
        for an unknown action, or naming the parameter that is unknown or does not fit."""
        action = self._action(action_id)
        return _check_params(action.input, params, "action input", "params")

    def check_action_output(self, action_id: Any, response: Any) -> dict[str, Any]:
        """Check a device's ``action_reply`` response against the action's output parameters."""
        action = self._action(action_id)
        return _check_params(action.output, response, "action output", "response")

    def _action(self, action_id: Any) -> TemplateAction:
        action = self.actions.get(action_id) if isinstance(action_id, str) else None
        if action is None:
            raise TemplateValueError("actionId", f"unknown action {action_id!r}")
        return action


def is_data_template(doc: Any) -> bool:
    """True when ``doc`` looks like a data template (top-level ``profile`` and ``properties``)
    rather than a Gizwits datapoint JSON; says nothing about its validity."""
    return isinstance(doc, Mapping) and "profile" in doc and "properties" in doc


def load_data_template(text: str | bytes) -> DataTemplate:
    """Parse data-template JSON text; raises `TemplateDefinitionError` for bad JSON or content."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TemplateDefinitionError("", f"not valid JSON: {exc}") from exc
    return parse_data_template(doc)


def parse_data_template(doc: Any) -> DataTemplate:
    """Validate a data-template JSON object and build a `DataTemplate`.

    Raises `TemplateDefinitionError` naming the JSON path for: a missing or mistyped field, a
    ``profile.ProductId`` that is not exactly 10 characters ``[A-Z0-9]``, an unknown
    ``define.type``, ``mode`` or event ``type``, a limit that is not a number (or numeric
    string), ``min > max``, a ``start`` outside [min, max], an int limit or step that is not an
    integer, a step <= 0, a ``mapping`` key that is not an integer string, duplicate labels,
    a struct without ``specs`` or nested in a struct, and duplicate ids.
    """
    if not isinstance(doc, Mapping):
        raise TemplateDefinitionError("", "a data template must be a JSON object")
    version = doc.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        version = str(version)
    if not isinstance(version, str):
        raise TemplateDefinitionError("version", "missing or not a string")
    profile = doc.get("profile")
    if not isinstance(profile, Mapping):
        raise TemplateDefinitionError("profile", "missing or not an object")
    product_id = profile.get("ProductId")
    if not isinstance(product_id, str) or not PRODUCT_ID_RE.fullmatch(product_id):
        raise TemplateDefinitionError(
            "profile.ProductId", f"must be exactly 10 characters A-Z 0-9, got {product_id!r}"
        )
    category = profile.get("CategoryId", "")
    if isinstance(category, int) and not isinstance(category, bool):
        category = str(category)
    if not isinstance(category, str):
        raise TemplateDefinitionError("profile.CategoryId", "must be a string or an integer")

    properties: dict[str, TemplateProperty] = {}
    for index, raw in enumerate(_list(doc, "properties", "properties")):
        prop = _parse_property(raw, f"properties[{index}]")
        _unique(properties, prop.id, f"properties[{index}].id")
        properties[prop.id] = prop
    events: dict[str, TemplateEvent] = {}
    for index, raw in enumerate(_list(doc, "events", "events", optional=True)):
        event = _parse_event(raw, f"events[{index}]")
        _unique(events, event.id, f"events[{index}].id")
        events[event.id] = event
    actions: dict[str, TemplateAction] = {}
    for index, raw in enumerate(_list(doc, "actions", "actions", optional=True)):
        action = _parse_action(raw, f"actions[{index}]")
        _unique(actions, action.id, f"actions[{index}].id")
        actions[action.id] = action
    return DataTemplate(
        product_id=product_id,
        category_id=category,
        version=version,
        properties=properties,
        events=events,
        actions=actions,
        source=copy.deepcopy(dict(doc)),
    )


def _unique(seen: Mapping[str, object], key: str, path: str) -> None:
    if key in seen:
        raise TemplateDefinitionError(path, f"duplicate id {key!r}")


def _list(obj: Mapping[str, Any], key: str, path: str, *, optional: bool = False) -> list[Any]:
    value = obj.get(key)
    if value is None and optional:
        return []
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise TemplateDefinitionError(path, "missing or not a list")
    return list(value)


def _object(raw: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise TemplateDefinitionError(path, "must be an object")
    return raw


def _ident(obj: Mapping[str, Any], path: str) -> tuple[str, str, str]:
    ident = obj.get("id")
    if not isinstance(ident, str) or not _ID_RE.fullmatch(ident):
        raise TemplateDefinitionError(
            f"{path}.id", f"must be 1-64 letters, digits or '_', got {ident!r}"
        )
    name = obj.get("name", ident)
    if not isinstance(name, str):
        raise TemplateDefinitionError(f"{path}.name", "must be a string")
    desc = obj.get("desc", "")
    if not isinstance(desc, str):
        raise TemplateDefinitionError(f"{path}.desc", "must be a string")
    return ident, name, desc


def _parse_property(raw: Any, path: str) -> TemplateProperty:
    obj = _object(raw, path)
    ident, name, desc = _ident(obj, path)
    mode = obj.get("mode")
    if mode not in ("r", "rw"):
        raise TemplateDefinitionError(f"{path}.mode", f"must be 'r' or 'rw', got {mode!r}")
    required = obj.get("required", False)
    if not isinstance(required, bool):
        raise TemplateDefinitionError(f"{path}.required", "must be true or false")
    spec = _parse_define(obj.get("define"), f"{path}.define", nested=False)
    slot = {f.name: getattr(spec, f.name) for f in dataclasses.fields(TemplateField)}
    return TemplateProperty(
        **{**slot, "id": ident, "name": name}, mode=mode, required=required, desc=desc
    )


def _parse_fields(obj: Mapping[str, Any], key: str, path: str) -> dict[str, TemplateField]:
    fields: dict[str, TemplateField] = {}
    for index, raw in enumerate(_list(obj, key, f"{path}.{key}", optional=True)):
        item_path = f"{path}.{key}[{index}]"
        item = _object(raw, item_path)
        ident, name, _ = _ident(item, item_path)
        _unique(fields, ident, f"{item_path}.id")
        spec = _parse_define(item.get("define"), f"{item_path}.define", nested=False)
        fields[ident] = _named(spec, ident, name)
    return fields


def _parse_event(raw: Any, path: str) -> TemplateEvent:
    obj = _object(raw, path)
    ident, name, desc = _ident(obj, path)
    event_type = obj.get("type")
    if event_type not in EVENT_TYPES:
        raise TemplateDefinitionError(
            f"{path}.type", f"must be info, alert or fault, got {event_type!r}"
        )
    params = _parse_fields(obj, "params", path)
    return TemplateEvent(id=ident, name=name, type=event_type, params=params, desc=desc)


def _parse_action(raw: Any, path: str) -> TemplateAction:
    obj = _object(raw, path)
    ident, name, desc = _ident(obj, path)
    return TemplateAction(
        id=ident,
        name=name,
        input=_parse_fields(obj, "input", path),
        output=_parse_fields(obj, "output", path),
        desc=desc,
    )


def _named(spec: TemplateField, ident: str, name: str) -> TemplateField:
    return dataclasses.replace(spec, id=ident, name=name)


def _limit(define: Mapping[str, Any], key: str, path: str) -> Decimal | None:
    value = define.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise TemplateDefinitionError(f"{path}.{key}", f"must be a number, got {value!r}")
    if isinstance(value, int | float):
        if not (isinstance(value, int) or math.isfinite(value)):
            raise TemplateDefinitionError(f"{path}.{key}", f"must be finite, got {value!r}")
        return _decimal(value)
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite():
            return number
    raise TemplateDefinitionError(f"{path}.{key}", f"must be a number, got {value!r}")


def _integral(number: Decimal | None, path: str) -> None:
    if number is not None and number != number.to_integral_value():
        raise TemplateDefinitionError(path, f"must be an integer, got {number}")


def _parse_define(raw: Any, path: str, *, nested: bool) -> TemplateField:
    """Parse a ``define`` (or a struct member's ``dataType``) into an unnamed field."""
    define = _object(raw, path)
    kind = define.get("type")
    if kind not in KINDS:
        raise TemplateDefinitionError(
            f"{path}.type",
            f"unknown type {kind!r} (expected bool, int, float, enum, string, timestamp or struct)",
        )
    if kind in ("bool", "enum"):
        return TemplateField(id="", name="", kind=kind, mapping=_mapping(define, kind, path))
    if kind in ("int", "float"):
        low, high = _limit(define, "min", path), _limit(define, "max", path)
        step, start = _limit(define, "step", path), _limit(define, "start", path)
        if low is None:
            raise TemplateDefinitionError(f"{path}.min", "missing")
        if high is None:
            raise TemplateDefinitionError(f"{path}.max", "missing")
        if kind == "int":
            for key, value in (("min", low), ("max", high), ("step", step), ("start", start)):
                _integral(value, f"{path}.{key}")
        if low > high:
            raise TemplateDefinitionError(f"{path}.max", f"max {high} is below min {low}")
        if step is not None and (step < 0 or (kind == "int" and step == 0)):
            raise TemplateDefinitionError(f"{path}.step", f"must be positive, got {step}")
        if start is not None and not low <= start <= high:
            raise TemplateDefinitionError(
                f"{path}.start", f"start {start} is outside [{low}, {high}]"
            )
        unit = define.get("unit", "")
        if not isinstance(unit, str):
            raise TemplateDefinitionError(f"{path}.unit", "must be a string")
        return TemplateField(
            id="", name="", kind=kind, min=low, max=high, step=step, start=start, unit=unit
        )
    if kind == "string":
        low, high = _limit(define, "min", path), _limit(define, "max", path)
        _integral(low, f"{path}.min")
        _integral(high, f"{path}.max")
        low = Decimal(0) if low is None else low
        high = Decimal(DEFAULT_STRING_MAX) if high is None else high
        if low < 0:
            raise TemplateDefinitionError(f"{path}.min", f"must not be negative, got {low}")
        if low > high:
            raise TemplateDefinitionError(f"{path}.max", f"max {high} is below min {low}")
        return TemplateField(id="", name="", kind=kind, min=low, max=high)
    if kind == "timestamp":
        return TemplateField(id="", name="", kind=kind)
    if nested:
        raise TemplateDefinitionError(f"{path}.type", "a struct cannot be nested in a struct")
    members: list[TemplateField] = []
    seen: dict[str, TemplateField] = {}
    for index, raw_member in enumerate(_list(define, "specs", f"{path}.specs")):
        member_path = f"{path}.specs[{index}]"
        member = _object(raw_member, member_path)
        ident, name, _ = _ident(member, member_path)
        _unique(seen, ident, f"{member_path}.id")
        spec = _parse_define(member.get("dataType"), f"{member_path}.dataType", nested=True)
        seen[ident] = _named(spec, ident, name)
        members.append(seen[ident])
    if not members:
        raise TemplateDefinitionError(f"{path}.specs", "a struct needs at least one member")
    return TemplateField(id="", name="", kind="struct", members=tuple(members))


def _mapping(define: Mapping[str, Any], kind: str, path: str) -> dict[int, str]:
    raw = define.get("mapping")
    if raw is None and kind == "bool":
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise TemplateDefinitionError(f"{path}.mapping", "missing or not a non-empty object")
    mapping: dict[int, str] = {}
    for key, label in raw.items():
        if not isinstance(key, str) or not _INT_KEY_RE.fullmatch(key):
            raise TemplateDefinitionError(
                f"{path}.mapping", f"key {key!r} is not an integer string"
            )
        if kind == "bool" and key not in ("0", "1"):
            raise TemplateDefinitionError(f"{path}.mapping", f"bool key {key!r} is not 0 or 1")
        if not isinstance(label, str):
            raise TemplateDefinitionError(f"{path}.mapping.{key}", "label must be a string")
        if label in mapping.values():
            raise TemplateDefinitionError(f"{path}.mapping.{key}", f"duplicate label {label!r}")
        mapping[int(key)] = label
    return mapping
