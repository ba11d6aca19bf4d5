"""``/app/devdata/{did}``: the last values a device reported, its history and aggregates."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Final, Literal

import msgspec
from litestar import Request, Response, get, route

from iotcloud.api.gizwits.accounts import current_app, current_user, services
from iotcloud.api.gizwits.app_devices import EPOCH, MAX_UNIX_SECONDS, UnixSeconds, unix_seconds
from iotcloud.api.gizwits.query import page_links
from iotcloud.api.gizwits.wire import json_object, json_response
from iotcloud.api.openapi.declare import DEVICE_ERRORS, Decorator, declare, declared_query
from iotcloud.domain.clock import iso_utc
from iotcloud.errors import FormInvalid
from iotcloud.services.telemetry import HISTORY_LIMIT_MAX, Aggregator, BucketUnit

AnyRequest = Request[Any, Any, Any]

UnixMillis = Annotated[int, msgspec.Meta(ge=0, le=MAX_UNIX_SECONDS * 1000 + 999)]


class _Query(msgspec.Struct, forbid_unknown_fields=True):
    pass


class HistoryQuery(_Query):
    start_ts: UnixSeconds | None = None
    end_ts: UnixSeconds | None = None
    attr: str | None = None
    # products have one entity; old SDKs send entity=0
    entity: Annotated[int, msgspec.Meta(ge=0, le=0)] = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=HISTORY_LIMIT_MAX)] = 20
    skip: Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)] = 0
    sort: Literal["asc", "desc"] = "desc"


class AggregateQuery(_Query):
    start_ts: UnixMillis
    end_ts: UnixMillis
    attrs: str
    aggregator: Aggregator
    unit: BucketUnit


class Latest(msgspec.Struct):
    did: str
    updated_at: int
    attr: dict[str, Any]


class PageMeta(msgspec.Struct):
    total: int
    limit: int
    skip: int
    previous: str | None
    next: str | None


class Report(msgspec.Struct):
    ts: int
    attrs: dict[str, Any]


class History(msgspec.Struct):
    meta: PageMeta
    objects: list[Report]


class AggregateEcho(msgspec.Struct):
    aggregator: Aggregator
    start_ts: int
    end_ts: int
    attrs: str
    unit: Literal["HOURS", "DAYS", "WEEKS", "MONTHS"]


class Bucket(msgspec.Struct):
    datatime: str
    did: str
    uid: str
    product_key: str
    attrs: dict[str, float | int | None]


class Aggregates(msgspec.Struct):
    query: AggregateEcho
    data: list[Bucket]


AGGREGATE_BODY: Final = {
    "type": "object",
    "description": "The query's fields in a JSON body instead (PUT only); each field in one place",
    "additionalProperties": {
        "anyOf": [
            {"type": "string"},
            {"type": "integer"},
            {"type": "array", "items": {"type": "string"}},
        ]
    },
}


def _declare(summary: str, security: tuple[str, ...] = ("app", "user"), **kwargs: Any) -> Decorator:
    return declare(
        summary, tag="gizwits device data", security=security, errors=DEVICE_ERRORS, **kwargs
    )


@_declare("The latest values", ("app",), responses={200: Latest})
@get("/app/devdata/{did:str}/latest")
async def latest(request: AnyRequest, did: str) -> Response[bytes]:
    """Needs only ``X-Gizwits-Application-Id`` (as the Open API's swagger says): anyone who
    knows an appid and a did reads the values. With ``IOTCLOUD_DEVDATA_REQUIRE_BINDING`` it
    also needs the token of a user bound to the device (9004/9006 for the token, 9014/9017 for
    the device), like every other device read.

    ``updated_at`` is Unix seconds (0 before the first report); ``attr`` holds display values:
    enums as labels, bools as true/false, numbers scaled, binary as hex. A data-template
    (Tencent) device's values are shown the same way (its enum integers as labels, 0/1 as
    false/true).
    """
    svc = services(request)
    if svc.settings.devdata_require_binding:
        _, user = await current_user(request)
        await svc.bindings.require_bound(user, did)
    else:
        await current_app(request)
    state = await svc.telemetry.latest(did)
    attrs = await svc.control.in_gizwits_form(did, state.attrs)
    updated = int(state.updated_at.timestamp()) if state.updated_at else 0
    return json_response({"did": state.did, "updated_at": updated, "attr": attrs})


@_declare("Reported history", query=HistoryQuery, responses={200: History})
@get("/app/devdata/{did:str}")
async def history(request: AnyRequest, did: str) -> Response[bytes]:
    """The device's reports: ``?start_ts&end_ts`` (Unix seconds, both included, either may be
    left out), ``attr`` (only reports carrying it, only its value), ``limit`` (1-1000, 20),
    ``skip``, ``sort`` (``desc`` newest first, the default, or ``asc``). Values are shown as
    ``/latest`` shows them (a data-template device's enum integers as labels, 0/1 as
    false/true); aggregates stay numeric.

    ``{"meta": {total, limit, skip, previous, next}, "objects": [{"ts", "attrs"}]}``.
    """
    _, user = await current_user(request)
    form = declared_query(request, HistoryQuery)
    page = await services(request).telemetry.history(
        user,
        did,
        start=unix_seconds(form.start_ts) if form.start_ts is not None else None,
        end=unix_seconds(form.end_ts) if form.end_ts is not None else None,
        attr=form.attr,
        limit=form.limit,
        skip=form.skip,
        descending=form.sort == "desc",
    )
    previous, following = page_links(request, page.total, form.limit, form.skip)
    return json_response(
        {
            "meta": {
                "total": page.total,
                "limit": form.limit,
                "skip": form.skip,
                "previous": previous,
                "next": following,
            },
            "objects": [
                {"ts": int(entry.at.timestamp()), "attrs": entry.attrs} for entry in page.entries
            ],
        }
    )


@_declare(
    "Aggregates per time bucket",
    query=AggregateQuery,
    body=AGGREGATE_BODY,
    body_required=False,
    responses={200: Aggregates},
)
@route("/app/devdata/{did:str}/agg_data", http_method=["GET", "PUT"])
async def aggregate(request: AnyRequest, did: str) -> Response[bytes]:
    """``?start_ts&end_ts`` (Unix milliseconds, both included) ``&attrs=a,b``
    ``&aggregator=sum|avg|max|min&unit=hours|days|weeks|months``: one value per numeric attr
    and bucket (UTC; weeks start on Monday). GET as the swagger has it, PUT as the docs say;
    a PUT may carry the fields in a JSON body instead.

    ``{"query": {aggregator, start_ts, end_ts, attrs, unit}, "data": [{"datatime", "did",
    "uid", "product_key", "attrs"}]}``, buckets oldest first, only those with data.
    """
    _, user = await current_user(request)
    body = await json_object(request, allow_empty=True) if request.method == "PUT" else None
    form = declared_query(request, AggregateQuery, body)
    attrs = [name.strip() for name in form.attrs.split(",")]
    if not all(attrs):
        raise FormInvalid("attrs: an empty name in the list")
    result = await services(request).telemetry.aggregate(
        user,
        did,
        start=EPOCH + timedelta(milliseconds=form.start_ts),
        end=EPOCH + timedelta(milliseconds=form.end_ts),
        attrs=attrs,
        aggregator=form.aggregator,
        unit=form.unit,
    )
    return json_response(
        {
            "query": {
                "aggregator": form.aggregator.value,
                "start_ts": form.start_ts,
                "end_ts": form.end_ts,
                "attrs": ",".join(attrs),
                "unit": form.unit.value.upper(),
            },
            "data": [
                {
                    "datatime": iso_utc(bucket.start),
                    "did": result.did,
                    "uid": user.uid,
                    "product_key": result.product_key,
                    "attrs": bucket.values,
                }
                for bucket in result.buckets
            ],
        }
    )


ROUTES = [latest, history, aggregate]
