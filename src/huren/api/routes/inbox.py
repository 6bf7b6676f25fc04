"""Inbox (站内消息): notifications of correction requests and corrected results, for
every role — API under /api/v1/inbox and the page /inbox."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel

from huren.api.auth import optional_principal, require_roles
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.api.routes.retrieval import local
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role

router = APIRouter(tags=["消息"], route_class=PageRoute)

Anyone = Annotated[Principal, Depends(require_roles(*Role))]
Services = Annotated[Container, Depends(container)]


class NotificationOut(BaseModel):
    id: int
    created_at: datetime
    kind: str
    title: str
    body: str
    result_id: int | None
    correction_id: int | None
    read_at: datetime | None


@router.get("/api/v1/inbox", response_model=list[NotificationOut], summary="我的消息")
def inbox(principal: Anyone, c: Services, unread_only: bool = False) -> list[NotificationOut]:
    return [NotificationOut(**n) for n in c.sharing.corrections.inbox(principal, unread_only)]


@router.post("/api/v1/inbox/{notification_id}/read", status_code=204, summary="标记为已读")
def mark_read(notification_id: int, principal: Anyone, c: Services) -> Response:
    c.sharing.corrections.mark_read(principal, notification_id)
    return Response(status_code=204)


def link_for(n: dict[str, object], role: Role) -> str | None:
    if (
        n.get("correction_id")
        and role is Role.INSTITUTION_ADMIN
        and n["kind"] == "correction_filed"
    ):
        return f"/corrections/{n['correction_id']}"
    if n.get("result_id"):
        if role is Role.PATIENT:
            return f"/patient/results/{n['result_id']}"
        return f"/retrieval/results/{n['result_id']}?purpose=correction"
    return None


@router.get("/inbox", response_class=HTMLResponse, include_in_schema=False)
def inbox_page(
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    items = c.sharing.corrections.inbox(user)
    for n in items:
        n["created_at"] = local(n["created_at"])
        n["link"] = link_for(n, user.role)
    base = "patient/base.html" if user.role is Role.PATIENT else "base.html"
    return templates.TemplateResponse(
        request, "inbox/inbox.html", {"user": user, "items": items, "base": base}
    )


@router.post("/inbox/{notification_id}/read", include_in_schema=False)
def mark_read_page(
    notification_id: int,
    request: Request,
    user: Annotated[Principal | None, Depends(optional_principal)],
    c: Services,
) -> Response:
    if user is None:
        return login_redirect(request)
    c.sharing.corrections.mark_read(user, notification_id)
    return RedirectResponse("/inbox", status_code=303)
