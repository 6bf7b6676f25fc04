from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel
from sqlalchemy import text

from huren.adapters.db.engine import current_revision
from huren.api.deps import container
from huren.bootstrap import Container

router = APIRouter(tags=["运维"])


class HealthOut(BaseModel):
    status: str
    database: str
    schema_revision: str | None


@router.get("/healthz", response_model=HealthOut, summary="健康检查")
def healthz(c: Annotated[Container, Depends(container)]) -> HealthOut:
    with c.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return HealthOut(
        status="ok", database=c.engine.dialect.name, schema_revision=current_revision(c.engine)
    )
