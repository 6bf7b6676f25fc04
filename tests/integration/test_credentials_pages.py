"""The 接口凭据 page (/integration/credentials): an institution's 机构管理员 — or the
platform operator, for any institution — lists the interface accounts with their API keys
and CDS clients, makes a key (shown once), revokes one after a confirmation, registers a
CDS client's public JWK Set (pasted or uploaded), rotates and revokes it. Every refusal:
another role, another institution, a bad JWK Set (named by field, nothing stored), a form
without this session's token (CSRF)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Table, func, select

from huren.adapters.clock import FixedClock
from huren.adapters.db.tables import account, api_key, cds_client
from huren.api.auth import SESSION_COOKIE
from huren.bootstrap import Container
from huren.domain.accounts import Role
from huren.domain.errors import Unauthorized
from huren.services.accounts import NewAccount
from huren.services.credentials import HISTORY_LIMIT
from tests.e2e.test_cds_client_jwt import SPEC_JWKS, Signer
from tests.fixtures.actors import SEED, Login
from tests.fixtures.world import HOSP_A, HOSP_B, HOSP_C

PAGE = "/integration/credentials"
HIS_A = "https://his.hosp-a.example/"
AUD = "http://testserver/cds-services/huren-order-select"


def session(headers: dict[str, str]) -> dict[str, str]:
    """The bearer token of ``login`` carried as the browser's session cookie."""
    token = headers["Authorization"].removeprefix("Bearer ")
    return {"Cookie": f"{SESSION_COOKIE}={token}"}


@pytest.fixture
def admin(login: Login) -> dict[str, str]:
    return session(login(Role.INSTITUTION_ADMIN, institution=HOSP_A))


@pytest.fixture
def accounts(world: Container) -> dict[str, str]:
    """An interface account at each hospital, each with a key; hospital B's with a CDS
    client. The keys by account name."""
    keys = {}
    for name, inst in (("lis-a", HOSP_A), ("his-b", HOSP_B)):
        world.accounts.create_account(
            NewAccount(name, f"{inst} 接口", Role.INTEGRATION, institution=inst), actor=SEED
        )
        keys[name] = world.accounts.create_api_key(name, "生产", actor=SEED).key
    world.cds_clients.register(
        "his-b", "https://his.hosp-b.example/", json.dumps(SPEC_JWKS), actor=SEED
    )
    return keys


def csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert found, "no form token on the page"
    return found.group(1)


def form_token(client: TestClient, headers: dict[str, str], query: str = "") -> str:
    page = client.get(PAGE + query, headers=headers)
    assert page.status_code == 200, page.text
    return csrf(page.text)


def count(world: Container, table: Table) -> int:
    with world.engine.connect() as c:
        return int(c.execute(select(func.count()).select_from(table)).scalar_one())


def prefix_of(key: str) -> str:
    return "_".join(key.split("_")[:2])


def me(client: TestClient, key: str) -> int:
    return int(client.get("/api/v1/auth/me", headers={"X-API-Key": key}).status_code)


def register(
    client: TestClient, headers: dict[str, str], jwks: str, **fields: str
) -> tuple[int, str]:
    data = {
        "csrf": form_token(client, headers),
        "username": "lis-a",
        "issuer": HIS_A,
        "jwks": jwks,
        "label": "HIS 医嘱",
    } | fields
    r = client.post(f"{PAGE}/cds-clients", data=data, headers=headers)
    return r.status_code, r.text


# ---------------------------------------------------------------- seeing


def test_an_admin_sees_the_own_institutions_accounts_keys_and_clients_only(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    world.cds_clients.register(
        "lis-a", HIS_A, json.dumps(SPEC_JWKS), jku="https://x.example/j", actor=SEED
    )
    page = client.get(PAGE, headers=admin)
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    text = page.text
    assert 'data-username="lis-a"' in text
    assert prefix_of(accounts["lis-a"]) in text
    assert HIS_A in text
    assert "example-kid" in text
    assert "https://x.example/j" in text
    # Hospital B's account, key and client are not shown.
    assert "his-b" not in text
    assert prefix_of(accounts["his-b"]) not in text
    assert "his.hosp-b.example" not in text
    # Never a key's secret part.
    assert accounts["lis-a"] not in text
    assert '<a class="pill" href="/integration/credentials">接口凭据</a>' in text
    # The other integration pages link to it too, for the admin.
    assert (
        'href="/integration/credentials"' in client.get("/integration/messages", headers=admin).text
    )


@pytest.mark.parametrize(
    ("role", "binding"),
    [
        (Role.CLINICIAN, {"institution": HOSP_A}),
        (Role.INTEGRATION, {"institution": HOSP_A}),
        (Role.REGULATOR, {"jurisdiction": "HE"}),
        (Role.QC_CENTRE, {"jurisdiction": "HE"}),
        (Role.INSURER, {"jurisdiction": "HE"}),
    ],
)
def test_other_roles_get_the_403_page_and_change_nothing(
    client: TestClient,
    login: Login,
    world: Container,
    accounts: dict[str, str],
    role: Role,
    binding: dict[str, str],
) -> None:
    headers = session(login(role, **binding))
    page = client.get(PAGE, headers=headers)
    assert page.status_code == 403
    assert "仅机构管理员与平台运维可用" in page.text
    assert 'name="csrf"' not in page.text
    before = count(world, api_key)
    r = client.post(f"{PAGE}/keys", data={"username": "lis-a", "csrf": "x"}, headers=headers)
    assert r.status_code == 403
    assert count(world, api_key) == before
    r = client.post(
        f"{PAGE}/keys/{prefix_of(accounts['lis-a'])}/revoke", data={"csrf": "x"}, headers=headers
    )
    assert r.status_code == 403
    assert me(client, accounts["lis-a"]) == 200
    if role is Role.INTEGRATION:
        return
    assert (
        'href="/integration/credentials"'
        not in client.get("/integration/messages", headers=headers).text.split("<main>", 1)[1]
    )


def test_an_api_key_is_refused_as_well(client: TestClient, accounts: dict[str, str]) -> None:
    r = client.get(PAGE, headers={"X-API-Key": accounts["lis-a"]})
    assert r.status_code == 403


def test_without_a_session_the_page_sends_to_login(client: TestClient) -> None:
    r = client.get(PAGE, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/login?next=")
    r = client.post(f"{PAGE}/keys", data={"username": "lis-a"}, follow_redirects=False)
    assert r.status_code == 303


def test_an_admin_cannot_reach_another_institution(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    assert client.get(f"{PAGE}?institution={HOSP_B}", headers=admin).status_code == 403
    token = form_token(client, admin)
    keys_before = count(world, api_key)
    # Asking for hospital B outright.
    r = client.post(
        f"{PAGE}/keys",
        data={"csrf": token, "institution": HOSP_B, "username": "his-b"},
        headers=admin,
    )
    assert r.status_code == 403
    assert "本机构" in r.text
    # B's account named under A's institution: not one of A's.
    r = client.post(f"{PAGE}/keys", data={"csrf": token, "username": "his-b"}, headers=admin)
    assert r.status_code == 422
    assert "本机构没有接口系统账号 his-b" in r.text
    assert count(world, api_key) == keys_before
    # B's key and client: not found, and left as they were.
    b_prefix = prefix_of(accounts["his-b"])
    assert client.get(f"{PAGE}/keys/{b_prefix}/revoke", headers=admin).status_code == 404
    r = client.post(f"{PAGE}/keys/{b_prefix}/revoke", data={"csrf": token}, headers=admin)
    assert r.status_code == 404
    assert me(client, accounts["his-b"]) == 200
    b_issuer = "https://his.hosp-b.example/"
    for path in ("cds-clients/keys", "cds-clients/revoke"):
        assert (
            client.get(f"{PAGE}/{path}", params={"issuer": b_issuer}, headers=admin).status_code
            == 404
        )
    r = client.post(
        f"{PAGE}/cds-clients/revoke", data={"csrf": token, "issuer": b_issuer}, headers=admin
    )
    assert r.status_code == 404
    r = client.post(
        f"{PAGE}/cds-clients/keys",
        data={"csrf": token, "issuer": b_issuer, "jwks": Signer().jwks()},
        headers=admin,
    )
    assert r.status_code == 404
    record = world.cds_clients.client(b_issuer)
    assert record.revoked_at is None
    assert "example-kid" in record.jwks
    # Registering a client as B's account.
    status, _ = register(client, admin, Signer().jwks(), username="his-b")
    assert status == 422
    assert count(world, cds_client) == 1


# ---------------------------------------------------------------- API keys


def test_a_new_key_is_shown_once_and_works(
    client: TestClient,
    admin: dict[str, str],
    accounts: dict[str, str],
    world: Container,
) -> None:
    token = form_token(client, admin)
    r = client.post(
        f"{PAGE}/keys",
        data={"csrf": token, "username": "lis-a", "label": "LIS 测试环境"},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    key = re.search(r'id="new-key-value">([^<]+)<', r.text)
    assert key
    new_key = key.group(1).strip()
    assert "它只显示这一次" in r.text
    assert me(client, new_key) == 200
    # Stored as a hash only; not shown again.
    with world.engine.connect() as c:
        rows = c.execute(select(api_key.c.key_hash, api_key.c.label)).all()
    assert all(new_key not in row.key_hash for row in rows)
    assert "LIS 测试环境" in [row.label for row in rows]
    assert len(rows) == 3
    again = client.get(PAGE, headers=admin).text
    assert new_key not in again
    assert prefix_of(new_key) in again
    assert "LIS 测试环境" in again
    # Who did it and when: recorded with the key, shown in 变更记录.
    (event,) = world.accounts.history(HOSP_A, limit=1)
    assert (event.action.value, event.subject, event.actor.username) == (
        "api_key_created",
        prefix_of(new_key),
        "institution_admin-1",
    )
    assert event.at == world.clock.now()
    assert event.actor.account_id == world.accounts.account("institution_admin-1").id
    assert new_key not in again.split('id="history"', 1)[1]


def test_a_key_is_revoked_after_a_confirmation(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str]
) -> None:
    prefix = prefix_of(accounts["lis-a"])
    page = client.get(PAGE, headers=admin).text
    assert f"/integration/credentials/keys/{prefix}/revoke" in page
    confirm = client.get(f"{PAGE}/keys/{prefix}/revoke", headers=admin)
    assert confirm.status_code == 200
    assert 'id="confirm-form"' in confirm.text
    assert "确认吊销" in confirm.text
    assert "立即被拒绝" in confirm.text
    # Opening the confirmation changes nothing.
    assert me(client, accounts["lis-a"]) == 200
    r = client.post(
        f"{PAGE}/keys/{prefix}/revoke", data={"csrf": csrf(confirm.text)}, headers=admin
    )
    assert r.status_code == 200
    assert f"已吊销 API 密钥 {prefix}" in r.text
    assert "已吊销 2026-06-15" in r.text
    assert me(client, accounts["lis-a"]) == 401
    again = client.post(
        f"{PAGE}/keys/{prefix}/revoke", data={"csrf": csrf(confirm.text)}, headers=admin
    )
    assert again.status_code == 409
    assert "已吊销" in again.text
    assert 'id="already-revoked"' in client.get(f"{PAGE}/keys/{prefix}/revoke", headers=admin).text


def test_a_new_interface_account_with_its_first_key(
    client: TestClient, admin: dict[str, str], world: Container
) -> None:
    page = client.get(PAGE, headers=admin).text
    assert 'id="no-accounts"' in page
    assert f'value="{HOSP_A}-integration"' in page  # the name the command line would use
    data = {
        "csrf": csrf(page),
        "username": "lis-a2",
        "display_name": "检验科 LIS",
        "label": "生产",
    }
    r = client.post(f"{PAGE}/accounts", data=data, headers=admin)
    assert r.status_code == 201, r.text
    new_key = re.search(r'id="new-key-value">([^<]+)<', r.text)
    assert new_key
    who = client.get("/api/v1/auth/me", headers={"X-API-Key": new_key.group(1).strip()}).json()
    assert (who["username"], who["role"], who["institution"]) == ("lis-a2", "integration", HOSP_A)
    # A name taken (here by the admin's own account), and a bad label: both named, nothing stored.
    accounts_before, keys_before = count(world, account), count(world, api_key)
    bad = data | {"username": "institution_admin-1", "label": "x\ny"}
    r = client.post(f"{PAGE}/accounts", data=bad, headers=admin)
    assert r.status_code == 422
    assert "<code>username</code>：用户名 institution_admin-1 已存在" in r.text
    assert "<code>label</code>" in r.text
    assert (count(world, account), count(world, api_key)) == (accounts_before, keys_before)


# ---------------------------------------------------------------- CDS clients


def test_a_cds_client_registered_on_the_page_signs_in_with_its_jwt(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    signer = Signer("ES384", kid="his-a-2026")
    status, text = register(client, admin, signer.jwks(), jku="https://his.hosp-a.example/jwks")
    assert status == 201, text
    assert f"已登记 CDS 客户端 {HIS_A}" in text
    assert "his-a-2026" in text
    assert "HIS 医嘱" in text
    now = world.clock.now()
    token = signer.token(AUD, now, iss=HIS_A)
    principal = world.cds_clients.principal_from_jwt(token, [AUD])
    assert (principal.username, principal.institution) == ("lis-a", HOSP_A)
    # The same issuer again: refused by the service, still one client.
    status, text = register(client, admin, signer.jwks())
    assert status == 409
    assert "已登记" in text
    assert count(world, cds_client) == 2


def test_a_jwk_set_may_be_uploaded_as_a_file(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    signer = Signer("RS384", kid="rsa-1")
    r = client.post(
        f"{PAGE}/cds-clients",
        data={"csrf": form_token(client, admin), "username": "lis-a", "issuer": HIS_A},
        files={"jwks_file": ("jwks.json", ("\ufeff" + signer.jwks()).encode(), "application/json")},
        headers=admin,
    )
    assert r.status_code == 201, r.text
    assert "rsa-1" in world.cds_clients.client(HIS_A).jwks
    r = client.post(
        f"{PAGE}/cds-clients",
        data={"csrf": form_token(client, admin), "username": "lis-a", "issuer": HIS_A + "x"},
        files={"jwks_file": ("jwks.json", b"\xff\xfe{", "application/json")},
        headers=admin,
    )
    assert r.status_code == 422
    assert "<code>jwks_file</code>" in r.text


PUBLIC = SPEC_JWKS["keys"][0]


@pytest.mark.parametrize(
    ("jwks", "field", "why"),
    [
        (json.dumps({"keys": [{**PUBLIC, "d": "c2VjcmV0"}]}), "jwks.keys[0]", "含私钥"),
        (
            json.dumps({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0", "alg": "HS256"}]}),
            "jwks.keys[0].alg",
            "不接受的算法 HS256",
        ),
        (
            json.dumps({"keys": [{k: v for k, v in PUBLIC.items() if k != "kid"}]}),
            "jwks.keys[0].kid",
            "缺少 kid",
        ),
        ("{not json", "jwks", "不是有效的 JSON"),
        ("", "jwks", "请粘贴"),
    ],
)
def test_a_bad_jwk_set_is_refused_naming_the_field_and_nothing_is_stored(
    client: TestClient,
    admin: dict[str, str],
    accounts: dict[str, str],
    world: Container,
    jwks: str,
    field: str,
    why: str,
) -> None:
    status, text = register(client, admin, jwks, jku="https://his.hosp-a.example/jwks")
    assert status == 422
    assert f"<code>{field}</code>" in text
    assert why in text
    assert "未作任何更改" in text
    assert count(world, cds_client) == 1  # hospital B's only
    # What was entered is kept in the form to correct.
    assert f'value="{HIS_A}"' in text
    assert 'value="https://his.hosp-a.example/jwks"' in text


def test_keys_are_rotated_and_a_bad_set_leaves_the_old_keys(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    old, new = Signer(kid="old"), Signer(kid="new")
    assert register(client, admin, old.jwks())[0] == 201
    form = client.get(f"{PAGE}/cds-clients/keys", params={"issuer": HIS_A}, headers=admin)
    assert form.status_code == 200
    assert 'id="set-keys-form"' in form.text
    assert "<code>old</code>" in form.text
    token = csrf(form.text)
    bad = json.dumps({"keys": [{**json.loads(new.jwks())["keys"][0], "d": "c2VjcmV0"}]})
    r = client.post(
        f"{PAGE}/cds-clients/keys",
        data={"csrf": token, "issuer": HIS_A, "jwks": bad},
        headers=admin,
    )
    assert r.status_code == 422
    assert "<code>jwks.keys[0]</code>" in r.text
    assert 'id="set-keys-form"' in r.text
    assert '"kid": "old"' in world.cds_clients.client(HIS_A).jwks
    r = client.post(
        f"{PAGE}/cds-clients/keys",
        data={"csrf": token, "issuer": HIS_A, "jwks": new.jwks()},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert f"已更换 CDS 客户端 {HIS_A} 的公钥" in r.text
    now = world.clock.now()
    assert world.cds_clients.principal_from_jwt(new.token(AUD, now, iss=HIS_A), [AUD])
    with pytest.raises(Unauthorized):
        world.cds_clients.principal_from_jwt(old.token(AUD, now, iss=HIS_A), [AUD])


def test_a_cds_client_is_revoked_after_a_confirmation(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    signer = Signer()
    assert register(client, admin, signer.jwks())[0] == 201
    confirm = client.get(f"{PAGE}/cds-clients/revoke", params={"issuer": HIS_A}, headers=admin)
    assert confirm.status_code == 200
    assert 'id="confirm-form"' in confirm.text
    assert world.cds_clients.client(HIS_A).revoked_at is None
    r = client.post(
        f"{PAGE}/cds-clients/revoke",
        data={"csrf": csrf(confirm.text), "issuer": HIS_A},
        headers=admin,
    )
    assert r.status_code == 200
    assert f"已吊销 CDS 客户端 {HIS_A}" in r.text
    with pytest.raises(Unauthorized, match="已吊销"):
        world.cds_clients.principal_from_jwt(
            signer.token(AUD, world.clock.now() + timedelta(seconds=1), iss=HIS_A), [AUD]
        )
    r = client.post(
        f"{PAGE}/cds-clients/keys",
        data={"csrf": csrf(confirm.text), "issuer": HIS_A, "jwks": signer.jwks()},
        headers=admin,
    )
    assert r.status_code == 409


# ---------------------------------------------------------------- CSRF


def test_a_form_without_this_sessions_token_changes_nothing(
    client: TestClient,
    admin: dict[str, str],
    login: Login,
    accounts: dict[str, str],
    world: Container,
) -> None:
    prefix = prefix_of(accounts["lis-a"])
    other_admin = session(login(Role.INSTITUTION_ADMIN, institution=HOSP_A))
    stolen = form_token(client, other_admin)
    mine = form_token(client, admin)
    assert stolen != mine
    keys_before = count(world, api_key)
    for token in ("", "0" * 64, stolen):
        r = client.post(f"{PAGE}/keys", data={"csrf": token, "username": "lis-a"}, headers=admin)
        assert r.status_code == 403, token
        assert "CSRF" in r.text
        r = client.post(f"{PAGE}/keys/{prefix}/revoke", data={"csrf": token}, headers=admin)
        assert r.status_code == 403
        status, _ = register(client, admin, Signer().jwks(), csrf=token)
        assert status == 403
    # The right token, but the browser says the form came from another site.
    r = client.post(
        f"{PAGE}/keys",
        data={"csrf": mine, "username": "lis-a"},
        headers=admin | {"Sec-Fetch-Site": "cross-site"},
    )
    assert r.status_code == 403
    assert count(world, api_key) == keys_before
    assert count(world, cds_client) == 1
    assert me(client, accounts["lis-a"]) == 200
    # With it, from the page itself: done.
    r = client.post(
        f"{PAGE}/keys",
        data={"csrf": mine, "username": "lis-a"},
        headers=admin | {"Sec-Fetch-Site": "same-origin"},
    )
    assert r.status_code == 201


# ---------------------------------------------------------------- 变更记录


def history_rows(page: str) -> list[str]:
    """The rows of the page's 变更记录 table, each as its cells' text, newest first."""
    section = page.split('id="history"', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r"<tr data-action=.*?</tr>", section, flags=re.S)
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip() for row in rows]


def history_actions(page: str) -> list[str]:
    section = page.split('id="history"', 1)[1].split("</section>", 1)[0]
    return re.findall(r'<tr data-action="([a-z_]+)"', section)


def test_the_page_lists_the_institutions_changes_newest_first_with_who_made_them(
    client: TestClient,
    admin: dict[str, str],
    accounts: dict[str, str],
    world: Container,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A change from the server's command line is listed as such, with its OS user.
    from huren.cli import accounts as cli

    monkeypatch.setattr(cli, "os_user", lambda: "ops-zhang")
    world.accounts.create_api_key("lis-a", "命令行建的", actor=cli.command_line())
    assert isinstance(world.clock, FixedClock)
    world.clock.at += timedelta(minutes=5)
    token = form_token(client, admin)
    r = client.post(f"{PAGE}/keys/{prefix_of(accounts['lis-a'])}/revoke",
                    data={"csrf": token}, headers=admin)  # fmt: skip
    assert r.status_code == 200
    rows = history_rows(r.text)
    # Newest first: the revocation on the page, then the command line's key, then the
    # fixtures' accounts and key (hospital B's never).
    assert rows[0] == (
        f"2026-06-15 17:35:00 测试institution_admin（institution_admin-1，机构管理员）"
        f" 吊销 API 密钥 {prefix_of(accounts['lis-a'])} lis-a 用途说明：生产"
    )
    assert rows[1].startswith("2026-06-15 17:30:00 命令行（OS 用户 ops-zhang） 创建 API 密钥")
    assert rows[1].endswith("lis-a 用途说明：命令行建的")
    assert history_actions(r.text) == [
        "api_key_revoked",
        "api_key_created",
        "api_key_created",
        "account_created",
        "account_created",
    ]
    assert "lis-a" in rows[2]
    assert rows[4].endswith("机构管理员，" + HOSP_A)  # the admin's own account
    assert "his-b" not in r.text.split('id="history"', 1)[1]
    assert prefix_of(accounts["his-b"]) not in r.text


def test_the_history_is_limited_to_the_most_recent_changes(
    client: TestClient, admin: dict[str, str], accounts: dict[str, str], world: Container
) -> None:
    for n in range(HISTORY_LIMIT + 5):
        world.accounts.create_api_key("lis-a", f"第{n}把", actor=SEED)
    rows = history_rows(client.get(PAGE, headers=admin).text)
    assert len(rows) == HISTORY_LIMIT
    assert rows[0].endswith(f"第{HISTORY_LIMIT + 4}把")


def test_the_operator_sees_the_chosen_institutions_history_only(
    client: TestClient, login: Login, accounts: dict[str, str]
) -> None:
    operator = session(login(Role.OPERATOR))
    assert 'id="history"' not in client.get(PAGE, headers=operator).text  # none chosen
    page = client.get(PAGE, params={"institution": HOSP_B}, headers=operator).text
    rows = history_rows(page)
    assert history_actions(page) == ["cds_client_registered", "api_key_created", "account_created"]
    assert all("his-b" in row or "his.hosp-b.example" in row for row in rows)
    assert "lis-a" not in page


def test_without_changes_the_history_says_so(client: TestClient, login: Login) -> None:
    operator = session(login(Role.OPERATOR))
    page = client.get(PAGE, params={"institution": HOSP_C}, headers=operator).text
    assert 'id="no-history"' in page
    assert history_rows(page) == []


# ---------------------------------------------------------------- the operator


def test_the_operator_chooses_an_institution_and_manages_its_credentials(
    client: TestClient, login: Login, accounts: dict[str, str], world: Container
) -> None:
    operator = session(login(Role.OPERATOR))
    page = client.get(PAGE, headers=operator)
    assert page.status_code == 200
    assert 'id="chooser"' in page.text
    assert 'id="choose"' in page.text
    assert f'<option value="{HOSP_B}"' in page.text
    page = client.get(PAGE, params={"institution": HOSP_B}, headers=operator)
    assert page.status_code == 200
    assert 'data-username="his-b"' in page.text
    assert "lis-a" not in page.text
    token = csrf(page.text)
    r = client.post(
        f"{PAGE}/keys",
        data={"csrf": token, "institution": HOSP_B, "username": "his-b"},
        headers=operator,
    )
    assert r.status_code == 201
    # The institution is part of every form: hospital B's key is not hospital A's.
    r = client.post(
        f"{PAGE}/keys/{prefix_of(accounts['his-b'])}/revoke",
        data={"csrf": token, "institution": HOSP_A},
        headers=operator,
    )
    assert r.status_code == 404
    r = client.post(
        f"{PAGE}/keys/{prefix_of(accounts['his-b'])}/revoke",
        data={"csrf": token, "institution": HOSP_B},
        headers=operator,
    )
    assert r.status_code == 200
    assert me(client, accounts["his-b"]) == 401
    # Without an institution chosen, a form asks for one; an unknown one is not found.
    r = client.post(f"{PAGE}/keys", data={"csrf": token, "username": "his-b"}, headers=operator)
    assert r.status_code == 422
    assert "请先选择机构" in r.text
    assert client.get(PAGE, params={"institution": "H999"}, headers=operator).status_code == 404


# ---------------------------------------------------------------- bad input


def test_values_the_database_cannot_hold_are_answered_with_a_page(
    client: TestClient, admin: dict[str, str], login: Login, accounts: dict[str, str]
) -> None:
    """A NUL or an overlong value in a prefix, an issuer, an institution or a name is
    refused before any lookup (PostgreSQL refuses a NUL in a query)."""
    assert client.get(f"{PAGE}/keys/hr_%00/revoke", headers=admin).status_code == 404
    assert client.get(f"{PAGE}/keys/{'x' * 40}/revoke", headers=admin).status_code == 404
    for issuer in ("\x00", "h" * 300):
        r = client.get(f"{PAGE}/cds-clients/keys", params={"issuer": issuer}, headers=admin)
        assert r.status_code == 404
    token = form_token(client, admin)
    r = client.post(f"{PAGE}/keys", data={"csrf": token, "username": "lis\x00a"}, headers=admin)
    assert r.status_code == 422
    r = client.post(
        f"{PAGE}/accounts",
        data={"csrf": token, "username": "new\x00", "display_name": "x"},
        headers=admin,
    )
    assert r.status_code == 422
    assert "<code>username</code>" in r.text
    status, text = register(client, admin, Signer().jwks(), issuer="https://his\x00/")
    assert status == 422
    assert "<code>issuer</code>" in text
    operator = session(login(Role.OPERATOR))
    r = client.get(PAGE, params={"institution": "H\x00"}, headers=operator)
    assert r.status_code == 404
