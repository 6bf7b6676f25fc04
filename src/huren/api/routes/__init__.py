"""Every router the app serves, in one list. An area adds its module here."""

from fastapi import APIRouter

from huren.api.routes import health

ROUTERS: list[APIRouter] = [health.router]
