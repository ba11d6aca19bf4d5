"""The JSON shapes of products and devices for operators (the operator API and ``--json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from iotcloud.codecs.datapoints import ProductDefinition
from iotcloud.codecs.template import DataTemplate
from iotcloud.domain.clock import iso_utc
from iotcloud.services.devices import Device, DeviceCredentials, NamedDeviceCredentials
from iotcloud.services.products import Product, ProductCredentials

# -- the shapes, for the OpenAPI document (`iotcloud.api.openapi`) --------------------------


class ProductCredentialsShape(msgspec.Struct):
    product_key: str
    product_secret: str


class AttrShape(msgspec.Struct):
    id: int
    name: str
    display_name: str
    type: str
    data_type: str


class PropertyShape(msgspec.Struct):
    id: str
    name: str
    type: str
    mode: str


class EventShape(msgspec.Struct):
    id: str
    name: str
    type: str


class ActionShape(msgspec.Struct):
    id: str
    name: str


class ProductShape(msgspec.Struct):
    """A product; shown alone, also its secret and data points (``attrs`` for a Gizwits
    product, ``properties``/``events``/``actions`` for a data template)."""

    product_key: str
    name: str
    protocol_type: str
    registration: str
    created_at: str | None
    updated_at: str | None
    product_secret: str | msgspec.UnsetType = msgspec.UNSET
    attrs: list[AttrShape] | msgspec.UnsetType = msgspec.UNSET
    properties: list[PropertyShape] | msgspec.UnsetType = msgspec.UNSET
    events: list[EventShape] | msgspec.UnsetType = msgspec.UNSET
    actions: list[ActionShape] | msgspec.UnsetType = msgspec.UNSET


class DeviceCredentialsShape(msgspec.Struct):
    did: str
    passcode: str
    mac: str


class NamedDeviceCredentialsShape(msgspec.Struct):
    did: str
    device_name: str
    psk: str


class DeviceShape(msgspec.Struct):
    did: str
    product_key: str
    name: str | None
    mac: str
    passcode: str
    is_disabled: bool
    is_online: bool
    origin: str
    owner_since: str | None
    last_online_at: str | None
    last_offline_at: str | None
    mcu_soft_version: str | None
    mcu_hard_version: str | None
    wifi_soft_version: str | None
    wifi_hard_version: str | None
    created_at: str | None
    updated_at: str | None
    psk: str | msgspec.UnsetType = msgspec.UNSET


def _time(instant: datetime | None) -> str | None:
    return iso_utc(instant) if instant is not None else None


def product_credentials_view(creds: ProductCredentials) -> dict[str, Any]:
    """``{"product_key", "product_secret"}``."""
    return {"product_key": creds.product_key, "product_secret": creds.product_secret}


def product_view(
    product: Product,
    definition: ProductDefinition | None = None,
    template: DataTemplate | None = None,
) -> dict[str, Any]:
    """A product; with its ``definition`` (Gizwits) or ``template`` (data template), also the
    secret and a summary of its data points (``attrs``, or ``properties``/``events``/
    ``actions``)."""
    view: dict[str, Any] = {
        "product_key": product.product_key,
        "name": product.name,
        "protocol_type": product.protocol_type,
        "registration": product.registration,
        "created_at": _time(product.created_at),
        "updated_at": _time(product.updated_at),
    }
    if definition is not None:
        view["product_secret"] = product.product_secret
        view["attrs"] = [
            {
                "id": attr.id,
                "name": attr.name,
                "display_name": attr.display_name,
                "type": attr.type.value,
                "data_type": attr.data_type.value,
            }
            for attr in definition.attrs
        ]
    if template is not None:
        view["product_secret"] = product.product_secret
        view["properties"] = [
            {"id": prop.id, "name": prop.name, "type": prop.kind, "mode": prop.mode}
            for prop in template.properties.values()
        ]
        view["events"] = [
            {"id": event.id, "name": event.name, "type": event.type}
            for event in template.events.values()
        ]
        view["actions"] = [
            {"id": action.id, "name": action.name} for action in template.actions.values()
        ]
    return view


def device_credentials_view(creds: DeviceCredentials) -> dict[str, Any]:
    """``{"did", "passcode", "mac"}``."""
    return {"did": creds.did, "passcode": creds.passcode, "mac": creds.mac}


def named_device_credentials_view(creds: NamedDeviceCredentials) -> dict[str, Any]:
    """``{"did", "device_name", "psk"}`` of a data-template device."""
    return {"did": creds.did, "device_name": creds.device_name, "psk": creds.psk}


def device_view(device: Device) -> dict[str, Any]:
    """A device; a data-template device (``mac`` "") also shows its ``psk``, which the operator
    flashes into it."""
    view = {
        "did": device.did,
        "product_key": device.product_key,
        "name": device.name,
        "mac": device.mac,
        "passcode": device.passcode,
        "is_disabled": device.is_disabled,
        "is_online": device.is_online,
        "origin": device.origin,
        "owner_since": _time(device.owner_since),
        "last_online_at": _time(device.last_online_at),
        "last_offline_at": _time(device.last_offline_at),
        "mcu_soft_version": device.mcu_soft_version,
        "mcu_hard_version": device.mcu_hard_version,
        "wifi_soft_version": device.wifi_soft_version,
        "wifi_hard_version": device.wifi_hard_version,
        "created_at": _time(device.created_at),
        "updated_at": _time(device.updated_at),
    }
    if device.psk is not None:
        view["psk"] = device.psk
    return view
