"""Who is calling (bearer token, API key or session cookie) and what they may do.

CONTRACT for every route module:
- ``current_principal``: dependency → ``Principal``, or 401 problem+json.
- ``require_roles(*roles)``: dependency factory → ``Principal`` whose role is one of
  ``roles``, else 403 (and 401 when not authenticated).
The implementation is being built (issue 3 §6)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request

from huren.domain.accounts import Principal, Role
from huren.domain.errors import Unauthorized


def current_principal(request: Request) -> Principal:
    raise Unauthorized("尚未登录或令牌无效")


def require_roles(*roles: Role) -> Callable[[Request], Principal]:
    def dependency(request: Request) -> Principal:
        return current_principal(request)

    return dependency
