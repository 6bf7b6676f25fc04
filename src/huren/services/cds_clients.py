"""CDS clients that authenticate with their own signed JWT (CDS Hooks 2.0 §Trusting CDS
Clients, https://cds-hooks.hl7.org/2.0/#trusting-cds-clients).

An HIS that speaks CDS Hooks signs, for every call, a short-lived JWT with its private
key and sends it as ``Authorization: Bearer``. The platform verifies it with the client's
public JWK Set, registered out of band by an operator (``huren accounts cds-client add``)
and bound to the institution's interface account: a verified call acts as that account.

What is checked, each with a message naming what is wrong:
- ``alg``: an asymmetric JWS algorithm. The specification forbids ``none`` and every
  symmetric (HMAC) algorithm ("SHALL NOT"); ES384 and RS384 are the recommended ones.
- ``kid`` (REQUIRED): the key of the registered JWK Set that signed it; ``typ`` if given
  is ``JWT``; ``jku`` if given is the URL registered for the client (the specification
  asks services to keep an allowlist of ``iss`` and ``jku``). Keys are never fetched from
  a ``jku`` at run time: a new key is registered (``cds-client set-keys``).
- ``iss``: a registered, unrevoked client whose account is active.
- ``aud``: the URL of the endpoint invoked (a string or an array holding it).
- ``exp``, ``iat``: not expired, not issued in the future, and ``exp`` at most
  ``MAX_LIFETIME`` ahead (a token is made per call; a long-lived one would be a bearer
  secret). ``LEEWAY`` allows for clocks a little apart.
- ``jti``: not seen before from this issuer while unexpired (replay).

Registering, rotating and revoking a client name who does it (``actor``) and are recorded
in ``account_event`` in the transaction of the change, against the client's account.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from huren.domain.accounts import (
    AccountAction,
    AccountEvent,
    Actor,
    Principal,
    Role,
)
from huren.domain.errors import Conflict, NotFound, ProblemCollector, Unauthorized
from huren.services.accounts import AccountService
from huren.services.ports import Clock

# The specification names ES384 and RS384 as recommended; the other asymmetric JWS
# algorithms of RFC 7518 §3.1 (and EdDSA, RFC 8037) are as sound.
ALGORITHMS = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512",
        "EdDSA",
    }
)  # fmt: skip
MAX_LIFETIME = timedelta(minutes=5)
LEEWAY = timedelta(seconds=60)
MAX_ISSUER, MAX_JTI, MAX_JKU, MAX_LABEL, MAX_JWKS = 255, 255, 500, 100, 64_000
# Members that only a private JWK has (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class CdsClientRecord:
    id: int
    issuer: str
    account_id: int
    jwks: str
    jku: str
    label: str
    created_at: datetime
    revoked_at: datetime | None = None


class CdsClientStore(Protocol):
    """The methods that change a client write its ``AccountEvent`` in their transaction,
    only when something was changed."""

    def add_cds_client(
        self,
        account_id: int,
        issuer: str,
        jwks: str,
        jku: str,
        label: str,
        now: datetime,
        event: AccountEvent,
    ) -> int: ...

    def cds_client(self, issuer: str) -> CdsClientRecord | None: ...

    def list_cds_clients(self) -> list[CdsClientRecord]: ...

    def set_cds_client_keys(self, issuer: str, jwks: str, jku: str, event: AccountEvent) -> bool:
        """False, and nothing recorded, when there is no such unrevoked client."""
        ...

    def revoke_cds_client(self, issuer: str, now: datetime, event: AccountEvent) -> bool:
        """False, and nothing recorded, when there is no such unrevoked client."""
        ...

    def claim_jti(self, issuer: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """Record ``jti`` of ``issuer`` until ``expires_at``; False when it is already
        recorded (a replay). Expired records may be dropped on the way."""
        ...


class ClientJwtVerifier(Protocol):
    def header(self, token: str) -> Mapping[str, Any]:
        """The JOSE header, not verified; raises ``Unauthorized`` if it is not a JWS."""
        ...

    def unverified_issuer(self, token: str) -> str:
        """The payload's ``iss``, not verified (to find the keys); ``Unauthorized`` if
        there is none."""
        ...

    def key_ids(self, jwks: str) -> list[str]:
        """The ``kid`` of every usable public key of a JWK Set; raises ``ValueError``
        with the reason when the set cannot be used."""
        ...

    def verify(self, token: str, jwks: str, kid: str, alg: str) -> Mapping[str, Any]:
        """The payload, once the signature is verified with the key ``kid`` of ``jwks``;
        raises ``Unauthorized`` with the reason otherwise. Claims are not checked."""
        ...


def _text_problem(value: str, maximum: int) -> str | None:
    if len(value) > maximum:
        return f"不超过 {maximum} 个字符"
    if _CONTROL.search(value):
        return "不能包含控制字符"
    return None


def jwks_key_ids(jwks: str) -> list[str]:
    """The ``kid`` of each key of a JWK Set that registration accepted (checked there)."""
    try:
        data = json.loads(jwks)
    except ValueError:
        return []
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list):
        return []
    return [str(k["kid"]) for k in keys if isinstance(k, dict) and k.get("kid")]


def _keys_detail(jwks: str, jku: str) -> str:
    detail = f"kid {', '.join(jwks_key_ids(jwks)) or '—'}"
    return f"{detail}；jku {jku}" if jku else detail


def _aud_values(aud: object) -> list[str] | None:
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return list(aud)
    return None


def _time(claims: Mapping[str, Any], name: str) -> datetime:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"CDS 客户端 JWT 缺少 {name}，或 {name} 不是秒数（NumericDate）")
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise Unauthorized(f"CDS 客户端 JWT 的 {name} 超出范围") from exc


class CdsClientService:
    def __init__(
        self,
        store: CdsClientStore,
        accounts: AccountService,
        verifier: ClientJwtVerifier,
        clock: Clock,
    ) -> None:
        self.store = store
        self.accounts = accounts
        self.verifier = verifier
        self.clock = clock

    def _event(
        self, action: AccountAction, actor: Actor, issuer: str, detail: str = ""
    ) -> AccountEvent:
        return AccountEvent.of(self.clock.now(), action, actor, issuer, detail)

    # -- registration (operator)
    def register(
        self,
        username: str,
        issuer: str,
        jwks: str,
        jku: str = "",
        label: str = "",
        *,
        actor: Actor,
    ) -> CdsClientRecord:
        """Register the client ``issuer`` with its public JWK Set, acting as the interface
        account ``username`` (of the ordering institution)."""
        account = self.accounts.account(username)
        errors = ProblemCollector()
        if account.role is not Role.INTEGRATION or not account.institution:
            errors.add("username", "CDS 客户端须绑定到机构的接口系统账号（角色 integration）")
        if not account.active:
            errors.add("username", f"账号 {username} 已停用")
        issuer = issuer.strip()
        if not issuer:
            errors.add("issuer", "iss 不能为空（CDS 客户端在 JWT 中使用的 iss，通常是其 URL）")
        elif problem := _text_problem(issuer, MAX_ISSUER):
            errors.add("issuer", f"iss {problem}")
        self._check_keys(errors, jwks, jku)
        if problem := _text_problem(label, MAX_LABEL):
            errors.add("label", f"用途说明{problem}")
        errors.raise_if_any("无法登记 CDS 客户端")
        if self.store.cds_client(issuer) is not None:
            raise Conflict(f"CDS 客户端 {issuer} 已登记；更换密钥请用 set-keys")
        jku = jku.strip()
        detail = _keys_detail(jwks, jku) + (f"；用途说明：{label}" if label else "")
        event = self._event(AccountAction.CDS_CLIENT_REGISTERED, actor, issuer, detail)
        self.store.add_cds_client(account.id, issuer, jwks, jku, label, self.clock.now(), event)
        self.accounts.log_change(event, account.id)
        return self.client(issuer)

    def _check_keys(self, errors: ProblemCollector, jwks: str, jku: str) -> None:
        if len(jwks) > MAX_JWKS:
            errors.add("jwks", f"JWK Set 不超过 {MAX_JWKS} 个字符")
        else:
            try:
                data = json.loads(jwks)
            except ValueError as exc:
                errors.add("jwks", f"JWK Set 不是有效的 JSON：{exc}")
                data = None
            keys = data.get("keys") if isinstance(data, dict) else None
            if data is not None and not isinstance(keys, list):
                errors.add("jwks", 'JWK Set 应为 {"keys": [...]}（RFC 7517 §5）')
            elif keys is not None:
                before = len(errors.problems)
                for n, key in enumerate(keys):
                    if not isinstance(key, dict):
                        errors.add(f"jwks.keys[{n}]", "应为 JSON 对象")
                        continue
                    if private := [m for m in PRIVATE_MEMBERS if m in key]:
                        errors.add(
                            f"jwks.keys[{n}]",
                            f"含私钥或对称密钥成员 {', '.join(private)}：只登记公钥",
                        )
                    if not key.get("kid"):
                        errors.add(f"jwks.keys[{n}].kid", "缺少 kid（JWT 头以 kid 指明所用密钥）")
                    alg = key.get("alg")
                    if alg is not None and alg not in ALGORITHMS:
                        errors.add(f"jwks.keys[{n}].alg", f"不接受的算法 {alg}")
                if len(errors.problems) == before:
                    try:
                        kids = self.verifier.key_ids(jwks)
                    except ValueError as exc:
                        errors.add("jwks", str(exc))
                    else:
                        if not kids:
                            errors.add("jwks", "JWK Set 中没有可用于验签的公钥")
                        elif len(set(kids)) != len(kids):
                            errors.add("jwks", "kid 在 JWK Set 中必须唯一")
        jku = jku.strip()
        if jku:
            if problem := _text_problem(jku, MAX_JKU):
                errors.add("jku", f"jku {problem}")
            elif not jku.startswith(("https://", "http://")):
                errors.add("jku", "jku 应为 JWK Set 的 URL")

    def set_keys(self, issuer: str, jwks: str, jku: str = "", *, actor: Actor) -> CdsClientRecord:
        """Replace a client's JWK Set (key rotation)."""
        errors = ProblemCollector()
        self._check_keys(errors, jwks, jku)
        errors.raise_if_any("无法更换 CDS 客户端密钥")
        jku = jku.strip()
        event = self._event(
            AccountAction.CDS_CLIENT_KEYS_REPLACED, actor, issuer, _keys_detail(jwks, jku)
        )
        if _text_problem(issuer, MAX_ISSUER) or not self.store.set_cds_client_keys(
            issuer, jwks, jku, event
        ):
            raise NotFound(f"CDS 客户端 {issuer} 未登记或已吊销")
        record = self.client(issuer)
        self.accounts.log_change(event, record.account_id)
        return record

    def client(self, issuer: str) -> CdsClientRecord:
        record = self.store.cds_client(issuer)
        if record is None:
            raise NotFound(f"CDS 客户端 {issuer} 未登记")
        return record

    def list_clients(self) -> list[CdsClientRecord]:
        return self.store.list_cds_clients()

    def revoke(self, issuer: str, *, actor: Actor) -> None:
        event = self._event(AccountAction.CDS_CLIENT_REVOKED, actor, issuer)
        if _text_problem(issuer, MAX_ISSUER) or not self.store.revoke_cds_client(
            issuer, self.clock.now(), event
        ):
            raise NotFound(f"CDS 客户端 {issuer} 未登记或已吊销")
        self.accounts.log_change(event, self.client(issuer).account_id)

    # -- authentication (every call)
    def client_header(self, token: str) -> Mapping[str, Any] | None:
        """The JOSE header of a bearer token that is a client's own JWT rather than the
        platform's (HS256, no ``kid``), else None: one with a ``kid`` or not signed with
        HMAC is taken for one, so that a refused client JWT is told why rather than
        "令牌无效". Given to ``principal_from_jwt``, which need not parse it again."""
        try:
            header = self.verifier.header(token)
        except Unauthorized:
            return None
        alg = header.get("alg")
        if "kid" in header or not (isinstance(alg, str) and alg.startswith("HS")):
            return header
        return None

    def principal_from_jwt(
        self, token: str, audiences: Sequence[str], header: Mapping[str, Any] | None = None
    ) -> Principal:
        """The interface account a client JWT speaks for, once every check above
        passed; ``audiences``: the URLs by which this endpoint is known; ``header``: its
        JOSE header when already read (``client_header``)."""
        if header is None:
            header = self.verifier.header(token)
        alg = header.get("alg")
        if alg == "none" or not isinstance(alg, str):
            raise Unauthorized("CDS 客户端 JWT 未签名（alg 为 none 或缺失）")
        if alg.startswith("HS"):
            raise Unauthorized(
                f"CDS 客户端 JWT 不得使用对称算法 {alg}（CDS Hooks 2.0：SHALL NOT），"
                "请用 ES384 或 RS384 等非对称算法签名"
            )
        if alg not in ALGORITHMS:
            raise Unauthorized(f"不接受的 JWT 签名算法 {alg}")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("CDS 客户端 JWT 头缺少 kid（CDS Hooks 2.0：REQUIRED）")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise Unauthorized(f"CDS 客户端 JWT 头的 typ 应为 JWT，收到 {typ!r}")
        issuer = self.verifier.unverified_issuer(token)
        if problem := _text_problem(issuer, MAX_ISSUER):
            raise Unauthorized(f"CDS 客户端 JWT 的 iss {problem}")
        record = self.store.cds_client(issuer)
        if record is None:
            raise Unauthorized(f"未登记的 CDS 客户端：iss={issuer[:MAX_ISSUER]!r}")
        if record.revoked_at is not None:
            raise Unauthorized(f"CDS 客户端 {issuer} 已吊销")
        jku = header.get("jku")
        if jku is not None and jku != record.jku:
            raise Unauthorized(f"jku {str(jku)[:MAX_JKU]!r} 不是该 CDS 客户端登记的 JWK Set 地址")
        claims = self.verifier.verify(token, record.jwks, kid, alg)
        self._check_claims(claims, issuer, audiences)
        principal = self.accounts.active_principal(record.account_id)
        if principal is None:
            raise Unauthorized(f"CDS 客户端 {issuer} 绑定的账号不存在或已停用")
        return principal

    def _check_claims(
        self, claims: Mapping[str, Any], issuer: str, audiences: Sequence[str]
    ) -> None:
        now = self.clock.now()
        aud = _aud_values(claims.get("aud"))
        if not aud:
            raise Unauthorized("CDS 客户端 JWT 缺少 aud（应为所调用的 CDS 服务地址）")
        wanted = {a.rstrip("/") for a in audiences}
        if not any(a.rstrip("/") in wanted for a in aud):
            raise Unauthorized(
                f"CDS 客户端 JWT 的 aud {aud[0][:200]!r} 不是所调用的服务地址 {audiences[0]}"
                "（经反向代理访问时，请将 HUREN_BASE_URL 设为 HIS 所用的公开地址）"
            )
        expires = _time(claims, "exp")
        issued = _time(claims, "iat")
        if now >= expires + LEEWAY:
            raise Unauthorized(f"CDS 客户端 JWT 已过期（exp {expires:%Y-%m-%d %H:%M:%S} UTC）")
        if issued > now + LEEWAY:
            raise Unauthorized("CDS 客户端 JWT 的 iat 在未来：请校准客户端时钟")
        if expires - now > MAX_LIFETIME + LEEWAY:
            raise Unauthorized(
                f"CDS 客户端 JWT 有效期过长：exp 距现在不得超过 {MAX_LIFETIME.seconds // 60} 分钟"
                "（每次调用签发新的 JWT）"
            )
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise Unauthorized("CDS 客户端 JWT 缺少 jti（防重放，REQUIRED）")
        if problem := _text_problem(jti, MAX_JTI):
            raise Unauthorized(f"CDS 客户端 JWT 的 jti {problem}")
        if not self.store.claim_jti(issuer, jti, expires + LEEWAY, now):
            raise Unauthorized("CDS 客户端 JWT 已被使用过（jti 重复，疑似重放）")
