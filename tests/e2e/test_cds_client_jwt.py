"""CDS clients authenticating with their own signed JWT (CDS Hooks 2.0 §Trusting CDS
Clients): the specification's own example token and key set, and an HIS signing each
call with ES384 or RS384 over real HTTP (httpx) — every check refused by name."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import func, select
from typer.testing import CliRunner

from huren.adapters.clock import FixedClock
from huren.adapters.db.tables import cds_client_jti, reminder
from huren.bootstrap import Container
from huren.cli import accounts as cli
from huren.domain.accounts import Role
from huren.domain.errors import DomainError, Unauthorized
from huren.services.accounts import NewAccount
from tests.e2e.live import serve
from tests.e2e.test_cdshooks import SELECT, hook_request, patient_resource
from tests.fixtures.actors import SEED
from tests.fixtures.results import lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B

HIS = "https://his.hosp-b.example/"

# The example of CDS Hooks 2.0 §Trusting CDS Clients, verbatim: its JWK Set, and the
# complete JWT it says a client sends ("Using the above JWT values and JWKs").
SPEC_JWKS = {
    "keys": [
        {
            "kty": "EC",
            "use": "sig",
            "crv": "P-384",
            "kid": "example-kid",
            "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
            "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
            "alg": "ES384",
        }
    ]
}
SPEC_JWT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGlyLWVo"
    "ci5leGFtcGxlLmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIsImF1ZCI6"
    "Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0MjI1Njg4NjAs"
    "ImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNhYzFlIiwidGVuYW50"
    "IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjGRKlcWB94l9do4cM8REXeYJLL6SGUB"
    "O8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjooZdooCSDf2L8-i4awdoUwiEb"
)
SPEC_AUD = "https://cds.example.org/cds-services/some-service"
SPEC_EXP = datetime.fromtimestamp(1422568860, tz=UTC)


def integration_account(c: Container, username: str, institution: str = HOSP_B) -> str:
    c.accounts.create_account(
        NewAccount(username, "HIS 接口", Role.INTEGRATION, institution=institution),
        generate_password=False,
        actor=SEED,
    )
    return username


class Signer:
    """An HIS's signing key: a fresh EC P-384 (ES384) or RSA (RS384) key pair."""

    def __init__(self, alg: str = "ES384", kid: str = "his-key-1") -> None:
        self.alg, self.kid = alg, kid
        self.private: Any = (
            ec.generate_private_key(ec.SECP384R1())
            if alg.startswith("ES")
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )

    def jwks(self) -> str:
        algo = jwt.get_algorithm_by_name(self.alg)
        key = json.loads(algo.to_jwk(self.private.public_key()))
        return json.dumps({"keys": [{**key, "kid": self.kid, "use": "sig", "alg": self.alg}]})

    def token(self, audience: str | list[str], now: datetime, **override: Any) -> str:
        header = {"kid": self.kid, "typ": "JWT", **override.pop("header", {})}
        claims: dict[str, Any] = {
            "iss": HIS,
            "aud": audience,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=5)).timestamp()),
            "jti": str(uuid.uuid4()),
            **override,
        }
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=header)


# -- the specification's example

SPEC_ISS, SPEC_JKU = "https://fhir-ehr.example.com/", "https://fhir-ehr.example.com/jwk_uri"


def example_client(world: Container, before_exp: timedelta, jku: str = SPEC_JKU) -> str:
    """The example's EHR registered with its key set, the clock ``before_exp`` before
    the example token's ``exp``; its account's name."""
    assert isinstance(world.clock, FixedClock)
    world.clock.at = SPEC_EXP - before_exp
    user = integration_account(world, "ehr-example")
    world.cds_clients.register(user, SPEC_ISS, json.dumps(SPEC_JWKS), jku=jku, actor=SEED)
    return user


def test_the_specifications_example_token_is_accepted_with_its_key_set(world: Container) -> None:
    user = example_client(world, timedelta(minutes=4))
    principal = world.cds_clients.principal_from_jwt(SPEC_JWT, [SPEC_AUD])
    assert (principal.username, principal.institution) == (user, HOSP_B)
    # Its jti is now spent.
    with pytest.raises(Unauthorized, match="jti 重复"):
        world.cds_clients.principal_from_jwt(SPEC_JWT, [SPEC_AUD])


@pytest.mark.parametrize(
    ("before_exp", "jku", "audience", "why"),
    [
        # exp in 2015 is 3.5 years after iat: as a bearer credential it lives too long.
        (timedelta(days=365), SPEC_JKU, SPEC_AUD, "有效期过长"),
        (timedelta(minutes=-2), SPEC_JKU, SPEC_AUD, "已过期"),
        (timedelta(minutes=4), "https://elsewhere.example/jwks", SPEC_AUD, "jku"),
        (timedelta(minutes=4), SPEC_JKU, "https://cds.example.org/cds-services/other", "aud"),
    ],
)
def test_the_specifications_example_token_is_refused_when_a_check_fails(
    world: Container, before_exp: timedelta, jku: str, audience: str, why: str
) -> None:
    example_client(world, before_exp, jku)
    with pytest.raises(Unauthorized, match=why):
        world.cds_clients.principal_from_jwt(SPEC_JWT, [audience])


def test_a_tampered_example_token_fails_its_signature(world: Container) -> None:
    example_client(world, timedelta(minutes=4))
    head, payload, sig = SPEC_JWT.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["tenant"] = "another-hospital"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthorized, match="签名验证失败"):
        world.cds_clients.principal_from_jwt(f"{head}.{forged}.{sig}", [SPEC_AUD])


# -- registration


@pytest.mark.parametrize(
    ("jwks", "field", "why"),
    [
        ("not json", "jwks", "不是有效的 JSON"),
        ('{"kid": "x"}', "jwks", "keys"),
        (
            json.dumps({"keys": [{**SPEC_JWKS["keys"][0], "d": "secret"}]}),
            "jwks.keys[0]",
            "私钥",
        ),
        (json.dumps({"keys": [{**SPEC_JWKS["keys"][0], "kid": ""}]}), "jwks.keys[0].kid", "kid"),
        (
            json.dumps({"keys": [{**SPEC_JWKS["keys"][0], "alg": "HS256"}]}),
            "jwks.keys[0].alg",
            "HS256",
        ),
        (json.dumps({"keys": [{**SPEC_JWKS["keys"][0], "x": "AAAA"}]}), "jwks", "不是可用的公钥"),
        (json.dumps({"keys": []}), "jwks", "没有可用于验签的公钥"),
        (json.dumps({"keys": [SPEC_JWKS["keys"][0]] * 2}), "jwks", "唯一"),
    ],
)
def test_registration_refuses_an_unusable_key_set_by_name(
    world: Container, jwks: str, field: str, why: str
) -> None:
    user = integration_account(world, "his-b")
    with pytest.raises(DomainError) as caught:
        world.cds_clients.register(user, HIS, jwks, actor=SEED)
    assert any(p.field == field and why in p.message for p in caught.value.problems), (
        caught.value.problems
    )
    assert world.cds_clients.list_clients() == []


def test_registration_needs_an_institutions_interface_account(
    world: Container, login: Callable[..., dict[str, str]]
) -> None:
    world.accounts.create_account(
        NewAccount("dr-li", "李医生", Role.CLINICIAN, institution=HOSP_B),
        generate_password=False,
        actor=SEED,
    )
    with pytest.raises(DomainError) as caught:
        world.cds_clients.register("dr-li", HIS, Signer().jwks(), actor=SEED)
    assert [p.field for p in caught.value.problems] == ["username"]


# -- over HTTP, as an HIS calls


@pytest.fixture
def his(world: Container) -> Iterator[tuple[str, Signer]]:
    """A served platform holding 张三's liver panel from hospital A, and hospital B's HIS
    registered as a CDS client with an ES384 key."""
    store(world, lab_panel(HOSP_A))
    signer = Signer("ES384")
    user = integration_account(world, f"{HOSP_B}-integration")
    world.cds_clients.register(user, HIS, signer.jwks(), label="HIS 医嘱系统", actor=SEED)
    with serve(world) as base:
        yield base, signer


def _call(base: str, token: str, service: str = SELECT) -> httpx.Response:
    body = hook_request(prefetch={"patient": patient_resource()})
    return httpx.post(
        f"{base}/cds-services/{service}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_an_his_signing_each_call_gets_cards_as_its_institution(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, signer = his
    now = world.clock.now()
    r = _call(base, signer.token(f"{base}/cds-services/{SELECT}", now))
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    assert any("肝功" in c["summary"] for c in cards), cards
    with world.engine.connect() as conn:
        rows = conn.execute(select(reminder.c.institution_code, reminder.c.channel)).all()
        spent = conn.execute(select(func.count()).select_from(cds_client_jti)).scalar_one()
    assert rows
    assert {r.institution_code for r in rows} == {HOSP_B}
    assert spent == 1
    # aud as an array (RFC 7519 §4.1.3).
    r = _call(base, signer.token([f"{base}/cds-services/{SELECT}"], now))
    assert r.status_code == 200, r.text


def test_feedback_accepts_a_token_for_the_feedback_url_or_its_service(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, signer = his
    now = world.clock.now()
    r = _call(base, signer.token(f"{base}/cds-services/{SELECT}", now))
    cards = [c for c in r.json()["cards"] if c.get("overrideReasons")]
    assert len(cards) >= 1, r.json()
    for aud in (f"{base}/cds-services/{SELECT}/feedback", f"{base}/cds-services/{SELECT}"):
        card = cards[0]
        feedback = {
            "card": card["uuid"],
            "outcome": "overridden",
            "overrideReason": {"reason": card["overrideReasons"][0]},
            "outcomeTimestamp": now.isoformat(),
        }
        r = httpx.post(
            f"{base}/cds-services/{SELECT}/feedback",
            json={"feedback": [feedback]},
            headers={"Authorization": f"Bearer {signer.token(aud, now)}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert r.json()["recorded"] == 1


def _refused(r: httpx.Response, why: str) -> None:
    assert r.status_code == 401, r.text
    assert why in r.json()["detail"], r.json()
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("override", "why"),
    [
        ({"iss": "https://other-his.example/"}, "未登记的 CDS 客户端"),
        ({"aud": "https://cds.example.org/cds-services/other"}, "aud"),
        ({"aud": None}, "缺少 aud"),
        ({"jti": None}, "缺少 jti"),
        ({"exp": None}, "缺少 exp"),
        ({"header": {"kid": "unknown-kid"}}, "kid 'unknown-kid' 不在"),
        ({"header": {"typ": "at+jwt"}}, "typ 应为 JWT"),
        ({"header": {"jku": "https://evil.example/jwks"}}, "jku"),
    ],
)
def test_an_his_token_failing_a_check_is_refused_by_name(
    world: Container, his: tuple[str, Signer], override: dict[str, Any], why: str
) -> None:
    base, signer = his
    token = signer.token(f"{base}/cds-services/{SELECT}", world.clock.now(), **override)
    _refused(_call(base, token), why)
    with world.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(reminder)).scalar_one() == 0


def test_expired_future_and_long_lived_tokens_are_refused(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, signer = his
    aud = f"{base}/cds-services/{SELECT}"
    now = world.clock.now()
    _refused(_call(base, signer.token(aud, now - timedelta(minutes=10))), "已过期")
    _refused(_call(base, signer.token(aud, now + timedelta(minutes=10))), "iat 在未来")
    long_lived = signer.token(aud, now, exp=int((now + timedelta(hours=1)).timestamp()))
    _refused(_call(base, long_lived), "有效期过长")


def test_a_replayed_token_is_refused(world: Container, his: tuple[str, Signer]) -> None:
    base, signer = his
    token = signer.token(f"{base}/cds-services/{SELECT}", world.clock.now())
    assert _call(base, token).status_code == 200
    _refused(_call(base, token), "jti 重复")


def test_unsigned_and_hmac_tokens_are_refused_as_the_specification_forbids(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, _ = his
    claims = {
        "iss": HIS,
        "aud": f"{base}/cds-services/{SELECT}",
        "iat": int(world.clock.now().timestamp()),
        "exp": int((world.clock.now() + timedelta(minutes=5)).timestamp()),
        "jti": "j1",
    }
    unsigned = jwt.encode(claims, "", algorithm="none", headers={"kid": "his-key-1"})
    _refused(_call(base, unsigned), "未签名")
    hmac = jwt.encode(claims, "s" * 48, algorithm="HS384", headers={"kid": "his-key-1"})
    _refused(_call(base, hmac), "对称算法")


def test_a_token_signed_by_another_key_under_the_same_kid_is_refused(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, _ = his
    impostor = Signer("ES384")  # same kid, another private key
    _refused(
        _call(base, impostor.token(f"{base}/cds-services/{SELECT}", world.clock.now())), "签名"
    )


def test_revoking_or_deactivating_stops_the_client(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, signer = his
    aud = f"{base}/cds-services/{SELECT}"
    world.accounts.deactivate(f"{HOSP_B}-integration", actor=SEED)
    _refused(_call(base, signer.token(aud, world.clock.now())), "已停用")
    world.cds_clients.revoke(HIS, actor=SEED)
    _refused(_call(base, signer.token(aud, world.clock.now())), "已吊销")


def test_key_rotation_through_set_keys(world: Container, his: tuple[str, Signer]) -> None:
    base, old = his
    new = Signer("RS384", kid="his-key-2")
    both = {"keys": json.loads(old.jwks())["keys"] + json.loads(new.jwks())["keys"]}
    world.cds_clients.set_keys(HIS, json.dumps(both), actor=SEED)
    aud = f"{base}/cds-services/{SELECT}"
    assert _call(base, new.token(aud, world.clock.now())).status_code == 200
    assert _call(base, old.token(aud, world.clock.now())).status_code == 200
    world.cds_clients.set_keys(HIS, new.jwks(), actor=SEED)
    _refused(_call(base, old.token(aud, world.clock.now())), "kid 'his-key-1' 不在")


def test_a_client_jwt_is_not_taken_outside_cds_hooks(
    world: Container, his: tuple[str, Signer]
) -> None:
    base, signer = his
    token = signer.token(f"{base}/api/v1/recognition/check", world.clock.now())
    r = httpx.post(
        f"{base}/api/v1/recognition/check",
        json={"patient": {"patient_id": 1}, "items": ["B-LFT"]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert r.status_code == 401, r.text


# -- the operator's command


def test_cli_registers_lists_rotates_and_revokes(
    world: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "get_settings", lambda: world.settings)
    keys = tmp_path / "his.jwks.json"
    keys.write_text(Signer().jwks(), encoding="utf-8")
    runner = CliRunner()
    add = ["cds-client", "add", "--issuer", HIS, "--jwks", str(keys)]
    r = runner.invoke(cli.app, [*add, "--institution", HOSP_B, "--label", "HIS 生产"])
    assert r.exit_code == 0, r.output
    assert "已登记 CDS 客户端" in r.output
    assert world.accounts.account(f"{HOSP_B}-integration").role is Role.INTEGRATION
    r = runner.invoke(cli.app, ["cds-client", "list"])
    assert HIS in r.output
    assert f"{HOSP_B}-integration（{HOSP_B}）" in r.output
    assert "有效" in r.output
    r = runner.invoke(cli.app, [*add, "--institution", HOSP_B])
    assert r.exit_code == 1
    assert "已登记" in r.output
    other = ["cds-client", "add", "--issuer", "https://his.hosp-a.example/", "--jwks", str(keys)]
    r = runner.invoke(
        cli.app, [*other, "--institution", HOSP_A, "--username", f"{HOSP_B}-integration"]
    )
    assert r.exit_code == 1
    assert "属于机构" in r.output
    assert len(world.accounts.list_accounts()) == 1
    r = runner.invoke(cli.app, ["cds-client", "set-keys", HIS, "--jwks", str(tmp_path)])
    assert r.exit_code == 1
    assert "--jwks" in r.output
    assert "目录" in r.output
    r = runner.invoke(cli.app, ["cds-client", "revoke", HIS])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.app, ["cds-client", "list"])
    assert "已吊销" in r.output


def test_behind_a_proxy_the_aud_is_the_configured_public_url(
    world: Container, his: tuple[str, Signer]
) -> None:
    """An HIS signs for the URL it calls; behind a reverse proxy that is the public one
    (HUREN_BASE_URL), not the address the server sees."""
    base, signer = his
    public = "https://huren.hebei.example"
    aud = f"{public}/cds-services/{SELECT}"
    r = _call(base, signer.token(aud, world.clock.now()))
    assert r.status_code == 401
    assert "HUREN_BASE_URL" in r.json()["detail"]
    world.settings.base_url = public
    assert _call(base, signer.token(aud, world.clock.now())).status_code == 200


def _raw_jwt(header: Any, payload: Any, signature: bytes = b"sig") -> str:
    def part(value: Any) -> str:
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return f"{part(header)}.{part(payload)}.{part(signature)}"


@pytest.mark.parametrize(
    "token",
    [
        "a.b.c",
        "...",
        "x" * 5000,
        _raw_jwt([1, 2], {"iss": HIS}),
        _raw_jwt({"alg": "ES384", "kid": "k"}, [1, 2]),
        _raw_jwt({"alg": "ES384", "kid": "k"}, b"not json"),
        _raw_jwt({"alg": "ES384", "kid": "k"}, {"iss": "https://his\u0000.example/"}),
        _raw_jwt({"alg": "ES384", "kid": "k"}, {"iss": "h" * 100_000}),
        _raw_jwt({"alg": "ES384", "kid": "k"}, {"iss": 7}),
        _raw_jwt({"alg": 7, "kid": "k"}, {"iss": HIS}),
        _raw_jwt({"alg": "ES384", "kid": ["k"]}, {"iss": HIS}),
        _raw_jwt({"alg": "ES384", "kid": "his-key-1", "jku": 5}, {"iss": HIS}),
        _raw_jwt({"alg": "ES384", "kid": "his-key-1"}, {"iss": HIS}, b"\x00" * 96),
    ],
)
def test_a_malformed_client_jwt_is_a_401_naming_it_never_a_500(
    world: Container, his: tuple[str, Signer], token: str
) -> None:
    base, _ = his
    r = _call(base, token)
    assert r.status_code == 401, r.text
    assert r.json()["detail"]
