"""The image viewer's ``?token=`` (a HIS frame has no session cookie): the token is
checked, becomes the viewer cookie — HttpOnly, SameSite fit for the frame, Secure over
HTTPS, no longer than the token — and the page reloads with only ``token`` dropped. The
viewer cookie reads the viewer and its images and nothing else: it is not a login."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient

from huren.adapters.clock import FixedClock
from huren.api.app import create_app
from huren.api.auth import SESSION_COOKIE, VIEWER_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.fixtures.actors import Login
from tests.fixtures.imaging import ct_report, store_complete_ct_study
from tests.fixtures.results import store
from tests.fixtures.world import HOSP_A, HOSP_B


@pytest.fixture
def ct(world: Container) -> tuple[int, str]:
    """A chest CT of hospital A with its complete study: (result id, study UID)."""
    report = ct_report(HOSP_A)
    result_id = store(world, report).results[0].result_id
    study = store_complete_ct_study(world, report)
    return result_id, study.study_uid


def _app(world: Container, base_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(world), base_url=base_url) as c:
        yield c


@pytest.fixture
def client(world: Container) -> Iterator[TestClient]:
    yield from _app(world, "http://testserver")


@pytest.fixture
def https_client(world: Container) -> Iterator[TestClient]:
    yield from _app(world, "https://testserver")


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


def set_cookie(response: object) -> SimpleCookie:
    cookies = SimpleCookie()
    for value in response.headers.get_list("set-cookie"):  # type: ignore[attr-defined]
        cookies.load(value)
    return cookies


def test_a_valid_token_becomes_the_viewer_cookie_and_only_the_token_leaves_the_url(
    client: TestClient, world: Container, login: Login, ct: tuple[int, str]
) -> None:
    result_id, _ = ct
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    r = client.get(
        f"/imaging/results/{result_id}",
        params=[("series", "2"), ("token", token), ("window", "40,400")],
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/imaging/results/{result_id}?series=2&window=40%2C400"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    cookies = set_cookie(r)
    assert SESSION_COOKIE not in cookies  # not a login: the session is left alone
    c = cookies[VIEWER_COOKIE]
    assert c.value == token
    assert c["httponly"] is True
    assert c["samesite"].lower() == "lax"  # plain HTTP: SameSite=None would be refused
    assert not c["secure"]
    assert c["path"] == "/"
    assert 0 < int(c["max-age"]) <= world.settings.token_ttl_seconds


def test_over_https_the_cookie_is_secure_and_sent_inside_a_cross_site_frame(
    https_client: TestClient, login: Login, ct: tuple[int, str]
) -> None:
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    r = https_client.get(f"/imaging/results/{ct[0]}?token={token}", follow_redirects=False)
    raw = r.headers["set-cookie"]
    assert raw.startswith(f"{VIEWER_COOKIE}=")
    attributes = {a.strip().lower() for a in raw.split(";")[1:]}
    assert {"httponly", "secure", "samesite=none", "partitioned"} <= attributes


def test_the_cookie_lives_no_longer_than_the_token(
    client: TestClient, clock: FixedClock, login: Login, ct: tuple[int, str]
) -> None:
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    clock.at += timedelta(minutes=50)
    r = client.get(f"/imaging/results/{ct[0]}?token={token}", follow_redirects=False)
    assert int(set_cookie(r)[VIEWER_COOKIE]["max-age"]) == 10 * 60


@pytest.mark.parametrize("token", ["not-a-token", "eyJhbGciOiJIUzI1NiJ9.e30.x"])
def test_an_invalid_token_goes_to_login_and_sets_nothing(
    client: TestClient, ct: tuple[int, str], token: str
) -> None:
    r = client.get(f"/imaging/results/{ct[0]}?token={token}", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == f"/login?next=%2Fimaging%2Fresults%2F{ct[0]}"
    assert "set-cookie" not in r.headers


def test_an_expired_token_goes_to_login_and_sets_nothing(
    client: TestClient, clock: FixedClock, login: Login, ct: tuple[int, str]
) -> None:
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    clock.at += timedelta(hours=2)
    r = client.get(f"/imaging/results/{ct[0]}?token={token}", follow_redirects=False)
    assert r.headers["location"].startswith("/login")
    assert "set-cookie" not in r.headers


def test_a_token_of_a_role_without_the_viewer_is_refused_and_sets_nothing(
    client: TestClient, login: Login, ct: tuple[int, str]
) -> None:
    token = token_of(login(Role.INSURER, jurisdiction="HE"))
    r = client.get(f"/imaging/results/{ct[0]}?token={token}", follow_redirects=False)
    assert r.status_code == 403
    assert "set-cookie" not in r.headers


def test_the_viewer_cookie_opens_the_viewer_and_its_images(
    client: TestClient, world: Container, login: Login, ct: tuple[int, str]
) -> None:
    result_id, study_uid = ct
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    page = client.get(f"/imaging/results/{result_id}?token={token}")
    assert page.status_code == 200
    assert "token" not in str(page.url)
    assert page.headers["content-security-policy"] == (
        f"frame-ancestors {world.settings.workbench_frame_ancestors}"
    )
    thumb = page.text.split('src="/dicomweb/', 1)[1].split('"', 1)[0]
    image = client.get(f"/dicomweb/{thumb}")
    assert image.status_code == 200
    assert image.headers["content-type"].startswith("image/")
    assert client.get(f"/imaging/studies/{study_uid}").status_code == 200


def test_the_viewer_cookie_is_no_login_for_other_pages_apis_or_changes(
    client: TestClient, login: Login, ct: tuple[int, str]
) -> None:
    result_id, _ = ct
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    client.get(f"/imaging/results/{result_id}?token={token}")
    assert client.cookies.get(VIEWER_COOKIE) == token
    assert client.get("/retrieval", follow_redirects=False).status_code == 303  # to /login
    assert client.get("/api/v1/auth/me").status_code == 401
    assert client.get("/api/v1/inbox").status_code == 401
    stow = client.post("/dicomweb/studies", content=b"", headers={"content-type": "x/y"})
    assert stow.status_code == 401


def test_a_session_already_in_the_browser_is_not_replaced_by_a_link_with_a_token(
    client: TestClient, login: Login, ct: tuple[int, str]
) -> None:
    """Login CSRF: a link carrying someone else's token cannot swap the session."""
    mine = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    theirs = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    client.cookies.set(SESSION_COOKIE, mine)
    client.get(f"/imaging/results/{ct[0]}?token={theirs}")
    assert client.cookies.get(SESSION_COOKIE) == mine
    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200


def test_logging_out_clears_the_viewer_cookie_too(
    client: TestClient, login: Login, ct: tuple[int, str]
) -> None:
    token = token_of(login(Role.CLINICIAN, institution=HOSP_B))
    client.get(f"/imaging/results/{ct[0]}?token={token}")
    r = client.post("/logout", follow_redirects=False)
    cleared = set_cookie(r)[VIEWER_COOKIE]
    assert cleared.value == ""
    assert cleared["max-age"] == "0"
    assert client.get(f"/imaging/results/{ct[0]}", follow_redirects=False).status_code == 303
