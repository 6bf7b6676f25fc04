"""Migration 0009 empties the monitoring aggregates so the refresh counts them anew with
the current rule; the source rows stay, and the refresh rebuilds the same figures a full
recompute gives."""

from __future__ import annotations

from alembic import command
from sqlalchemy import func, select

from huren.adapters.db import engine as db_engine
from huren.adapters.db import tables as t
from huren.adapters.db import tables_governance as g
from huren.bootstrap import Container
from tests.fixtures import governance as gv


def _count(c: Container, table: object) -> int:
    with c.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def test_the_aggregates_are_counted_anew_after_the_upgrade(world: Container) -> None:
    gv.add_peers(world.engine)
    world.catalog.invalidate()
    gv.seed_activity(world.engine)
    world.monitoring.refresh()
    assert _count(world, g.monitoring_month) > 0
    decisions = _count(world, t.decision)
    url = world.engine.url.render_as_string(hide_password=False)
    command.downgrade(db_engine.alembic_config(url), "0008")
    command.upgrade(db_engine.alembic_config(url), "head")
    assert _count(world, g.monitoring_month) == 0
    assert _count(world, g.monitoring_cursor) == 0
    assert _count(world, t.decision) == decisions  # the sources stay
    world.monitoring.refresh()
    refreshed = _count(world, g.monitoring_month)
    world.monitoring.recompute()
    assert _count(world, g.monitoring_month) == refreshed > 0
