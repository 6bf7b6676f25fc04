"""Synthetic world generation and bulk load (rows/s) against the backend's raw insert path
(executemany / COPY of plain three-column rows) measured in the same run.

    uv run python -m bench.bench_synth [--results 20000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import Measurement, Suite
from huren.adapters import reference_data
from huren.adapters.crypto import IdentifierCrypto, new_key
from huren.adapters.db import engine as db_engine
from huren.adapters.db.bulk import bulk_sink, raw_insert_rate_probe
from huren.services.synth import SynthConfig, run_synth

UNTIL = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", type=int, default=20_000)
    ap.add_argument("--database-url", default="", help="an EMPTY database (default: temp SQLite)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        db_engine.upgrade(url)
        engine = db_engine.make_engine(url)
        vault = IdentifierCrypto(new_key(), new_key())
        cfg = SynthConfig(seed=1, results=args.results, until=UNTIL)
        report = run_synth(
            reference_data.synth_reference(), cfg, vault, bulk_sink(engine), timer=time.perf_counter
        )
        suite = Suite(
            f"synth {args.results:,} results into {engine.url.get_backend_name()}", unit="rows"
        )
        probe_rows = max(report.rows, 50_000)
        suite.run(
            "raw executemany/COPY, 3 columns",
            lambda: raw_insert_rate_probe(engine, probe_rows),
            repeat=3,
            ops=probe_rows,
            baseline=True,
        )
        suite.add(Measurement("huren synth (generate + write)", report.rows, [report.seconds]))
        engine.dispose()
    suite.print()
    print(report.summary())


if __name__ == "__main__":
    main()
