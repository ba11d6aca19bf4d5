"""The first thing an app developer does: sign up, sign in, read the profile."""

from __future__ import annotations

from tests.conftest import unique
from tests.server import RunningServer


def test_sign_up_sign_in_and_read_profile(server: RunningServer, app: dict[str, str]) -> None:
    name = unique("bob")
    with server.client(app["appid"]) as client:
        created = client.post("/app/users", json={"username": name, "password": "123456"})
        assert created.status_code == 201, created.text
        body = created.json()
        assert set(body) == {"uid", "token", "expire_at"}
        login = client.post("/app/login", json={"username": name, "password": "123456"})
        assert login.status_code == 200
        assert login.json()["uid"] == body["uid"]
        assert login.json()["token"] != body["token"]
        for token in (body["token"], login.json()["token"]):  # several tokens valid at once
            profile = client.get("/app/users", headers={"X-Gizwits-User-token": token})
            assert profile.status_code == 200
            assert profile.json()["username"] == name
            assert profile.json()["is_anonymous"] is False
