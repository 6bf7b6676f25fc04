"""Under /cds-services the JOSE header of a platform token that authenticated is
remembered (``api.auth._PLATFORM_HEADERS``), so that it is not parsed again on every call
(issue 5). What it must not change: a CDS client's own JWT is still taken as the
client's, an HMAC-signed client JWT is still refused as the specification requires, and a
token with the platform's header but a wrong signature is still refused as before."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import httpx
import jwt
from sqlalchemy import select

from huren.adapters.db.tables import reminder
from huren.api import auth
from huren.bootstrap import Container
from huren.domain.accounts import Role
from tests.e2e.live import serve
from tests.e2e.test_cds_client_jwt import HIS, Signer, integration_account
from tests.e2e.test_cdshooks import SELECT, hook_request, patient_resource
from tests.fixtures.actors import SEED
from tests.fixtures.results import lab_panel, store
from tests.fixtures.world import HOSP_A, HOSP_B


def _call(base: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{base}/cds-services/{SELECT}",
        json=hook_request(prefetch={"patient": patient_resource()}),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def test_client_jwts_are_judged_as_before_once_platform_tokens_authenticated(
    world: Container, login: Callable[..., dict[str, str]]
) -> None:
    store(world, lab_panel(HOSP_A))
    platform = login(Role.INTEGRATION, institution=HOSP_A)["Authorization"].split(" ", 1)[1]
    signer = Signer("ES384")
    user = integration_account(world, f"{HOSP_B}-integration")
    world.cds_clients.register(user, HIS, signer.jwks(), label="HIS 医嘱系统", actor=SEED)
    with serve(world) as base:
        aud = f"{base}/cds-services/{SELECT}"
        r = _call(base, platform)
        assert r.status_code == 200, r.text
        assert platform.split(".")[0] in auth._PLATFORM_HEADERS

        # The platform's header, another signature: not valid, as before ("令牌无效").
        head, payload, _ = platform.split(".")
        forged = f"{head}.{payload}.{'A' * 43}"
        r = _call(base, forged)
        assert r.status_code == 401, r.text
        assert "令牌无效" in r.json()["detail"]

        # A client's JWT (ES384, with kid): still the client's, for its institution.
        r = _call(base, signer.token(aud, world.clock.now()))
        assert r.status_code == 200, r.text
        with world.engine.connect() as conn:
            institutions = set(conn.execute(select(reminder.c.institution_code)).scalars())
        assert institutions == {HOSP_A, HOSP_B}

        # An HMAC-signed client JWT with a kid: still refused by name (SHALL NOT).
        now = world.clock.now()
        claims = {
            "iss": HIS,
            "aud": aud,
            "iat": int(now.timestamp()),
            "exp": int((now + timedelta(minutes=5)).timestamp()),
            "jti": "j-hmac",
        }
        hmac = jwt.encode(claims, "s" * 48, algorithm="HS256", headers={"kid": "his-key-1"})
        r = _call(base, hmac)
        assert r.status_code == 401, r.text
        assert "对称算法" in r.json()["detail"]
        # The header of a token that did not authenticate is never remembered.
        assert hmac.split(".")[0] not in auth._PLATFORM_HEADERS
