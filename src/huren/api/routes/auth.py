"""OAuth2 token endpoint, who-am-I, and the login/logout pages."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from huren.api.auth import (
    ALL_ROLES,
    SESSION_COOKIE,
    optional_principal,
    require_roles,
    set_viewer_cookie,
)
from huren.api.deps import container, templates
from huren.api.problems import PROBLEM
from huren.api.routes.page_errors import PageRoute
from huren.api.schemas.auth import PrincipalOut, TokenOut
from huren.bootstrap import Container
from huren.domain.accounts import ROLE_LABELS, Principal
from huren.domain.errors import Unauthorized
from huren.domain.text import text_problem
from huren.services.accounts import TooManyAttempts

router = APIRouter(tags=["认证"], route_class=PageRoute)

_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "请求无效（RFC 6749 §5.2 error）", "content": {PROBLEM: {}}},
    401: {"description": "凭据无效", "content": {PROBLEM: {}}},
    429: {"description": "登录失败次数过多", "content": {PROBLEM: {}}},
}


def _client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def _oauth_error(status: int, error: str, detail: str) -> JSONResponse:
    """RFC 6749 §5.2 error, carried in our problem+json shape (``error`` kept for OAuth2
    client libraries)."""
    body = {
        "type": f"https://huren.example/problems/{error}",
        "title": "认证失败",
        "status": status,
        "code": error,
        "error": error,
        "detail": detail,
    }
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="huren"'
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, secret) if sep else None


@router.post(
    "/api/v1/auth/token",
    response_model=TokenOut,
    summary="获取访问令牌（OAuth2 password / client_credentials）",
    responses=_PROBLEM_RESPONSES,
)
def token(
    request: Request,
    c: Annotated[Container, Depends(container)],
    grant_type: Annotated[str, Form(description="password 或 client_credentials")],
    username: Annotated[str | None, Form()] = None,
    password: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
    scope: Annotated[str | None, Form(description="暂不使用")] = None,
) -> Any:
    """Anyone may call it (it is how one authenticates). ``password`` grant: username and
    password of a person's account. ``client_credentials``: an integration system's
    username (or key prefix) as ``client_id`` and its API key as ``client_secret``, in
    the form or as HTTP Basic (RFC 6749 §2.3.1)."""
    client = _client_address(request)
    try:
        if grant_type == "password":
            if not username or not password:
                return _oauth_error(400, "invalid_request", "缺少 username 或 password")
            principal = c.accounts.authenticate_password(username, password, client)
        elif grant_type == "client_credentials":
            basic = _basic_credentials(request)
            cid, secret = basic if basic else (client_id, client_secret)
            if not cid or not secret:
                return _oauth_error(400, "invalid_request", "缺少 client_id 或 client_secret")
            try:
                principal = c.accounts.authenticate_client(cid, secret, client)
            except Unauthorized as exc:
                return _oauth_error(401, "invalid_client", exc.message)
        else:
            return _oauth_error(400, "unsupported_grant_type", f"不支持的授权类型: {grant_type}")
    except TooManyAttempts as exc:
        return _oauth_error(429, "too_many_attempts", exc.message)
    except Unauthorized as exc:
        return _oauth_error(400, "invalid_grant", exc.message)
    issued = c.accounts.issue_token(principal)
    return JSONResponse(
        TokenOut(access_token=issued.access_token, expires_in=issued.expires_in).model_dump(),
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


@router.get(
    "/api/v1/auth/me",
    response_model=PrincipalOut,
    summary="当前用户",
    responses={401: {"description": "未认证", "content": {PROBLEM: {}}}},
)
def me(principal: Annotated[Principal, Depends(require_roles(*ALL_ROLES))]) -> PrincipalOut:
    """Every authenticated role."""
    return PrincipalOut(
        account_id=principal.account_id,
        username=principal.username,
        display_name=principal.display_name,
        role=principal.role,
        role_label=ROLE_LABELS[principal.role],
        institution=principal.institution,
        jurisdiction=principal.jurisdiction,
        department=principal.department,
        patient_id=principal.patient_id,
    )


# ---------------------------------------------------------------- pages
def safe_next(target: str | None) -> str:
    """Only same-site paths: never an absolute URL or a scheme-relative ``//host``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def login_redirect(request: Request) -> RedirectResponse:
    """Where a page sends a visitor who is not logged in."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


@router.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    next: str = "/",
) -> Response:
    return templates.TemplateResponse(
        request, "login.html", {"user": user, "next": safe_next(next), "error": "", "username": ""}
    )


@router.post("/login", response_class=HTMLResponse, include_in_schema=False)
def login_submit(
    request: Request,
    c: Annotated[Container, Depends(container)],
    username: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    target = safe_next(next)
    try:
        for value, label in ((username, "用户名"), (password, "密码")):
            if problem := text_problem(value):
                # Checked here: PostgreSQL refuses a NUL in the account lookup.
                raise Unauthorized(f"{label}{problem}")
        principal = c.accounts.authenticate_password(
            username.strip(), password, _client_address(request)
        )
    except (Unauthorized, TooManyAttempts) as exc:
        status = 429 if isinstance(exc, TooManyAttempts) else 401
        return templates.TemplateResponse(
            request,
            "login.html",
            {"user": None, "next": target, "error": exc.message, "username": username},
            status_code=status,
        )
    issued = c.accounts.issue_token(principal)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        issued.access_token,
        max_age=issued.expires_in,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.get("/logout", response_class=HTMLResponse, include_in_schema=False)
def logout_page(
    request: Request, user: Annotated[Principal | None, Depends(optional_principal)]
) -> Response:
    """A page asking to confirm: logging out is a POST, so that a link or an image on
    another site cannot log a user out (a cross-site POST carries no SameSite=Lax
    cookie). Nobody logged in: the login page."""
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return templates.TemplateResponse(request, "logout.html", {"user": user})


@router.post("/logout", include_in_schema=False)
def logout(request: Request) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    set_viewer_cookie(response, "", 0, https=request.url.scheme == "https")
    return response
