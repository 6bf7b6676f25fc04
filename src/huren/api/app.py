"""The ASGI application: REST API under /api/v1, FHIR under /fhir, CDS Hooks under
/cds-services, DICOMweb under /dicomweb, and the web pages."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from huren.adapters.db.engine import require_migrated
from huren.api import problems
from huren.api.app_paths import STATIC_DIR
from huren.api.background import install_background_jobs
from huren.api.routes import ROUTERS, page_errors
from huren.api.routes import imaging as imaging_routes
from huren.bootstrap import Container

log = logging.getLogger("huren")


def create_app(container: Container, *, check_migrated: bool = True) -> FastAPI:
    """Build the app. ``check_migrated`` refuses to start on an unmigrated database."""
    if check_migrated:
        require_migrated(container.engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for start in app.state.on_startup:
            await start(app)
        try:
            yield
        finally:
            for stop in reversed(app.state.on_shutdown):
                await stop(app)

    app = FastAPI(
        title="HuRen 互认 — 医疗机构检查检验结果互认共享平台",
        version="0.1.0",
        description="检查检验结果互认共享: 清单、标识、结果上传、互认提醒、调阅、纠错、质控与监管。",
        lifespan=lifespan,
    )
    app.state.container = container
    app.state.on_startup = []
    app.state.on_shutdown = []
    problems.install(app)
    page_errors.install_not_found_page(app)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for router in ROUTERS:
        app.include_router(router)
    if container.settings.start_dicom:
        imaging_routes.install_dicom_listener(app)
    if container.settings.background_jobs:
        install_background_jobs(app, container)
    return app
