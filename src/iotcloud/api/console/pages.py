"""Console pages: the overview, products, apps, users and schedules (devices: `devices`).

Each handler reads the services the operator API and the CLI use and renders a template; a
form refused by a service is rendered again with the service's message next to the field it
names (`field_errors`). Secrets (a product's, an app's) appear only on the page that creates or
rotates them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any, Final

from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from iotcloud.api.admin.products import MAX_DEFINITION_BYTES
from iotcloud.api.console.auth import (
    AnyRequest,
    checked_form,
    console,
    current,
    redirect,
    services,
)
from iotcloud.api.console.render import page
from iotcloud.errors import FormInvalid, IotCloudError

UPLOAD_OVERHEAD: Final = 64 * 1024
"""Room for a multipart body's headers and other fields around its file."""
_NUL: Final = re.compile(r"\x00|\\u0000", re.IGNORECASE)
_FIELD: Final = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\b")
REGISTRATION_POLICIES: Final = ("open", "signed", "preprovisioned")
NOTICES: Final[Mapping[str, str]] = {
    "signed-out": "Every session of this user was signed out.",
    "disabled": "The user is disabled: they cannot sign in, and their sessions ended.",
    "enabled": "The user is enabled again.",
    "device-disabled": "The device is disabled: it cannot connect or be commanded.",
    "device-enabled": "The device is enabled again.",
}


def render(
    request: AnyRequest, template: str, status_code: int = 200, **context: Any
) -> Response[Any]:
    """A console page with what every page needs (the CSRF token, the notice asked for)."""
    notice = context.pop("notice", None) or NOTICES.get(request.query_params.get("notice", ""))
    return page(template, status_code, csrf=current(request).csrf_token, notice=notice, **context)


def field_errors(
    exc: IotCloudError, fields: Iterable[str], fallback: str = "form"
) -> dict[str, str]:
    """``{field: message}`` for a refusal: the field its message starts with (the services'
    ``"name: why"`` convention) when that is one of ``fields``, else ``fallback``."""
    message = exc.detail or exc.message
    found = _FIELD.match(message)
    name = found.group("name") if found else None
    return {name if name in set(fields) else fallback: message}


# -- overview ------------------------------------------------------------------------------------


@get("/")
async def overview(request: AnyRequest) -> Response[Any]:
    return render(
        request, "overview.html", nav="overview", overview=await console(request).overview()
    )


# -- products ------------------------------------------------------------------------------------


async def _products_page(
    request: AnyRequest, status_code: int = 200, errors: Mapping[str, str] | None = None
) -> Response[Any]:
    products = await services(request).products.list()
    return render(
        request,
        "products.html",
        status_code,
        nav="products",
        products=products,
        errors=dict(errors or {}),
        policies=REGISTRATION_POLICIES,
        max_mib=MAX_DEFINITION_BYTES // (1024 * 1024),
    )


@get("/products")
async def products_page(request: AnyRequest) -> Response[Any]:
    return await _products_page(request)


@post("/products", request_max_body_size=MAX_DEFINITION_BYTES + UPLOAD_OVERHEAD, status_code=201)
async def import_product(request: AnyRequest) -> Response[Any]:
    """Multipart: ``file`` (a Gizwits datapoint JSON or a Tencent data template, at most
    `MAX_DEFINITION_BYTES`), ``registration``, ``replace``. The new product's key and secret
    (shown this once), or the form again with the reason next to the field."""
    too_large = f"file: the file is larger than {MAX_DEFINITION_BYTES // (1024 * 1024)} MiB"
    try:
        form = await checked_form(request)
    except RequestEntityTooLarge:
        return await _products_page(request, 413, {"file": too_large})
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return await _products_page(
            request, 400, {"file": "file: choose a datapoint or data template file"}
        )
    data = await upload.read()
    if len(data) > MAX_DEFINITION_BYTES:
        return await _products_page(request, 413, {"file": too_large})
    try:
        text = data.decode("utf-8")
        definition = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return await _products_page(
            request,
            400,
            {
                "file": f"file: {upload.filename} is not JSON (expected a Gizwits datapoint "
                "file or a Tencent data template)"
            },
        )
    if not isinstance(definition, dict):
        return await _products_page(request, 400, {"file": "file: expected a JSON object"})
    if _NUL.search(text):  # PostgreSQL stores no NUL characters
        return await _products_page(request, 400, {"file": "file: must not contain NUL characters"})
    registration = form.get("registration")
    try:
        creds = await services(request).products.import_definition(
            definition,
            replace=form.get("replace") in ("on", "true", "1"),
            registration=registration if isinstance(registration, str) and registration else None,
        )
    except FormInvalid as exc:
        return await _products_page(request, 400, field_errors(exc, ("registration",), "file"))
    product = await services(request).products.get(creds.product_key)
    return render(
        request,
        "product_created.html",
        201 if creds.created else 200,
        nav="products",
        product=product,
        product_secret=creds.product_secret,
        created=creds.created,
    )


@get("/products/{product_key:str}")
async def product_page(request: AnyRequest, product_key: str) -> Response[Any]:
    product = await services(request).products.get(product_key)
    points = await console(request).data_points(product_key)
    return render(request, "product.html", nav="products", product=product, points=points)


# -- apps ----------------------------------------------------------------------------------------


async def _apps_page(
    request: AnyRequest,
    status_code: int = 200,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, Any] | None = None,
) -> Response[Any]:
    return render(
        request,
        "apps.html",
        status_code,
        nav="apps",
        apps=await services(request).apps.list(),
        errors=dict(errors or {}),
        values=dict(values or {}),
    )


@get("/apps")
async def apps_page(request: AnyRequest) -> Response[Any]:
    return await _apps_page(request)


@post("/apps", status_code=201)
async def create_app(request: AnyRequest) -> Response[Any]:
    """Form ``name``: the new app's appid and appsecret (shown this once)."""
    form = await checked_form(request)
    name = form.get("name")
    if not isinstance(name, str) or not name.strip():
        return await _apps_page(request, 400, {"name": "name: must be 1 to 128 characters"}, form)
    try:
        creds = await services(request).apps.create(name)
    except FormInvalid as exc:
        return await _apps_page(request, 400, field_errors(exc, ("name",)), form)
    return render(
        request,
        "app_secret.html",
        201,
        nav="apps",
        appid=creds.appid,
        appsecret=creds.appsecret,
        name=name.strip(),
        rotated=False,
    )


@post("/apps/{appid:str}/rotate", status_code=200)
async def rotate_app_secret(request: AnyRequest, appid: str) -> Response[Any]:
    """A new secret for the app (shown this once); the old one stops working."""
    await checked_form(request)
    app = await services(request).apps.get(appid)
    creds = await services(request).apps.rotate_secret(appid)
    return render(
        request,
        "app_secret.html",
        nav="apps",
        appid=creds.appid,
        appsecret=creds.appsecret,
        name=app.name,
        rotated=True,
    )


# -- users ---------------------------------------------------------------------------------------


@get("/users")
async def users_page(request: AnyRequest) -> Response[Any]:
    query = request.query_params.get("q", "")
    errors: dict[str, str] = {}
    users: list[Any] = []
    try:
        users = await services(request).user_admin.search(query, limit=100)
    except FormInvalid as exc:
        errors = {"q": (exc.detail or exc.message).replace("query:", "q:", 1)}
    return render(
        request,
        "users.html",
        400 if errors else 200,
        nav="users",
        users=users,
        q=query,
        errors=errors,
    )


@get("/users/{uid:str}")
async def user_page(request: AnyRequest, uid: str) -> Response[Any]:
    detail = await services(request).user_admin.get(uid)
    return render(request, "user.html", nav="users", detail=detail)


@post("/users/{uid:str}/disable", status_code=303)
async def disable_user(request: AnyRequest, uid: str) -> Response[Any]:
    await checked_form(request)
    await services(request).user_admin.set_disabled(uid, True)
    return redirect(f"/console/users/{uid}?notice=disabled")


@post("/users/{uid:str}/enable", status_code=303)
async def enable_user(request: AnyRequest, uid: str) -> Response[Any]:
    await checked_form(request)
    await services(request).user_admin.set_disabled(uid, False)
    return redirect(f"/console/users/{uid}?notice=enabled")


@post("/users/{uid:str}/sign-out", status_code=303)
async def sign_out_user(request: AnyRequest, uid: str) -> Response[Any]:
    await checked_form(request)
    await services(request).user_admin.sign_out_everywhere(uid)
    return redirect(f"/console/users/{uid}?notice=signed-out")


# -- schedules -----------------------------------------------------------------------------------


@get("/schedules")
async def schedules_page(request: AnyRequest) -> Response[Any]:
    admin = services(request).schedule_admin
    return render(
        request,
        "schedules.html",
        nav="schedules",
        upcoming=await admin.upcoming(within=timedelta(hours=24), limit=100),
        runs=await admin.runs(problems_first=True, limit=100),
        schedules=await admin.list(limit=100),
    )


@get("/schedules/{schedule_id:str}")
async def schedule_page(request: AnyRequest, schedule_id: str) -> Response[Any]:
    admin = services(request).schedule_admin
    detail = await admin.get(schedule_id)
    runs = await admin.runs(schedule_id, problems_first=True, limit=100)
    return render(request, "schedule.html", nav="schedules", detail=detail, runs=runs)


ROUTES = [
    overview,
    products_page,
    import_product,
    product_page,
    apps_page,
    create_app,
    rotate_app_secret,
    users_page,
    user_page,
    disable_user,
    enable_user,
    sign_out_user,
    schedules_page,
    schedule_page,
]
