"""Operator commands act on the same database as the server and print JSON with --json."""

from __future__ import annotations

import hashlib
import json

from tests.conftest import unique
from tests.server import RunningServer, run_cli


def test_app_create_keeps_given_ids_and_the_server_accepts_them(server: RunningServer) -> None:
    appid, secret = unique("legacy"), "s3cret-from-elsewhere"
    made = server.create_app("Migrated", appid=appid, appsecret=secret)
    assert made == {"appid": appid, "appsecret": secret}
    signature = hashlib.md5((appid + secret).encode()).hexdigest()  # noqa: S324
    with server.client(appid, **{"X-Gizwits-Application-Auth": signature}) as client:
        assert client.post("/app/request_token").status_code == 200


def test_generated_ids_have_the_gizwits_shape(server: RunningServer) -> None:
    made = server.create_app("Generated")
    assert len(made["appid"]) == 32
    assert len(made["appsecret"]) == 32
    int(made["appid"], 16)


def test_list_show_and_rotate(server: RunningServer) -> None:
    made = server.create_app("Listed")
    listed = json.loads(server.cli("app", "list", "--json").stdout)
    assert {"appid": made["appid"], "name": "Listed"}.items() <= next(
        a for a in listed if a["appid"] == made["appid"]
    ).items()
    shown = json.loads(server.cli("app", "show", made["appid"], "--json").stdout)
    assert shown["appsecret"] == made["appsecret"]
    rotated = json.loads(server.cli("app", "rotate-secret", made["appid"], "--json").stdout)
    assert rotated["appid"] == made["appid"]
    assert rotated["appsecret"] != made["appsecret"]
    # rich sizes tables to the terminal; give it room for every app the session made
    table = run_cli({**server.env, "COLUMNS": "400"}, "app", "list", cwd=server.data_dir).stdout
    assert made["appid"] in table


def test_operator_errors_are_reported_not_raised(server: RunningServer) -> None:
    made = server.create_app("Dup")
    dup = server.cli("app", "create", "--name", "Again", "--appid", made["appid"], check=False)
    assert dup.returncode != 0
    assert "already exists" in dup.stderr
    assert "Traceback" not in dup.stderr
    bad = server.cli("app", "create", "--name", "Bad", "--appid", "a b", check=False)
    assert bad.returncode != 0
    assert "appid" in bad.stderr
    missing = server.cli("app", "show", "nope-not-there", check=False)
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
