"""Periodic jobs of a running node, in-process: no scheduler or broker to run beside it
(embedded mode needs nothing but Python and SQLite).

- monitoring aggregates: folded in incrementally from the reminder, decision and result
  tables every ``monitoring_refresh_seconds`` (the dashboard stays fast as data grows);
- qualifications past their re-evaluation date are closed once an hour (沪卫医〔2024〕135号
  五(二): 参加相应质量评价的频次不得少于半年一次; 甘: 每年).

Each job runs in a worker thread; a failure is logged and retried at the next tick.

``huren serve --workers N`` runs the jobs in worker 0 only (``huren.cli.server``); two
processes running them at the same moment (separate nodes on one database) are safe:
``qc.close_expired`` records an expiry only if the qualification is still active when it
writes (a compare-and-set), and two monitoring refreshes on SQLite only fail each
other's write. Run again after one has committed, both jobs change nothing (the refresh
counts from its locked watermark)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fastapi import FastAPI

from huren.bootstrap import Container

log = logging.getLogger("huren.background")


async def _every(seconds: float, name: str, job: Callable[[], object]) -> None:
    while True:
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.exception("后台任务 %s 失败，将在下一周期重试", name)
        await asyncio.sleep(seconds)


def install_background_jobs(app: FastAPI, container: Container) -> None:
    tasks: list[asyncio.Task[None]] = []
    seconds = container.settings.monitoring_refresh_seconds

    async def start(_: FastAPI) -> None:
        tasks.append(
            asyncio.create_task(_every(seconds, "monitoring.refresh", container.monitoring.refresh))
        )
        tasks.append(
            asyncio.create_task(_every(3600, "qc.close_expired", container.qc.close_expired))
        )

    async def stop(_: FastAPI) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    app.state.on_startup.append(start)
    app.state.on_shutdown.append(stop)
