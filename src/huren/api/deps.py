"""Request dependencies: the container, templates."""

from __future__ import annotations

from fastapi import Request
from fastapi.templating import Jinja2Templates

from huren.api.app_paths import TEMPLATES_DIR
from huren.bootstrap import Container
from huren.domain.results import display_unit, flag_mark, number_text

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
# A limit kept only as a number, written without loss ("9", not "9.0"; "0.1234567").
templates.env.filters["numerals"] = lambda v: "" if v is None else number_text(v)
templates.env.filters["unit"] = display_unit
templates.env.filters["flag"] = lambda f: flag_mark(f or "")


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c
