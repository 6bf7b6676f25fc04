"""Request dependencies: the container, templates."""

from __future__ import annotations

from fastapi import Request
from fastapi.templating import Jinja2Templates

from huren.api.app_paths import TEMPLATES_DIR
from huren.bootstrap import Container

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c
