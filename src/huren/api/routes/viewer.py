"""The image viewer page (issue 4 §5): for an imaging result or a study, the report with
findings and conclusion apart, the completeness verdict, the series with thumbnails and a
stack viewer with window presets. Offline: vanilla JS in /static/viewer.js, images from
this node's WADO-RS ``/rendered`` — no CDN."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from huren.api.auth import optional_principal, viewer_cookie_redirect
from huren.api.deps import container, templates
from huren.api.routes.auth import login_redirect
from huren.api.routes.page_errors import PageRoute
from huren.bootstrap import Container
from huren.domain.accounts import Principal, Role
from huren.domain.china_time import local_time
from huren.domain.errors import Forbidden, Unauthorized
from huren.domain.imaging import WINDOW_PRESETS
from huren.services.imaging import AuditRecord, StudyView

router = APIRouter(prefix="/imaging", tags=["影像"], include_in_schema=False, route_class=PageRoute)

VIEWER_ROLES = frozenset({Role.CLINICIAN, Role.INSTITUTION_ADMIN, Role.OPERATOR})
page_user = optional_principal  # overridable in tests

Services = Annotated[Container, Depends(container)]
User = Annotated[Principal | None, Depends(page_user)]


def _check(user: Principal) -> None:
    if user.role not in VIEWER_ROLES:
        raise Forbidden("仅临床医师可在线查看影像；患者请使用下载功能")


def _page(
    request: Request, c: Container, user: Principal, view: StudyView, result_id: int | None
) -> Response:
    c.imaging.audit(
        AuditRecord(
            at=c.clock.now(),
            actor=user.username,
            role=user.role.value,
            action="imaging_view",
            account_id=user.account_id,
            institution=user.institution,
            patient_id=view.report.patient_id if view.report else None,
            result_id=result_id or (view.report.result_id if view.report else None),
            purpose="影像调阅",
        )
    )
    inst = c.catalog.get().institutions.get(view.study.institution)
    return templates.TemplateResponse(
        request,
        "viewer/viewer.html",
        {
            "user": user,
            "view": view,
            "study": view.study,
            "report": view.report,
            "status": view.status,
            "presets": WINDOW_PRESETS,
            # The institution by name, and the report's time in China time (stored in UTC).
            "institution_name": inst.name if inst else view.study.institution,
            "issued": local_time(view.report.issued_at) if view.report else "",
        },
        headers=_frame_headers(c),
    )


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(study_uid: str, request: Request, user: User, c: Services) -> Response:
    if user is None:
        return login_redirect(request)
    _check(user)
    return _page(request, c, user, c.imaging.study_view(study_uid), None)


def _frame_headers(c: Container) -> dict[str, str]:
    """The viewer may sit in the same HIS frames as the workbench, and no others."""
    return {"Content-Security-Policy": f"frame-ancestors {c.settings.workbench_frame_ancestors}"}


def _session_from_token(request: Request, c: Container, token: str) -> Response:
    """The viewer opened from the workbench in token mode (a HIS frame carries the
    clinician's access token in the URL and has no session cookie): the token becomes the
    viewer cookie and the page reloads without the token in its address — so that its
    thumbnail and WADO-RS requests are authenticated and the token leaves the address bar,
    the history and any Referer.

    Not the login session: ``huren_viewer`` is honoured only for GET/HEAD of the viewer and
    DICOMweb (``huren.api.auth``), so a link carrying someone else's token cannot swap the
    browser's session (login CSRF) nor act in it. Its attributes: ``set_viewer_cookie``;
    it lives no longer than the token, and logging out clears it."""
    try:
        principal = c.accounts.principal_from_token(token)
    except Unauthorized:
        return RedirectResponse(f"/login?next={quote(request.url.path, safe='')}", status_code=303)
    _check(principal)
    return viewer_cookie_redirect(request, c, token)


@router.get("/results/{result_id}", response_class=HTMLResponse)
def result_page(
    result_id: int,
    request: Request,
    user: User,
    c: Services,
    token: Annotated[str, Query(max_length=4000)] = "",
) -> Response:
    if token:
        return _session_from_token(request, c, token)
    if user is None:
        return login_redirect(request)
    _check(user)
    report, view, status = c.imaging.result_view(result_id)
    if view is None:
        return templates.TemplateResponse(
            request,
            "viewer/missing.html",
            {"user": user, "report": report, "status": status},
            headers=_frame_headers(c),
        )
    return _page(request, c, user, view, result_id)
