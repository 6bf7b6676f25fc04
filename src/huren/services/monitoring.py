"""Monitoring use cases (R9): keep the aggregates up to date, answer statistics by region,
institution, department, clinician, item and month, find outliers among peers, and report
progress against the policy targets.

Aggregation is incremental: ``refresh`` reads the reminders, decisions and results written
since the last run (a watermark per source in ``monitoring_cursor``) and adds their counts
to the monthly aggregates in the same transaction that moves the watermark. A watermark
job rather than an outbox, because the rows to count are written by other areas (point of
care, intake) whose transactions should not grow a second insert per reminder; the id
order of the source tables already is the queue. Rows are only taken once they are
``settle`` old: on PostgreSQL ids are handed out before commit, so a row with a lower id
may become visible after a higher one — waiting until no transaction that old can still be
open keeps the watermark from skipping it. ``recompute`` rebuilds everything (repair).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from huren.domain.accounts import Principal, can_see_institution
from huren.domain.china_time import CHINA_TZ
from huren.domain.errors import NotFound, Problem, ValidationFailed
from huren.domain.masterdata import ScopeKind
from huren.domain.monitoring import (
    Counters,
    Finding,
    Metric,
    Progress,
    Subject,
    Target,
    TargetFacts,
    TargetMetric,
    find_outliers,
    month_of,
    peer_group_label,
    target_progress,
)
from huren.domain.results import EARLIEST_RESULT_TIME, LATEST_RESULT_TIME, plausible_date
from huren.domain.text import is_digits
from huren.services.catalog import Catalog, CatalogCache
from huren.services.ports import Clock

# month, institution, department, clinician, item
FineKey = tuple[date, str, str, str, str]
# month, institution, department, clinician, item, reason
DeclineKey = tuple[date, str, str, str, str, str]

COUNTED_RESULT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})
COUNTED_ACTIONS = ("accepted", "declined")


@dataclass(frozen=True, slots=True)
class ReminderFact:
    id: int
    at: datetime
    institution: str
    department: str
    clinician: str
    item: str
    recognizable: int


@dataclass(frozen=True, slots=True)
class DecisionFact:
    id: int
    at: datetime
    institution: str
    department: str
    clinician: str
    item: str
    action: str
    reason_code: str
    saved_fen: int
    # Whether the reminder the decision answers had a recognizable prior to propose. A
    # clinician may accept a prior it did not propose (beyond the 参考时限, which is a
    # reference: 甘卫医政函〔2025〕16号) or a report the patient brought (冀卫医政函〔2025〕7号
    # 二(三)), where there was no reminder at all.
    proposed: bool = True


@dataclass(frozen=True, slots=True)
class ResultFact:
    id: int
    updated_at: datetime
    patient_id: int
    institution: str
    department: str
    item: str | None
    status: str
    performed_at: datetime
    issued_at: datetime


class MonitoringTx(Protocol):
    def cursor(self, source: str) -> int: ...
    def set_cursor(self, source: str, last_id: int, at: datetime) -> None: ...
    def reminders_after(self, last_id: int, limit: int) -> list[ReminderFact]: ...
    def decisions_after(self, last_id: int, limit: int) -> list[DecisionFact]: ...
    def results_after(self, last_id: int, limit: int) -> list[ResultFact]: ...
    def repeated_without_decision(self, r: ResultFact, since: datetime) -> bool:
        """Is there a counted result of the same item for the same patient at another
        institution performed in [since, r.performed_at), and no decision recorded at
        r's institution for that patient and item from ``since`` to r.issued_at?"""
        ...

    def apply(self, fine: Mapping[FineKey, Counters], declines: Mapping[DeclineKey, int]) -> None:
        """Add the deltas to ``monitoring_month``, ``monitoring_month_inst`` and
        ``monitoring_decline``."""
        ...

    def clear_aggregates(self) -> None: ...
    def max_id(self, source: str) -> int: ...
    def rebuild_from_sources(self, upto_reminder: int, upto_decision: int) -> None:
        """Set-based rebuild of the reminder and decision counters (GROUP BY in SQL)."""
        ...


class Dimension(StrEnum):
    INSTITUTION = "institution"
    DEPARTMENT = "department"
    CLINICIAN = "clinician"
    ITEM = "item"
    MONTH = "month"


class MonitoringStore(Protocol):
    def transaction(self) -> AbstractContextManager[MonitoringTx]: ...

    def totals(
        self,
        dimension: Dimension,
        institutions: Sequence[str] | None,
        month_from: date,
        month_to: date,
        department: str | None = None,
    ) -> list[tuple[str, Counters]]:
        """Counters summed per ``dimension`` over the months [month_from, month_to]. A
        department or clinician breakdown needs exactly one institution."""
        ...

    def declines_by_reason(
        self,
        institutions: Sequence[str] | None,
        month_from: date,
        month_to: date,
        department: str | None = None,
    ) -> list[tuple[str, int]]: ...

    def institutions_with_results(self) -> frozenset[str]: ...

    def clinician_names(self, institution: str) -> dict[str, str]:
        """Username → name of the institution's clinician accounts (the workbench records
        the clinician by username)."""
        ...


def clinician_label(key: str, names: Mapping[str, str]) -> str:
    """A clinician as a regulator knows them: the name of their platform account, else
    the HIS's practitioner id without the FHIR resource type (CDS Hooks ``userId``
    "Practitioner/HXK001")."""
    return names.get(key) or key.removeprefix("Practitioner/") or "（未记录医师）"


class CorrectionBacklog(Protocol):
    def open_corrections(self, institutions: Sequence[str] | None) -> int | None:
        """Open correction requests (R7) of these institutions; None when the platform
        does not record corrections (yet)."""
        ...


@dataclass(frozen=True, slots=True)
class RefreshReport:
    reminders: int = 0
    decisions: int = 0
    results: int = 0
    repeats_found: int = 0


# Months a dashboard period may name: the month before and after each end still has to be
# a date (the monthly report compares with the previous month).
EARLIEST_MONTH = EARLIEST_RESULT_TIME.date()
LATEST_MONTH = date(LATEST_RESULT_TIME.year - 1, 12, 1)
MONTH_FIELDS = {"month_from": "起始月份", "month_to": "结束月份", "month": "月份"}


@dataclass(frozen=True, slots=True)
class Period:
    """A range of calendar months, both ends included (first days of months)."""

    start: date
    end: date

    @classmethod
    def parse(cls, month_from: str | None, month_to: str | None, today: date) -> Period:
        def one(value: str, name: str) -> date:
            label = MONTH_FIELDS[name]
            y, sep, m = value.strip().partition("-")
            try:
                if not (sep and is_digits(y) and is_digits(m)):
                    raise ValueError(value)
                month = date(int(y), int(m), 1)
            except ValueError as exc:
                raise ValidationFailed(
                    f"{label}格式应为 YYYY-MM",
                    problems=[Problem(name, f"无效的{label}: {value[:20]}")],
                ) from exc
            if not plausible_date(month):
                span = f"{EARLIEST_MONTH:%Y-%m} 至 {LATEST_MONTH:%Y-%m}"
                raise ValidationFailed(
                    f"{label}超出范围（应在 {span} 之间）",
                    problems=[Problem(name, f"{label}应在 {span} 之间")],
                )
            return month

        end = one(month_to, "month_to") if month_to else today.replace(day=1)
        start = one(month_from, "month_from") if month_from else _add_months(end, -11)
        if start > end:
            raise ValidationFailed(
                "起始月份不能晚于结束月份", problems=[Problem("month_from", "起始月份晚于结束月份")]
            )
        return cls(start, end)

    def months(self) -> list[date]:
        out, m = [], self.start
        while m <= self.end:
            out.append(m)
            m = _add_months(m, 1)
        return out

    @property
    def label(self) -> str:
        return f"{self.start:%Y-%m} 至 {self.end:%Y-%m}"


def _add_months(d: date, n: int) -> date:
    i = d.month - 1 + n
    return date(d.year + i // 12, i % 12 + 1, 1)


class Level(StrEnum):
    """Drill-down levels: 省 → 市 → 机构 → 科室 → 医师."""

    PROVINCE = "province"
    CITY = "city"
    INSTITUTION = "institution"
    DEPARTMENT = "department"
    CLINICIAN = "clinician"


LEVEL_NAMES: Mapping[Level, str] = {
    Level.PROVINCE: "省份",
    Level.CITY: "地市",
    Level.INSTITUTION: "医疗机构",
    Level.DEPARTMENT: "科室",
    Level.CLINICIAN: "医师",
}

_NEXT: Mapping[Level, Level | None] = {
    Level.PROVINCE: Level.CITY,
    Level.CITY: Level.INSTITUTION,
    Level.INSTITUTION: Level.DEPARTMENT,
    Level.DEPARTMENT: Level.CLINICIAN,
    Level.CLINICIAN: None,
}


@dataclass(frozen=True, slots=True)
class StatRow:
    key: str
    label: str
    counters: Counters
    drill: dict[str, str] | None = None  # query parameters of the next level, if any


@dataclass(frozen=True, slots=True)
class StatTable:
    level: Level
    title: str
    period: Period
    rows: list[StatRow]
    total: Counters
    parent: dict[str, str] = field(default_factory=dict)


class MonitoringService:
    def __init__(
        self,
        store: MonitoringStore,
        catalog: CatalogCache,
        clock: Clock,
        targets: Sequence[Target],
        backlog: CorrectionBacklog | None = None,
        settle: timedelta = timedelta(seconds=30),
    ) -> None:
        self._backlog = backlog
        self._store = store
        self._catalog = catalog
        self._clock = clock
        self._targets = list(targets)
        self._settle = settle

    # -------------------------------------------------------- aggregation
    def refresh(self, batch: int = 5000, max_batches: int | None = None) -> RefreshReport:
        """Count what was written since the last run. Each batch is one transaction that
        adds the counts and moves the watermark; running it twice counts nothing twice."""
        totals = RefreshReport()
        done = 0
        while max_batches is None or done < max_batches:
            report = self._refresh_batch(batch)
            done += 1
            totals = RefreshReport(
                totals.reminders + report.reminders,
                totals.decisions + report.decisions,
                totals.results + report.results,
                totals.repeats_found + report.repeats_found,
            )
            if report.reminders + report.decisions + report.results < 1:
                break
        return totals

    def _refresh_batch(self, batch: int) -> RefreshReport:
        cutoff = self._clock.now() - self._settle
        catalog = self._catalog.get()
        fine: dict[FineKey, Counters] = {}
        declines: dict[DeclineKey, int] = {}
        n_rem = n_dec = n_res = n_rep = 0
        with self._store.transaction() as tx:
            last = tx.cursor("reminder")
            for rem in tx.reminders_after(last, batch):
                if _later(rem.at, cutoff):
                    break
                key = (
                    month_of(rem.at),
                    rem.institution,
                    rem.department,
                    rem.clinician,
                    rem.item,
                )
                c = fine.setdefault(key, Counters())
                c.reminders += 1
                c.reminders_recognizable += 1 if rem.recognizable > 0 else 0
                last, n_rem = rem.id, n_rem + 1
            tx.set_cursor("reminder", last, self._clock.now())

            last = tx.cursor("decision")
            for dec in tx.decisions_after(last, batch):
                if _later(dec.at, cutoff):
                    break
                last, n_dec = dec.id, n_dec + 1
                if dec.action not in COUNTED_ACTIONS:
                    continue
                m = month_of(dec.at)
                key = (m, dec.institution, dec.department, dec.clinician, dec.item)
                c = fine.setdefault(key, Counters())
                if dec.action == "accepted":
                    c.accepted += 1
                    c.saved_fen += dec.saved_fen
                    # The acceptance shows a recognizable prior existed: it counts in the
                    # ratio's denominator too, or the ratio passes 100 %.
                    c.reminders_recognizable += 0 if dec.proposed else 1
                else:
                    c.declined += 1
                    dkey = (*key, dec.reason_code)
                    declines[dkey] = declines.get(dkey, 0) + 1
            tx.set_cursor("decision", last, self._clock.now())

            last = tx.cursor("result")
            for res in tx.results_after(last, batch):
                if _later(res.updated_at, cutoff):
                    break
                last, n_res = res.id, n_res + 1
                if self._is_unrecorded_repeat(tx, res, catalog):
                    key = (
                        month_of(res.performed_at),
                        res.institution,
                        res.department,
                        "",
                        res.item or "",
                    )
                    fine.setdefault(key, Counters()).repeats_unrecorded += 1
                    n_rep += 1
            tx.set_cursor("result", last, self._clock.now())
            if fine or declines:
                tx.apply(fine, declines)
        return RefreshReport(n_rem, n_dec, n_res, n_rep)

    @staticmethod
    def _is_unrecorded_repeat(tx: MonitoringTx, res: ResultFact, catalog: Catalog) -> bool:
        if res.item is None or res.status not in COUNTED_RESULT_STATUSES:
            return False
        item = catalog.items.get(res.item)
        if item is None:
            return False
        return tx.repeated_without_decision(res, res.performed_at - item.time_limit)

    def recompute(self) -> RefreshReport:
        """Repair: drop the aggregates and rebuild them from the source tables — reminders
        and decisions with one GROUP BY each, results through the same per-result check
        as the incremental job."""
        with self._store.transaction() as tx:
            tx.clear_aggregates()
            upto_r = tx.max_id("reminder")
            upto_d = tx.max_id("decision")
            tx.rebuild_from_sources(upto_r, upto_d)
            tx.set_cursor("reminder", upto_r, self._clock.now())
            tx.set_cursor("decision", upto_d, self._clock.now())
            tx.set_cursor("result", 0, self._clock.now())
        return self.refresh()

    # -------------------------------------------------------- statistics
    def _visible(self, principal: Principal, catalog: Catalog) -> list[str]:
        return sorted(
            code
            for code in catalog.institutions
            if can_see_institution(principal, code, catalog.graph)
        )

    def period(self, month_from: str | None, month_to: str | None) -> Period:
        return Period.parse(month_from, month_to, self._clock.now().astimezone(CHINA_TZ).date())

    def drill(
        self,
        principal: Principal,
        level: Level,
        period: Period,
        *,
        scope: str = "",
        institution: str = "",
        department: str | None = None,
    ) -> StatTable:
        """One level of the drill-down 省 → 市 → 机构 → 科室 → 医师."""
        cat = self._catalog.get()
        visible = self._visible(principal, cat)
        names = {c: s.name for c, s in cat.graph.scopes.items()}
        if level in (Level.DEPARTMENT, Level.CLINICIAN):
            if institution not in cat.institutions:
                raise NotFound(
                    f"未找到医疗机构 {institution}",
                    problems=[Problem("institution", "请指定医疗机构")],
                )
            if institution not in visible:
                raise NotFound(f"未找到医疗机构 {institution}")
            dim = Dimension.DEPARTMENT if level is Level.DEPARTMENT else Dimension.CLINICIAN
            dept = department if level is Level.CLINICIAN else None
            rows_raw = self._store.totals(dim, [institution], period.start, period.end, dept)
            inst_name = cat.institutions[institution].name
            names = self._store.clinician_names(institution) if level is Level.CLINICIAN else {}
            rows = [
                StatRow(
                    key=k,
                    label=(k or "（未填科室）")
                    if dim is Dimension.DEPARTMENT
                    else clinician_label(k, names),
                    counters=c,
                    drill=(
                        {
                            "level": Level.CLINICIAN.value,
                            "institution": institution,
                            "department": k,
                        }
                        if level is Level.DEPARTMENT
                        else None
                    ),
                )
                for k, c in rows_raw
            ]
            title = (
                inst_name
                if level is Level.DEPARTMENT
                else f"{inst_name} · {department or '（未填科室）'}"
            )
            return _table(level, title, period, rows, {"institution": institution})
        in_scope = visible
        if scope:
            if scope not in cat.graph.scopes:
                raise NotFound(f"未找到辖区 {scope}", problems=[Problem("scope", scope)])
            cov = cat.graph.coverage(scope)
            in_scope = [c for c in visible if c in cov]
        by_inst = dict(
            self._store.totals(Dimension.INSTITUTION, in_scope, period.start, period.end)
        )
        if level is Level.INSTITUTION:
            rows = [
                StatRow(
                    key=code,
                    label=cat.institutions[code].name,
                    counters=by_inst.get(code, Counters()),
                    drill={"level": Level.DEPARTMENT.value, "institution": code},
                )
                for code in in_scope
            ]
            return _table(level, names.get(scope, "全部"), period, rows, {"scope": scope})
        groups: dict[str, Counters] = {}
        for code in in_scope:
            region = cat.province_of(code) if level is Level.PROVINCE else _city_of(cat, code)
            groups.setdefault(region, Counters())
            groups[region] += by_inst.get(code, Counters())
        next_level = Level.CITY if level is Level.PROVINCE else Level.INSTITUTION
        rows = [
            StatRow(
                key=region,
                label=names.get(region, region),
                counters=c,
                drill={"level": next_level.value, "scope": region},
            )
            for region, c in sorted(groups.items())
        ]
        return _table(level, names.get(scope, "全部辖区"), period, rows, {"scope": scope})

    def by_item(self, principal: Principal, period: Period, scope: str = "") -> list[StatRow]:
        cat = self._catalog.get()
        insts = self._scoped(principal, cat, scope)
        out = []
        for code, c in self._store.totals(Dimension.ITEM, insts, period.start, period.end):
            name = cat.items[code].name if code in cat.items else (code or "（未对码）")
            out.append(StatRow(code, name, c))
        out.sort(key=lambda r: -r.counters.accepted)
        return out

    def trend(self, principal: Principal, period: Period, scope: str = "") -> list[StatRow]:
        cat = self._catalog.get()
        insts = self._scoped(principal, cat, scope)
        got = dict(self._store.totals(Dimension.MONTH, insts, period.start, period.end))
        return [
            StatRow(f"{m:%Y-%m}", f"{m:%Y-%m}", got.get(f"{m:%Y-%m}", Counters()))
            for m in period.months()
        ]

    def declines(
        self, principal: Principal, period: Period, scope: str = ""
    ) -> list[tuple[str, str, int]]:
        cat = self._catalog.get()
        insts = self._scoped(principal, cat, scope)
        rows = self._store.declines_by_reason(insts, period.start, period.end)
        # label by the wording of the jurisdiction's own list when known
        labels: dict[str, str] = {}
        for reasons in cat.negative_reasons.values():
            for r in reasons:
                labels.setdefault(r.code, f"({r.number}) {r.text}")
        return [(code, labels.get(code, code or "（未注明）"), n) for code, n in rows]

    def _scoped(self, principal: Principal, cat: Catalog, scope: str) -> list[str]:
        visible = self._visible(principal, cat)
        if not scope:
            return visible
        if scope not in cat.graph.scopes:
            raise NotFound(f"未找到辖区 {scope}", problems=[Problem("scope", scope)])
        cov = cat.graph.coverage(scope)
        return [c for c in visible if c in cov]

    # -------------------------------------------------------- outliers
    def outliers(
        self,
        principal: Principal,
        period: Period,
        metric: Metric = Metric.RECOGNITION_RATIO,
        *,
        scope: str = "",
        institution: str = "",
        min_volume: int | None = None,
        only_flagged: bool = True,
    ) -> list[Finding]:
        """Institutions against peers of the same level and province; or, given an
        institution, its clinicians against each other (医疗机构对科室、医务人员的监测)."""
        cat = self._catalog.get()
        names = {c: s.name for c, s in cat.graph.scopes.items()}
        kw = {} if min_volume is None else {"min_volume": min_volume}
        if institution:
            if institution not in self._visible(principal, cat):
                raise NotFound(f"未找到医疗机构 {institution}")
            rows = self._store.totals(Dimension.CLINICIAN, [institution], period.start, period.end)
            group = f"{cat.institutions[institution].name}·全体医师"
            names = self._store.clinician_names(institution)
            subjects = [Subject(k, clinician_label(k, names), group, c) for k, c in rows if k]
        else:
            insts = self._scoped(principal, cat, scope)
            totals = dict(
                self._store.totals(Dimension.INSTITUTION, insts, period.start, period.end)
            )
            subjects = []
            for code in insts:
                inst = cat.institutions[code]
                group = peer_group_label((inst.level.value, cat.province_of(code)), names)
                subjects.append(Subject(code, inst.name, group, totals.get(code, Counters())))
        found = find_outliers(subjects, metric, **kw)
        return [f for f in found if f.flagged] if only_flagged else found

    def correction_backlog(self, principal: Principal) -> int | None:
        if self._backlog is None:
            return None
        cat = self._catalog.get()
        return self._backlog.open_corrections(self._visible(principal, cat))

    # -------------------------------------------------------- targets
    def targets(self, jurisdiction: str | None = None) -> list[Progress]:
        cat = self._catalog.get()
        facts = TargetFacts(
            graph=cat.graph,
            institutions=cat.institutions,
            items=cat.items,
            qualifications=[q for qs in cat.qualifications.values() for q in qs],
            connected=self._store.institutions_with_results()
            if any(t.metric is TargetMetric.CONNECTED_SHARE for t in self._targets)
            else frozenset(),
            at=self._clock.now(),
        )
        chosen = [
            t
            for t in self._targets
            if jurisdiction is None or t.jurisdiction in (jurisdiction, "NATIONAL")
        ]
        return [self._progress(t, facts, jurisdiction) for t in chosen]

    @staticmethod
    def _progress(target: Target, facts: TargetFacts, jurisdiction: str | None) -> Progress:
        """A national target counted where the viewer answers for: a province's regulator
        asks how its own cities, alliances and hospitals stand against "每个地市超过200项",
        not how all of the country's do (that read "0/85 cities" in Hebei)."""
        if (
            jurisdiction is None
            or target.jurisdiction != "NATIONAL"
            or target.metric not in COUNTED_WITHIN
        ):
            return target_progress(target, facts)
        local = target_progress(replace(target, jurisdiction=jurisdiction), facts)
        if not local.details:
            # Nothing of that kind lies inside (a 京津冀 region is larger than a province):
            # the national figure, as it is.
            return target_progress(target, facts)
        scope = facts.graph.scopes.get(jurisdiction)
        name = scope.name if scope is not None else jurisdiction
        return replace(local, target=target, note=f"全国目标，按本辖区（{name}）统计")


# National targets whose measure is a share of scopes or institutions, which a province
# or a city can count among its own; a count of items recognized nationwide cannot.
COUNTED_WITHIN = frozenset(
    {TargetMetric.ITEMS_PER_SCOPE, TargetMetric.ALLIANCES_ALL_ITEMS, TargetMetric.CONNECTED_SHARE}
)


def _later(at: datetime, cutoff: datetime) -> bool:
    a = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return a > cutoff


def _city_of(cat: Catalog, institution: str) -> str:
    """The city an institution lies in; a municipality's institutions (jurisdiction is
    the province itself) are grouped under the province."""
    jur = cat.institutions[institution].jurisdiction
    s = cat.graph.scopes.get(jur)
    if s is not None and s.kind is ScopeKind.CITY:
        return jur
    for anc in cat.graph.ancestors(jur):
        a = cat.graph.scopes.get(anc)
        if a is not None and a.kind is ScopeKind.CITY:
            return anc
    return jur


def _table(
    level: Level, title: str, period: Period, rows: Iterable[StatRow], parent: dict[str, str]
) -> StatTable:
    rows_l = sorted(rows, key=lambda r: (-r.counters.accepted, r.label))
    total = Counters()
    for r in rows_l:
        total += r.counters
    return StatTable(level, title, period, rows_l, total, parent)
