"""Resolve marks for N (result, ordering institution) pairs: the mark a result carries at
issue time (``Catalog.mark_for``) and whether the ordering institution lies in its scope
(``mark_recognized_at``), against a plain dict lookup over the same pairs.

    uv run python -m bench.bench_marks [--pairs 1000000] [--institutions 300]
"""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta

from bench.harness import Suite
from huren.adapters import reference_data
from huren.domain.marks import mark_recognized_at
from huren.services.catalog import Catalog
from huren.services.synth import SynthConfig, generate_world

UNTIL = datetime(2026, 6, 15, 9, 30, tzinfo=UTC)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--institutions", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    world = generate_world(
        reference_data.synth_reference(),
        SynthConfig(seed=1, results=0, until=UNTIL, institutions=args.institutions),
    )
    catalog = Catalog.build(world.records, UNTIL)
    rng = random.Random(2)
    insts = sorted(catalog.institutions)
    pairs = []
    for _ in range(args.pairs):
        producer = rng.choice(insts)
        offered = world.offered[producer] or (next(iter(catalog.items)),)
        issued = UNTIL - timedelta(seconds=rng.randrange(700 * 86400))
        pairs.append((producer, rng.choice(offered), issued, rng.choice(insts)))
    table = {(p, i, o): True for p, i, _, o in pairs}  # the baseline: a precomputed answer
    graph = catalog.graph

    def dict_lookup() -> int:
        hits = 0
        for p, i, _, o in pairs:
            hits += table[(p, i, o)]
        return hits

    def resolve() -> int:
        hits = 0
        for p, i, issued, o in pairs:
            hits += mark_recognized_at(catalog.mark_for(p, i, issued), o, graph)
        return hits

    suite = Suite(
        f"marks for {args.pairs:,} (result, ordering institution) pairs, "
        f"{len(insts)} institutions, {sum(len(v) for v in catalog.qualifications.values()):,} qualifications",
        unit="pairs",
    )
    suite.run("plain dict lookup", dict_lookup, repeat=args.repeat, ops=args.pairs, baseline=True)
    suite.run("mark_for + mark_recognized_at", resolve, repeat=args.repeat, ops=args.pairs)
    suite.print()


if __name__ == "__main__":
    main()
