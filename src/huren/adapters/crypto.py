"""HMAC-SHA256 lookup hashes and AES-256-GCM display encryption for identifiers (R4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def new_key() -> str:
    """A fresh 256-bit key as URL-safe base64 text (for settings and the demo)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def _decode_key(text: str, name: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(text.encode())
    except ValueError as exc:
        raise ValueError(f"{name} 不是有效的 base64 密钥") from exc
    if len(raw) != 32:
        raise ValueError(f"{name} 必须是 32 字节（256 位）的 base64 密钥")
    return raw


class IdentifierCrypto:
    """Implements ``huren.services.ports.IdentifierVault``."""

    def __init__(self, hash_key: str, encryption_key: str) -> None:
        self._hash_key = _decode_key(hash_key, "HUREN_IDENTIFIER_HASH_KEY")
        self._aead = AESGCM(_decode_key(encryption_key, "HUREN_IDENTIFIER_ENCRYPTION_KEY"))

    def lookup_hash(self, kind: str, assigner: str, value: str) -> str:
        msg = f"{kind}\x1f{assigner}\x1f{value}".encode()
        return hmac.new(self._hash_key, msg, hashlib.sha256).hexdigest()

    def encrypt(self, value: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, value.encode(), None)
        return base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, token: str) -> str:
        raw = base64.urlsafe_b64decode(token.encode())
        return self._aead.decrypt(raw[:12], raw[12:], None).decode()
