"""Credentials: argon2id password hashes, HMAC-SHA256 API-key hashes, HS256 access tokens,
and the signatures of CDS clients' own JWTs.

Implements the ports of ``huren.services.accounts`` (PasswordHasher, ApiKeyHasher,
TokenCodec) and ``huren.services.cds_clients`` (ClientJwtVerifier)."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
from datetime import UTC, datetime
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from huren.domain.errors import Unauthorized
from huren.services.accounts import TokenClaims


class Argon2Passwords:
    """Passwords hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile)."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._ph = hasher or PasswordHasher()
        _dummy_hash()  # now, so that the first unknown name takes no longer than the next

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._ph.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def dummy_verify(self) -> None:
        """Spend the same time as a real check, so unknown usernames cannot be told apart
        from wrong passwords by timing."""
        self.verify(_dummy_hash(), "x")


@functools.cache
def _dummy_hash() -> str:
    """Made when passwords are first needed, not at import: a hash costs as much as a
    check (half a second of every ``huren`` command's start, measured)."""
    return PasswordHasher().hash("not-a-real-password")


class HmacApiKeys:
    """API keys are 256-bit random secrets, so a slow hash buys nothing against guessing
    and would cost tens of milliseconds on every request an interface engine makes. They
    are stored as HMAC-SHA256 under a server-side key (a pepper): a database dump alone
    cannot even test a candidate key. Rotating ``HUREN_TOKEN_SIGNING_KEY`` therefore also
    retires every API key."""

    def __init__(self, signing_key: str) -> None:
        if not signing_key:
            raise ValueError("未配置 HUREN_TOKEN_SIGNING_KEY")
        self._key = hmac.new(signing_key.encode(), b"huren api key v1", hashlib.sha256).digest()

    def new_key(self) -> tuple[str, str]:
        """A fresh key ``hr_<prefix>_<secret>`` and its lookup prefix ``hr_<prefix>``."""
        prefix = "hr_" + secrets.token_hex(5)
        return f"{prefix}_{secrets.token_urlsafe(32)}", prefix

    @staticmethod
    def prefix_of(key: str) -> str | None:
        parts = key.split("_")
        if len(parts) < 3 or parts[0] != "hr" or len(parts[1]) != 10:
            return None
        return f"hr_{parts[1]}"

    def hash(self, key: str) -> str:
        return hmac.new(self._key, key.encode(), hashlib.sha256).hexdigest()

    def matches(self, key: str, key_hash: str) -> bool:
        return hmac.compare_digest(self.hash(key), key_hash)


# Tokens whose signature was verified, remembered: a client sends the same token on every
# request for its lifetime, and verifying it (base64, JSON, HMAC, claim checks) was a
# tenth of a CDS Hooks call (issue 5). What ``decode`` answers is a function of the token
# text and the key alone (expiry is the service's check, made on every call), so the
# remembered answer is exact. Cleared whole when full.
VERIFIED_TOKENS_KEPT = 4096


class JwtTokens:
    """HS256 JSON Web Tokens. Expiry is checked against the injected clock by the service,
    not against the wall clock, so PyJWT's own ``exp`` check is turned off here."""

    algorithm = "HS256"

    def __init__(self, signing_key: str) -> None:
        if not signing_key:
            raise ValueError("未配置 HUREN_TOKEN_SIGNING_KEY")
        # The configured key is base64 text (see adapters.crypto.new_key); sign with its
        # bytes when it decodes to at least 32 bytes, else with the text itself.
        try:
            raw = base64.urlsafe_b64decode(signing_key.encode())
        except ValueError:
            raw = b""
        self._key = raw if len(raw) >= 32 else signing_key.encode()
        self._verified: dict[str, TokenClaims] = {}

    def encode(self, claims: TokenClaims) -> str:
        payload: dict[str, Any] = {
            "sub": str(claims.account_id),
            "name": claims.username,
            "role": claims.role,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "jti": secrets.token_hex(8),
        }
        if claims.institution:
            payload["inst"] = claims.institution
        if claims.jurisdiction:
            payload["jur"] = claims.jurisdiction
        return jwt.encode(payload, self._key, algorithm=self.algorithm)

    def decode(self, token: str) -> TokenClaims | None:
        claims = self._verified.get(token)
        if claims is None:
            claims = self._decode(token)
            if claims is not None:
                if len(self._verified) >= VERIFIED_TOKENS_KEPT:
                    self._verified.clear()
                self._verified[token] = claims
        return claims

    def _decode(self, token: str) -> TokenClaims | None:
        try:
            data = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                options={"verify_exp": False, "verify_iat": False, "require": ["sub", "exp"]},
            )
            return TokenClaims(
                account_id=int(data["sub"]),
                username=str(data.get("name", "")),
                role=str(data.get("role", "")),
                institution=data.get("inst"),
                jurisdiction=data.get("jur"),
                issued_at=datetime.fromtimestamp(int(data.get("iat", 0)), tz=UTC),
                expires_at=datetime.fromtimestamp(int(data["exp"]), tz=UTC),
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, OverflowError):
            return None


# A client's JWK Set, parsed, by its text: parsing makes key objects (a tenth of a
# millisecond for an EC key), and the same set verifies every call of the client.
PARSED_KEY_SETS_KEPT = 256


class JwsClientVerifier:
    """Verifies a CDS client's JWT with its registered JWK Set (RFC 7515, RFC 7517) using
    PyJWT and ``cryptography``. Claims are the service's to check (against its clock)."""

    def __init__(self) -> None:
        self._sets: dict[str, dict[str, tuple[jwt.PyJWK, str | None]]] = {}

    @staticmethod
    def header(token: str) -> dict[str, Any]:
        try:
            return jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Bearer 令牌不是有效的 JWT：{exc}") from exc

    @staticmethod
    def unverified_issuer(token: str) -> str:
        try:
            payload = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"Bearer 令牌不是有效的 JWT：{exc}") from exc
        iss = payload.get("iss")
        if not isinstance(iss, str) or not iss:
            raise Unauthorized("CDS 客户端 JWT 缺少 iss（REQUIRED）")
        return iss

    @staticmethod
    def _keys(jwks: str) -> list[tuple[str, jwt.PyJWK, str | None]]:
        """Every key of the set as (kid, key, the ``alg`` it declares), in order;
        ``ValueError`` naming the key that cannot be used (PyJWKSet would skip it without
        a word)."""
        try:
            keys = json.loads(jwks)["keys"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError('JWK Set 应为 {"keys": [...]}（RFC 7517 §5）') from exc
        parsed: list[tuple[str, jwt.PyJWK, str | None]] = []
        for n, key in enumerate(keys):
            try:
                parsed.append((str(key.get("kid", "")), jwt.PyJWK(key), key.get("alg")))
            except (jwt.PyJWTError, ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ValueError(f"jwks.keys[{n}] 不是可用的公钥：{exc}") from exc
        return parsed

    def key_ids(self, jwks: str) -> list[str]:
        return [kid for kid, _, _ in self._keys(jwks)]

    def verify(self, token: str, jwks: str, kid: str, alg: str) -> dict[str, Any]:
        keys = self._sets.get(jwks)
        if keys is None:
            try:
                keys = {kid: (key, alg) for kid, key, alg in self._keys(jwks)}
            except ValueError as exc:
                raise Unauthorized(f"该 CDS 客户端登记的 JWK Set 不可用：{exc}") from exc
            if len(self._sets) >= PARSED_KEY_SETS_KEPT:
                self._sets.clear()
            self._sets[jwks] = keys
        found = keys.get(kid)
        if found is None:
            raise Unauthorized(
                f"kid {kid[:100]!r} 不在该 CDS 客户端登记的 JWK Set 中（换了密钥请先登记新公钥）"
            )
        key, declared = found
        if declared is not None and declared != alg:
            raise Unauthorized(f"密钥 {kid} 登记的算法是 {declared}，JWT 却用 {alg}")
        try:
            payload: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"CDS 客户端 JWT 签名验证失败：{exc}") from exc
        return payload
