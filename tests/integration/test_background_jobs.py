"""A running node folds new decisions into the monitoring aggregates by itself."""

from __future__ import annotations

import time
from datetime import timedelta

from fastapi.testclient import TestClient

from huren.api.app import create_app
from huren.bootstrap import Container, build
from tests.fixtures import governance as g
from tests.fixtures import world as w


def _one_old_decision(c: Container) -> None:
    patient = g.add_patient(c.engine, c.clock.now())
    g.add_decision(
        c.engine,
        patient_id=patient,
        institution=w.HOSP_B,
        item=w.LFT,
        at=c.clock.now() - timedelta(hours=2),
        action="accepted",
    )


def test_server_refreshes_monitoring_aggregates_in_the_background(world: Container) -> None:
    _one_old_decision(world)
    settings = world.settings.model_copy(
        update={"background_jobs": True, "monitoring_refresh_seconds": 0.05}
    )
    running = build(settings, clock=world.clock)
    with TestClient(create_app(running)):
        time.sleep(1.0)
    running.close()
    assert world.monitoring.refresh().decisions == 0  # already folded in by the server


def test_without_the_background_job_the_decision_waits(world: Container) -> None:
    _one_old_decision(world)
    with TestClient(create_app(world)):
        time.sleep(0.2)
    assert world.monitoring.refresh().decisions == 1
