"""The JSON shapes of products and devices for operators (the operator API and ``--json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from iotcloud.codecs.datapoints import ProductDefinition
from iotcloud.domain.clock import iso_utc
from iotcloud.services.devices import Device, DeviceCredentials
from iotcloud.services.products import Product, ProductCredentials


def _time(instant: datetime | None) -> str | None:
    return iso_utc(instant) if instant is not None else None


def product_credentials_view(creds: ProductCredentials) -> dict[str, Any]:
    """``{"product_key", "product_secret"}``."""
    return {"product_key": creds.product_key, "product_secret": creds.product_secret}


def product_view(product: Product, definition: ProductDefinition | None = None) -> dict[str, Any]:
    """A product; with its ``definition``, also the secret and a summary of its data points."""
    view: dict[str, Any] = {
        "product_key": product.product_key,
        "name": product.name,
        "protocol_type": product.protocol_type,
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
    return view


def device_credentials_view(creds: DeviceCredentials) -> dict[str, Any]:
    """``{"did", "passcode", "mac"}``."""
    return {"did": creds.did, "passcode": creds.passcode, "mac": creds.mac}


def device_view(device: Device) -> dict[str, Any]:
    return {
        "did": device.did,
        "product_key": device.product_key,
        "mac": device.mac,
        "passcode": device.passcode,
        "is_disabled": device.is_disabled,
        "is_online": device.is_online,
        "last_online_at": _time(device.last_online_at),
        "last_offline_at": _time(device.last_offline_at),
        "mcu_soft_version": device.mcu_soft_version,
        "mcu_hard_version": device.mcu_hard_version,
        "wifi_soft_version": device.wifi_soft_version,
        "wifi_hard_version": device.wifi_hard_version,
        "created_at": _time(device.created_at),
        "updated_at": _time(device.updated_at),
    }
