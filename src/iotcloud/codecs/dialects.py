"""Value conversion between the Gizwits and Tencent dialects (pure).

Each device's values are stored in its own dialect's form: Gizwits display values (bool
true/false, enum labels) for P0 devices, Tencent values (bool 0/1, enum integer keys) for
data-template devices. These functions convert at the API edge of the other dialect, so a
Gizwits app sees a Tencent device's enum as its label and a Tencent app sees a Gizwits device's
bool as 0/1. Numbers, strings and timestamps are the same in both and pass unchanged; Gizwits
binary values (hex strings) pass unchanged too, as Tencent has no binary type.

Conversion only translates representations; range checks remain the job of
`DataTemplate.check_control` / the P0 codec, which the callers run on the converted values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from iotcloud.codecs.datapoints import DataType, ProductDefinition
from iotcloud.codecs.errors import DatapointError
from iotcloud.codecs.template import DataTemplate, TemplateField, TemplateValueError

__all__ = [
    "datapoints_to_template",
    "gizwits_to_template",
    "template_to_datapoints",
    "template_to_gizwits",
]


def _field_to_gizwits(slot: TemplateField, value: Any) -> Any:
    if slot.kind == "bool" and isinstance(value, int):
        return bool(value)
    if slot.kind == "enum" and isinstance(value, int) and not isinstance(value, bool):
        return slot.mapping.get(value, value)
    if slot.kind == "struct" and isinstance(value, Mapping):
        converted: dict[str, Any] = {}
        for key, member_value in value.items():
            member = slot.member(key)
            converted[key] = (
                member_value if member is None else _field_to_gizwits(member, member_value)
            )
        return converted
    return value


def template_to_gizwits(template: DataTemplate, values: Mapping[str, Any]) -> dict[str, Any]:
    """Tencent-form values of a data-template device -> Gizwits display form.

    bool 0/1 -> false/true, enum integer -> its label (struct members likewise); everything else
    unchanged. A value the template does not know (an enum key without a label, a property no
    longer in the template) is passed through as stored: reading never fails.
    """
    result: dict[str, Any] = {}
    for key, value in values.items():
        slot = template.properties.get(key)
        result[key] = value if slot is None else _field_to_gizwits(slot, value)
    return result


def _field_to_template(slot: TemplateField, value: Any, name: str) -> Any:
    if slot.kind == "bool":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int) and value in (0, 1):
            return value
        raise TemplateValueError(name, f"expected true or false, got {value!r}")
    if slot.kind == "enum":
        if isinstance(value, str):
            for key, label in slot.mapping.items():
                if label == value:
                    return key
            labels = ", ".join(slot.mapping.values())
            raise TemplateValueError(
                name, f"unknown enum label {value!r} (expected one of {labels})"
            )
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TemplateValueError(name, f"expected an enum label, got {value!r}")
    if slot.kind == "struct":
        if not isinstance(value, Mapping):
            raise TemplateValueError(name, f"expected an object, got {value!r}")
        converted: dict[str, Any] = {}
        for key, member_value in value.items():
            member = slot.member(key) if isinstance(key, str) else None
            if member is None:
                raise TemplateValueError(f"{name}.{key}", "unknown struct member")
            converted[key] = _field_to_template(member, member_value, f"{name}.{key}")
        return converted
    return value


def gizwits_to_template(template: DataTemplate, values: Mapping[str, Any]) -> dict[str, Any]:
    """Gizwits-form values (as a Gizwits app sends them) -> Tencent form for a template device.

    enum label -> its integer key (an integer is kept), true/false -> 1/0 (0/1 kept), numbers
    and strings kept. Raises `TemplateValueError` naming the property for an unknown property,
    an unknown enum label or a value of the wrong shape for a bool/enum/struct. Other checks
    (range, step, mode) are left to `DataTemplate.check_control`.
    """
    result: dict[str, Any] = {}
    for key, value in values.items():
        slot = template.properties.get(key)
        if slot is None:
            raise TemplateValueError(str(key), "unknown property")
        result[key] = _field_to_template(slot, value, key)
    return result


def datapoints_to_template(
    definition: ProductDefinition, values: Mapping[str, Any]
) -> dict[str, Any]:
    """Gizwits display values of a P0 device -> Tencent form (for a Tencent app reading it).

    bool -> 0/1, enum label -> its index; numbers and binary (hex strings) unchanged. Values of
    attrs the definition does not know pass through: reading never fails.
    """
    result: dict[str, Any] = {}
    for key, value in values.items():
        attr = definition.attr(key) if key in definition else None
        if attr is not None and attr.data_type is DataType.BOOL and isinstance(value, bool | int):
            result[key] = int(bool(value))
        elif attr is not None and attr.data_type is DataType.ENUM and isinstance(value, str):
            labels = attr.enum_labels
            result[key] = labels.index(value) if value in labels else value
        else:
            result[key] = value
    return result


def template_to_datapoints(
    definition: ProductDefinition, values: Mapping[str, Any]
) -> dict[str, Any]:
    """Tencent-form values (as a Tencent app sends them) -> Gizwits display values of a P0 device.

    0/1 (or true/false) -> false/true for bool attrs, integer index -> label for enum attrs;
    numbers and strings unchanged. Raises `DatapointError` naming the attr for an unknown attr,
    a bool that is not 0/1, or an enum index without a label. Range and mode checks are left to
    the P0 codec (`ControlService`).
    """
    result: dict[str, Any] = {}
    for key, value in values.items():
        attr = definition.attr(key)  # DatapointError("unknown attr") for a name it lacks
        if attr.data_type is DataType.BOOL:
            if isinstance(value, bool):
                result[key] = value
            elif isinstance(value, int) and value in (0, 1):
                result[key] = bool(value)
            else:
                raise DatapointError(key, f"expected 0 or 1, got {value!r}")
        elif (
            attr.data_type is DataType.ENUM
            and isinstance(value, int)
            and not isinstance(value, bool)
        ):
            if not 0 <= value < len(attr.enum_labels):
                raise DatapointError(
                    key, f"enum index {value} out of range 0..{len(attr.enum_labels) - 1}"
                )
            result[key] = attr.enum_labels[value]
        else:
            result[key] = value
    return result
