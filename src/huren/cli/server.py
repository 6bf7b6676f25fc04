"""Runs the HTTP server with the MLLP and DICOM listeners in one process."""

from __future__ import annotations

import gc

import uvicorn

from huren.api.app import create_app
from huren.bootstrap import build
from huren.config import Settings


def run_server(settings: Settings, host: str, port: int) -> None:
    container = build(settings)
    app = create_app(container)
    if settings.start_mllp:
        from huren.api.routes.hl7v2 import install_mllp_listener

        install_mllp_listener(app)
    # Everything built so far (modules, catalog, app) lives as long as the process: keep it
    # out of the garbage collector's generations so collections stay short on hot paths.
    gc.collect()
    gc.freeze()
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
