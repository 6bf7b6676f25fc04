"""A tiny benchmark harness: measure callables N times, report rate, p50/p99 and the ratio
to a baseline measured in the same run, and print a table.

Benchmarks are not timed tests: they print numbers side by side so a change shows as a
ratio against a baseline that ran on the same machine, at the same moment."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    ops_per_call: int  # work units done by one call (pairs, rows …)
    seconds: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        s = sorted(self.seconds)
        return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]

    @property
    def rate(self) -> float:
        """Work units per second at the median."""
        return self.ops_per_call / self.p50 if self.p50 else float("inf")


def measure(
    name: str, fn: Callable[[], object], *, repeat: int = 5, ops: int = 1, warmup: int = 1
) -> Measurement:
    """Run ``fn`` ``warmup`` times unmeasured, then ``repeat`` times measured."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Measurement(name, ops, times)


@dataclass
class Suite:
    """Measurements of one run; the first one added with ``baseline=True`` is the baseline."""

    title: str
    unit: str = "ops"
    results: list[Measurement] = field(default_factory=list)
    baseline: Measurement | None = None

    def add(self, m: Measurement, *, baseline: bool = False) -> Measurement:
        self.results.append(m)
        if baseline and self.baseline is None:
            self.baseline = m
        return m

    def run(
        self,
        name: str,
        fn: Callable[[], object],
        *,
        repeat: int = 5,
        ops: int = 1,
        warmup: int = 1,
        baseline: bool = False,
    ) -> Measurement:
        return self.add(measure(name, fn, repeat=repeat, ops=ops, warmup=warmup), baseline=baseline)

    def ratio(self, m: Measurement) -> float:
        """How many times slower than the baseline (time per unit of work)."""
        if self.baseline is None:
            return 1.0
        return (m.p50 / m.ops_per_call) / (self.baseline.p50 / self.baseline.ops_per_call)

    def table(self) -> str:
        head = f"{'benchmark':<44} {self.unit + '/s':>14} {'p50 ms':>10} {'p99 ms':>10} {'× baseline':>11}"
        lines = [self.title, head, "-" * len(head)]
        for m in self.results:
            mark = " (baseline)" if m is self.baseline else ""
            lines.append(
                f"{(m.name + mark):<44} {m.rate:>14,.0f} {m.p50 * 1e3:>10.2f} "
                f"{m.p99 * 1e3:>10.2f} {self.ratio(m):>11.2f}"
            )
        return "\n".join(lines)

    def print(self) -> None:
        print(self.table())
