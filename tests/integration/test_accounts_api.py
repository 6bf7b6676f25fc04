"""Authentication over HTTP: tokens, API keys, the session cookie, 401 vs 403, the OAuth2
token endpoint and the login page. Runs on SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from huren.adapters.clock import FixedClock
from huren.api.auth import SESSION_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.services.accounts import NewAccount
from tests.fixtures.actors import SEED, Login
from tests.fixtures.world import HOSP_A


def _clinician(world: Container, password: str = "correct-horse-42") -> str:
    world.accounts.create_account(
        NewAccount("dr.wang", "王医生", Role.CLINICIAN, institution=HOSP_A, department="呼吸内科"),
        password,
        actor=SEED,
    )
    return password


def test_me_without_credentials_is_401_with_challenge(client: TestClient) -> None:
    r = client.get("/api/v1/auth/me")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "Bearer" in r.headers["www-authenticate"]
    assert r.json()["code"] == "unauthorized"


def test_bearer_token_from_login_fixture_identifies_the_account(
    client: TestClient, login: Login
) -> None:
    r = client.get("/api/v1/auth/me", headers=login(Role.CLINICIAN, institution=HOSP_A))
    assert r.status_code == 200
    assert r.json()["role"] == "clinician"
    assert r.json()["institution"] == HOSP_A


def test_tampered_token_is_401(client: TestClient, login: Login) -> None:
    headers = login(Role.OPERATOR)
    headers["Authorization"] = headers["Authorization"][:-2] + "xx"
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401


def test_expired_token_is_401(client: TestClient, login: Login, clock: FixedClock) -> None:
    headers = login(Role.OPERATOR)
    clock.at += timedelta(seconds=3601)
    r = client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 401
    assert "过期" in r.json()["detail"]


def test_token_of_deactivated_account_is_401(
    client: TestClient, world: Container, login: Login
) -> None:
    headers = login(Role.REGULATOR, jurisdiction="HE")
    username = client.get("/api/v1/auth/me", headers=headers).json()["username"]
    world.accounts.deactivate(username, actor=SEED)
    assert client.get("/api/v1/auth/me", headers=headers).status_code == 401


def test_password_grant_issues_a_bearer_token(client: TestClient, world: Container) -> None:
    password = _clinician(world)
    r = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": "dr.wang", "password": password},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == world.settings.token_ttl_seconds
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json()["username"] == "dr.wang"


def test_password_grant_with_wrong_password_is_invalid_grant(
    client: TestClient, world: Container
) -> None:
    _clinician(world)
    r = client.post(
        "/api/v1/auth/token",
        data={"grant_type": "password", "username": "dr.wang", "password": "wrong-password"},
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"


def test_repeated_failed_logins_are_throttled(client: TestClient, world: Container) -> None:
    password = _clinician(world)
    form = {"grant_type": "password", "username": "dr.wang", "password": "guess-000000"}
    for _ in range(5):
        assert client.post("/api/v1/auth/token", data=form).status_code == 400
    form["password"] = password
    r = client.post("/api/v1/auth/token", data=form)
    assert r.status_code == 429


def test_client_credentials_grant_with_api_key(client: TestClient, world: Container) -> None:
    created = world.accounts.create_integration(
        HOSP_A, "hosp-a-lis", "河北医大二院 LIS", actor=SEED
    )
    r = client.post(
        "/api/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "hosp-a-lis",
            "client_secret": created.key,
        },
    )
    assert r.status_code == 200
    token = r.json()["access_token"]
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["role"] == "integration"


def test_client_credentials_with_wrong_client_id_is_invalid_client(
    client: TestClient, world: Container
) -> None:
    created = world.accounts.create_integration(
        HOSP_A, "hosp-a-lis", "河北医大二院 LIS", actor=SEED
    )
    r = client.post(
        "/api/v1/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "someone-else",
            "client_secret": created.key,
        },
    )
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"


@pytest.mark.parametrize("style", ["authorization", "x-api-key"])
def test_api_key_authenticates_directly(client: TestClient, world: Container, style: str) -> None:
    created = world.accounts.create_integration(
        HOSP_A, "hosp-a-ris", "河北医大二院 RIS", actor=SEED
    )
    headers = (
        {"Authorization": f"ApiKey {created.key}"}
        if style == "authorization"
        else {"X-API-Key": created.key}
    )
    r = client.get("/api/v1/auth/me", headers=headers)
    assert r.status_code == 200
    assert r.json()["institution"] == HOSP_A


def test_revoked_api_key_is_401(client: TestClient, world: Container) -> None:
    created = world.accounts.create_integration(
        HOSP_A, "hosp-a-ris", "河北医大二院 RIS", actor=SEED
    )
    world.accounts.revoke_api_key(created.record.prefix, actor=SEED)
    r = client.get("/api/v1/auth/me", headers={"X-API-Key": created.key})
    assert r.status_code == 401


def test_unsupported_grant_type_is_rejected(client: TestClient) -> None:
    r = client.post("/api/v1/auth/token", data={"grant_type": "authorization_code"})
    assert r.status_code == 400
    assert r.json()["error"] == "unsupported_grant_type"


def test_login_page_sets_httponly_lax_session_cookie(client: TestClient, world: Container) -> None:
    password = _clinician(world)
    r = client.post(
        "/login",
        data={"username": "dr.wang", "password": password, "next": "/catalog/items"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/catalog/items"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie
    assert "samesite=lax" in cookie.lower()
    me = client.get("/api/v1/auth/me")  # the client now carries the cookie
    assert me.json()["username"] == "dr.wang"


def test_login_page_refuses_offsite_next(client: TestClient, world: Container) -> None:
    password = _clinician(world)
    r = client.post(
        "/login",
        data={"username": "dr.wang", "password": password, "next": "//evil.example/x"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_login_page_with_wrong_password_shows_error_in_chinese(
    client: TestClient, world: Container
) -> None:
    _clinician(world)
    r = client.post("/login", data={"username": "dr.wang", "password": "not-the-password"})
    assert r.status_code == 401
    assert "用户名或密码错误" in r.text
    assert SESSION_COOKIE not in r.headers.get("set-cookie", "")


def test_logout_clears_the_session_cookie(client: TestClient, world: Container) -> None:
    password = _clinician(world)
    client.post("/login", data={"username": "dr.wang", "password": password})
    client.post("/logout")
    assert client.get("/api/v1/auth/me").status_code == 401


def test_a_get_of_logout_only_asks_to_confirm(client: TestClient, world: Container) -> None:
    """A link or an image elsewhere (a GET) must not log the user out."""
    password = _clinician(world)
    client.post("/login", data={"username": "dr.wang", "password": password})
    page = client.get("/logout")
    assert page.status_code == 200
    assert 'method="post" action="/logout"' in page.text
    assert "set-cookie" not in page.headers
    assert client.get("/api/v1/auth/me").status_code == 200
    home = client.get("/retrieval")
    assert '<form class="logout" method="post" action="/logout">' in home.text
    client.post("/logout")
    assert client.get("/logout", follow_redirects=False).headers["location"] == "/login"


def test_repeated_requests_with_one_token_read_the_account_once(
    client: TestClient, world: Container, login: Login
) -> None:
    headers = login(Role.CLINICIAN, institution="H130600001")
    store = world.accounts.store
    reads: list[int] = []
    original = store.account_by_id

    def counting(account_id: int):  # type: ignore[no-untyped-def]
        reads.append(account_id)
        return original(account_id)

    store.account_by_id = counting  # type: ignore[method-assign]
    try:
        for _ in range(5):
            assert client.get("/api/v1/auth/me", headers=headers).status_code == 200
    finally:
        store.account_by_id = original  # type: ignore[method-assign]
    assert len(reads) <= 1
