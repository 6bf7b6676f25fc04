"""Who is calling (bearer token, API key or session cookie) and what they may do.

CONTRACT for every route module:
- ``current_principal``: dependency → ``Principal``, or 401 problem+json with
  ``WWW-Authenticate``.
- ``require_roles(*roles)``: dependency factory → ``Principal`` whose role is one of
  ``roles``, else 403 (and 401 when not authenticated).
- ``optional_principal``: dependency → ``Principal | None`` (pages that redirect to login).
- ``principal_can_see_institution(principal, institution_code, catalog)`` and
  ``principal_can_act_in_scope(principal, scope_code, catalog)``: the reach of a role.

Credentials accepted, first match wins:
``Authorization: Bearer <jwt>`` (under ``/cds-services`` also a registered CDS client's
own signed JWT, ``services.cds_clients``), ``Authorization: ApiKey <key>``, ``X-API-Key: <key>``,
and the ``huren_session`` cookie (HttpOnly, SameSite=Lax) that the login page sets,
carrying the same signed token. Last, the image viewer's ``huren_viewer`` cookie (set from
a ``?token=`` the HIS frame passed, see ``routes/viewer.py``) — honoured only for reading
the viewer and its images (GET/HEAD under ``VIEWER_COOKIE_PATHS``), never for a change."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, ClassVar
from urllib.parse import urlencode

from fastapi import Depends, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from huren.bootstrap import Container
from huren.domain.accounts import (
    ROLE_LABELS,
    Principal,
    Role,
    can_act_in_scope,
    can_see_institution,
)
from huren.domain.errors import Forbidden, Unauthorized
from huren.services.catalog import Catalog

SESSION_COOKIE = "huren_session"
VIEWER_COOKIE = "huren_viewer"
# The image viewer, its images, and the original report documents the workbench links
# (routes/retrieval.py): what a HIS frame opened with ``?token=`` reads.
VIEWER_COOKIE_PATHS = ("/imaging/", "/dicomweb/", "/api/v1/results/")
# Where a CDS client's own JWT is accepted (CDS Hooks 2.0 §Trusting CDS Clients).
CDS_PATH = "/cds-services"
FEEDBACK_SUFFIX = "/feedback"
ALL_ROLES: tuple[Role, ...] = tuple(Role)
STAFF_ROLES: tuple[Role, ...] = tuple(r for r in Role if r is not Role.PATIENT)
LIST_EDITORS: tuple[Role, ...] = (Role.REGULATOR, Role.QC_CENTRE, Role.OPERATOR)

# Declared for the OpenAPI document only (so /docs offers an "Authorize" button and
# schema-driven clients know to send credentials); resolution happens below.
bearer_scheme = HTTPBearer(
    auto_error=False, description="OAuth2 访问令牌 (POST /api/v1/auth/token)"
)
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="接口系统 API 密钥")


class NotAuthenticated(Unauthorized):
    """401 with the challenge a client needs (RFC 6750 §3)."""

    headers: ClassVar[dict[str, str]] = {
        "WWW-Authenticate": 'Bearer realm="huren", ApiKey realm="huren"'
    }


def _container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


def set_viewer_cookie(response: Response, token: str, max_age: int, *, https: bool) -> None:
    """HttpOnly. Over HTTPS SameSite=None, Secure and Partitioned, so that it is sent
    inside the HIS's cross-site frame (CHIPS keeps it to that frame's top-level site);
    over plain HTTP browsers refuse SameSite=None, so Lax (a new tab or a same-site
    frame). ``max_age=0`` deletes it."""
    response.set_cookie(
        VIEWER_COOKIE,
        token,
        max_age=max_age,
        httponly=True,
        samesite="none" if https else "lax",
        secure=https,
        path="/",
    )
    if https:
        # Partitioned by hand: Starlette's ``partitioned=`` needs Python 3.14.
        prefix = f"{VIEWER_COOKIE}=".encode()
        response.raw_headers[:] = [
            (k, v + b"; Partitioned" if k == b"set-cookie" and v.startswith(prefix) else v)
            for k, v in response.raw_headers
        ]


def cds_audiences(request: Request, configured_base: str) -> list[str]:
    """The URLs a CDS client may name in its JWT's ``aud`` for this request: the
    endpoint invoked (CDS Hooks 2.0 §Trusting CDS Clients), by the configured public
    URL and by the URL the request came to; for a feedback call also its service's URL
    (clients differ in which one they sign for)."""
    path = request.url.path.rstrip("/")
    paths = [path]
    if path.endswith(FEEDBACK_SUFFIX):
        paths.append(path.removesuffix(FEEDBACK_SUFFIX))
    bases = [str(request.base_url).rstrip("/")]
    if configured_base:
        bases.insert(0, configured_base.rstrip("/"))
    return [base + p for base in bases for p in paths]


def viewer_cookie_redirect(request: Request, c: Container, token: str) -> RedirectResponse:
    """A page opened with ``?token=`` (a HIS frame: no session cookie), the token already
    checked: reload it without the token in its address (history, Referer), the token
    now in the viewer cookie, which lives no longer than the token."""
    claims = c.accounts.tokens.decode(token)
    remaining = int((claims.expires_at - c.clock.now()).total_seconds()) if claims else 0
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
    response = RedirectResponse(target, status_code=303)
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    set_viewer_cookie(response, token, max(1, remaining), https=request.url.scheme == "https")
    return response


def _viewer_cookie(request: Request) -> str:
    if request.method not in ("GET", "HEAD"):
        return ""
    if not request.url.path.startswith(VIEWER_COOKIE_PATHS):
        return ""
    return request.cookies.get(VIEWER_COOKIE, "")


# The JOSE headers (a token's first, base64url segment) of bearer tokens that this platform
# issued and that authenticated under /cds-services: no CDS client's JWT has one of them.
# ``client_header`` judges a token by its header alone (a token that does not parse is no
# client JWT either), so a header it once found to be the platform's (HS256, no ``kid``)
# on a token that parsed is the platform's on every token; parsing it again with PyJWT on
# every call was half the CPU of authenticating a CDS Hooks call (issue 5). All of this
# platform's tokens share one header; the bound only keeps the set small.
_PLATFORM_HEADERS: set[str] = set()
PLATFORM_HEADERS_KEPT = 16


def _resolve(request: Request) -> Principal | None:
    """The principal of the request's credentials; None when there are none at all;
    raises NotAuthenticated when credentials are present but not valid."""
    cached = getattr(request.state, "principal", None)
    if isinstance(cached, Principal):
        return cached
    accounts = _container(request).accounts
    headers = request.headers
    header = headers.get("authorization", "").strip()
    try:
        if header:
            scheme, _, value = header.partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme == "bearer" and value:
                container = _container(request)
                clients = container.cds_clients
                # The path as routed (what request.url.path is made from, without
                # building the whole URL).
                cds = request.scope["path"].startswith(CDS_PATH)
                jose_segment = value.partition(".")[0]
                jose = (
                    clients.client_header(value)
                    if cds and jose_segment not in _PLATFORM_HEADERS
                    else None
                )
                if jose is not None:
                    principal = clients.principal_from_jwt(
                        value, cds_audiences(request, container.settings.base_url), jose
                    )
                else:
                    principal = accounts.principal_from_token(value)
                    if cds and len(_PLATFORM_HEADERS) < PLATFORM_HEADERS_KEPT:
                        _PLATFORM_HEADERS.add(jose_segment)
            elif scheme == "apikey" and value:
                principal = accounts.principal_from_api_key(value)
            else:
                raise NotAuthenticated("不支持的认证方式，请使用 Bearer 令牌或 ApiKey")
        elif x_api_key := headers.get("x-api-key", "").strip():
            principal = accounts.principal_from_api_key(x_api_key)
        elif cookie := request.cookies.get(SESSION_COOKIE, ""):
            principal = accounts.principal_from_token(cookie)
        elif viewer := _viewer_cookie(request):
            principal = accounts.principal_from_token(viewer)
        else:
            return None
    except NotAuthenticated:
        raise
    except Unauthorized as exc:
        raise NotAuthenticated(exc.message) from exc
    request.state.principal = principal
    return principal


def optional_principal(request: Request) -> Principal | None:
    """The caller if authenticated, else None. Invalid credentials count as none (a page
    then redirects to the login form rather than failing)."""
    try:
        return _resolve(request)
    except Unauthorized:
        return None


def current_principal(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
    _api_key: Annotated[str | None, Depends(api_key_scheme)] = None,
) -> Principal:
    """Dependency: the authenticated caller (any role). The two unused parameters only
    declare the security schemes in the OpenAPI document."""
    principal = _resolve(request)
    if principal is None:
        raise NotAuthenticated("尚未登录或令牌无效")
    return principal


def require_roles(*roles: Role) -> Callable[..., Principal]:
    """Dependency: the caller, who must hold one of ``roles``."""
    allowed = frozenset(roles)
    labels = "、".join(ROLE_LABELS[r] for r in roles)

    def dependency(
        request: Request,
        _bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)] = None,
        _api_key: Annotated[str | None, Depends(api_key_scheme)] = None,
    ) -> Principal:
        principal = current_principal(request)
        if principal.role not in allowed:
            raise Forbidden(
                f"当前角色（{ROLE_LABELS[principal.role]}）无权执行此操作；允许: {labels}"
            )
        return principal

    dependency.allowed_roles = allowed  # type: ignore[attr-defined]  # read by tests and docs
    return dependency


def principal_can_see_institution(
    principal: Principal, institution_code: str, catalog: Catalog
) -> bool:
    """Institution roles: their own institution; jurisdiction roles: institutions their
    jurisdiction covers; operator: all; patients: none."""
    return can_see_institution(principal, institution_code, catalog.graph)


def principal_can_act_in_scope(principal: Principal, scope_code: str, catalog: Catalog) -> bool:
    """Jurisdiction roles within their own jurisdiction; operator everywhere."""
    return can_act_in_scope(principal, scope_code, catalog.graph)


def require_institution_visible(
    principal: Principal, institution_code: str, catalog: Catalog
) -> None:
    if not principal_can_see_institution(principal, institution_code, catalog):
        raise Forbidden(f"无权访问机构 {institution_code} 的数据")
