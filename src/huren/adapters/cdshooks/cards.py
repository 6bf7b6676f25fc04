"""CDS Hooks 2.0 cards from a recognition check (§CDS Service Response, §Card Attributes).

One card per ordered item that has something to say:
- a recognizable prior → ``warning`` card, the best candidate summarised (key values with
  units and flags, or the imaging findings), its mark, institution, date, age against the
  reference time limit and the retest interval; a suggestion whose ``delete`` action
  removes the redundant draft ServiceRequest (accept); ``overrideReasons`` carrying the
  jurisdiction's negative-list reasons (decline); a link to the full report and images;
  for an imaging prior also a link to the image viewer (``/imaging/results/{id}``), and an
  incomplete study's missing parts among the reasons (沪卫医〔2024〕135号 四(二)2);
- only near-misses / unmarked priors → ``info`` card listing them with their reasons;
- an unmapped code → ``info`` card saying so (never silently ignored)."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from huren.domain.china_time import local_time
from huren.domain.decisions import result_text
from huren.domain.masterdata import Category, Institution, NegativeReason
from huren.domain.recognition import (
    STANDING_LABELS,
    Assessment,
    Effect,
    ItemRecognition,
    format_span,
)
from huren.domain.results import COMMENT_LABEL, StoredResult
from huren.services.recognition import CardRecord, CheckOutcome, ItemAnswer, reason_system

SOURCE_LABEL = "HuRen 检查检验结果互认共享平台"
SUMMARY_MAX = 140


@dataclass(frozen=True, slots=True)
class CardContext:
    service_id: str
    hook_instance: str
    base_url: str  # absolute, no trailing slash
    department: str
    clinician: str
    at: datetime


def _clip(text: str, limit: int = SUMMARY_MAX) -> str:
    return text if len(text) < limit else text[: limit - 2] + "…"


_MD_ESCAPES = str.maketrans({ch: "\\" + ch for ch in "\\|*_`"})
_MD_SPECIAL = re.compile(r"[\\|*_`]")


def _md(text: str) -> str:
    """Escape the characters GitHub-flavoured Markdown would read as table or emphasis."""
    # Looked for first: most text has none, and a search is several times cheaper than
    # ``translate``, which looks every character up in the table (30 texts a call).
    return text.translate(_MD_ESCAPES) if _MD_SPECIAL.search(text) else text


def _uuids(n: int) -> Iterator[str]:
    """Up to ``n`` random UUIDs as text, each as ``uuid.uuid4()`` makes it, from one read
    of the OS's random source instead of one per UUID: each read is a system call that
    lets go of the GIL, and under load the event loop's thread takes it in between
    (issue 5: a card and its suggestion take two)."""
    raw = os.urandom(16 * n)
    for i in range(0, len(raw), 16):
        yield str(uuid.UUID(bytes=raw[i : i + 16], version=4))


def key_values(a: Assessment) -> list[str]:
    r = a.result
    if r.observations:
        out = []
        for o in r.observations:
            value = o.shown_value()  # as reported: "7.40", not "7.4"
            ref = ""
            if o.ref_low is not None or o.ref_high is not None:
                lo, hi = o.reference_numerals()
                ref = f"{lo}–{hi}"
            elif o.ref_text:
                ref = o.ref_text
            flag = o.flag if o.flag and o.flag != "N" else ""
            out.append(
                f"| {_md(o.name)} | {_md(value)} | {_md(o.unit)} | {_md(ref)} | {_md(flag)} |"
            )
        return out
    return []


def _one_line(text: str) -> str:
    """A sender's comment on one line of the card (its lines joined)."""
    return " / ".join(t for line in text.splitlines() if (t := line.strip()))


def comment_lines(r: StoredResult) -> list[str]:
    """The sender's comments (HL7 v2 NTE, FHIR Observation.note) as Markdown lines: each
    commented value after its value ("钾 6.1 mmol/L (H) — 备注：标本溶血"), then the
    report's. A comment may decide whether a value can be accepted ("标本溶血")."""
    lines = [
        f"- {_md(o.display())} — {COMMENT_LABEL}{_md(_one_line(o.comment))}"
        for o in r.observations
        if o.comment
    ]
    if r.comment:
        lines.append(f"- 报告{COMMENT_LABEL}{_md(_one_line(r.comment))}")
    return lines


def _names(institutions: dict[str, Institution], code: str) -> str:
    inst = institutions.get(code)
    return inst.name if inst else code


def workbench_url(ctx: CardContext, outcome: CheckOutcome, codes: Sequence[str]) -> str:
    query = {
        "patient": str(outcome.patient_id or ""),
        "items": ",".join(codes),
        "institution": outcome.institution,
    }
    return f"{ctx.base_url}/workbench?{urlencode(query)}"


def viewer_url(ctx: CardContext, result_id: int) -> str:
    """The image viewer of an imaging result (report, completeness, series, stack view)."""
    return f"{ctx.base_url}/imaging/results/{result_id}"


def _viewer_link(ctx: CardContext, a: Assessment) -> list[dict[str, str]]:
    if a.result.category is not Category.IMAGING:
        return []
    return [
        {"label": "调阅影像（影像查看器）", "url": viewer_url(ctx, a.result.id), "type": "absolute"}
    ]


def _assessment_lines(
    a: Assessment, institutions: dict[str, Institution], ctx: CardContext
) -> list[str]:
    r = a.result
    lines = [
        f"- **{STANDING_LABELS[a.standing]}** · {_md(_names(institutions, r.institution))} · "
        f"{local_time(r.performed_at)} · 报告单编号 {_md(r.report_no)}"
        + (f" · 互认标识 **{_md(r.mark_symbol)}**" if r.mark_symbol else " · 无互认标识"),
    ]
    lines.extend("  " + line for line in comment_lines(r))
    for reason in a.reasons:
        if reason.effect is Effect.BLOCKS:
            lines.append(f"  - ✗ {_md(reason.text)}")
        elif reason.effect is Effect.CAUTION:
            lines.append(f"  - ! {_md(reason.text)}")
    report = f"  - [完整报告]({ctx.base_url}/workbench/results/{r.id})"
    if r.category is Category.IMAGING:
        report += f" · [调阅影像]({viewer_url(ctx, r.id)})"
    lines.append(report)
    return lines


def _detail(
    answer: ItemAnswer,
    rec: ItemRecognition,
    institutions: dict[str, Institution],
    ctx: CardContext,
) -> str:
    item = rec.item
    parts: list[str] = []
    best = rec.best
    if best is not None:
        r = best.result
        parts.append(
            f"**{_md(item.name)}** · {_md(_names(institutions, r.institution))} · "
            f"{local_time(r.performed_at)} · 报告单编号 {_md(r.report_no)}"
        )
        parts.append(
            f"互认标识：**{_md(r.mark_symbol or '')}** · 距今 {format_span(best.age)}"
            f"（参考时限 {format_span(best.time_limit)}）"
        )
        rows = key_values(best)
        if rows:
            parts.append(
                "| 项目 | 结果 | 单位 | 参考范围 | 提示 |\n|---|---|---|---|---|\n"
                + "\n".join(rows)
            )
        elif item.category is Category.IMAGING or r.findings:
            parts.append(f"检查所见：{_md(result_text(r) or '（见完整报告）')}")
            if r.conclusion:
                parts.append(f"诊断结论（报告医师出具，不属于互认内容）：{_md(r.conclusion)}")
        if notes := comment_lines(r):
            parts.append("送检机构备注：\n" + "\n".join(notes))
        qualifies = [x.text for x in best.reasons if x.effect is Effect.SUPPORTS]
        parts.append("互认依据：" + "；".join(_md(q) for q in qualifies))
        for c in best.cautions():
            parts.append(f"注意：{_md(c.text)}")
    if rec.retest_interval is not None:
        parts.append(
            f"最短复检间隔（参考）：{rec.retest_interval.label} {rec.retest_interval.days:g} 天"
            f"，来源：{_md(rec.retest_interval.source)}；以互认政策的参考时限为准"
        )
    for reason in rec.retest_reasons:
        parts.append(f"注意：{_md(reason.text)}")
    others = [a for a in rec.all() if a is not best]
    if others:
        lines = ["其他既往结果："]
        for a in others:
            lines.extend(_assessment_lines(a, institutions, ctx))
        parts.append("\n".join(lines))
    if not answer.listed:
        parts.append("该项目不在本省现行互认项目清单内，结果仅供参考。")
    return "\n\n".join(parts)


def _override_reasons(
    reasons: Sequence[NegativeReason], category: Category
) -> list[dict[str, str]]:
    return [
        {
            "system": reason_system(r.jurisdiction),
            "code": r.code,
            "display": f"（{r.number}）{r.text}"
            + ("（须填写具体原因）" if r.requires_free_text else ""),
        }
        for r in reasons
        if not r.imaging_only or category is Category.IMAGING
    ]


def build_cards(
    outcome: CheckOutcome,
    # (draft ServiceRequest reference, requested code, its status: "draft" as the hooks
    # define draftOrders, or what an HIS re-signing an order sends, "active")
    orders: Sequence[tuple[str, str, str]],
    institutions: dict[str, Institution],
    ctx: CardContext,
) -> tuple[list[dict[str, Any]], list[CardRecord]]:
    """The response cards and the records that let feedback find them again."""
    cards: list[dict[str, Any]] = []
    records: list[CardRecord] = []
    codes = [code for _, code, _ in orders]
    link = {
        "label": "查看完整报告及影像（互认工作台）",
        "url": workbench_url(ctx, outcome, codes),
        "type": "absolute",
    }
    source = {"label": SOURCE_LABEL, "url": f"{ctx.base_url}/"}
    uuids = _uuids(2 * len(orders))  # a card's and its suggestion's
    for (draft, _, order_status), answer in zip(orders, outcome.items, strict=True):
        card_uuid = next(uuids)
        suggestion_uuid: str | None = None
        best_id: int | None = None
        best_version: int | None = None
        if answer.recognition is None:
            # No uuid: nothing can be accepted or declined on it, and a client sends no
            # feedback for a card without one (CDS Hooks 2.0 §Feedback: "If either the card
            # or the suggestion has no uuid, the CDS Client does not send a notification").
            # With one, the feedback a client sends when the card is dismissed was refused
            # (422), and with it the feedback on the other cards sent alongside. Its record
            # keeps the uuid for the log.
            card: dict[str, Any] = {
                "summary": _clip(f"医嘱项目 {answer.requested} 未对码，无法查询互认结果"),
                "indicator": "info",
                "detail": _md(answer.problem),
                "source": source,
            }
        else:
            rec = answer.recognition
            if not rec.all():
                continue
            best = rec.best
            if best is not None:
                r = best.result
                best_id, best_version = r.id, r.version
                status = "" if order_status == "draft" else order_status
                suggestion_uuid = None if status else next(uuids)
                summary = (
                    f"{rec.item.name}：{_names(institutions, r.institution)}"
                    f"{format_span(best.age)}前已做（{r.mark_symbol or ''}），可互认，建议不再重复检查"
                )
                card = {
                    "uuid": card_uuid,
                    "summary": _clip(summary),
                    "indicator": "warning",
                    "detail": _detail(answer, rec, institutions, ctx),
                    "source": source,
                }
                if status:
                    # order-sign's draftOrders are drafts ("orders that aren't yet
                    # signed"); an HIS re-signing an active order sends it too. A delete
                    # of a signed order is not the clinician's undo: no suggestion, the
                    # card says why.
                    card["detail"] += (
                        f"\n\n该医嘱状态为 {_md(status)}（非草稿），卡片不提供撤销建议；"
                        "如需互认，请在互认工作台中接受，并按本院流程撤销医嘱。"
                    )
                else:
                    card["suggestions"] = [
                        {
                            "label": f"互认该结果，撤销本次{rec.item.name}医嘱",
                            "uuid": suggestion_uuid,
                            "isRecommended": True,
                            "actions": [
                                {
                                    "type": "delete",
                                    "description": (
                                        f"撤销重复的{rec.item.name}医嘱，互认"
                                        f"{_names(institutions, r.institution)}报告 {r.report_no}"
                                    ),
                                    "resourceId": draft,
                                }
                            ],
                        }
                    ]
                    card["selectionBehavior"] = "at-most-one"
                card["links"] = [link, *_viewer_link(ctx, best)]
                # CDS Hooks 2.0 §Null and empty JSON elements: an OPTIONAL attribute without
                # a value is omitted, never [] (no negative list in force: none to offer).
                if reasons := _override_reasons(outcome.reasons, rec.item.category):
                    card["overrideReasons"] = reasons
            else:
                n = len(rec.all())
                first = rec.all()[0]
                why = next((x.text for x in first.blocking()), "")
                card = {
                    "uuid": card_uuid,
                    "summary": _clip(
                        f"{rec.item.name}：有 {n} 份既往结果，暂不建议直接互认（{why}）"
                    ),
                    "indicator": "info",
                    "detail": _detail(answer, rec, institutions, ctx),
                    "source": source,
                    "links": [link, *_viewer_link(ctx, first)],
                }
                best_id, best_version = first.result.id, first.result.version
        cards.append(card)
        records.append(
            CardRecord(
                uuid=card_uuid,
                reminder_id=answer.reminder_id,
                at=ctx.at,
                service_id=ctx.service_id,
                hook_instance=ctx.hook_instance,
                institution_code=outcome.institution,
                department=ctx.department,
                clinician=ctx.clinician,
                patient_id=outcome.patient_id,
                item_code=answer.item_code,
                draft_order=draft,
                result_id=best_id,
                result_version=best_version,
                suggestion_uuid=suggestion_uuid,
            )
        )
    return cards, records


def info_card(summary: str, detail: str, base_url: str) -> dict[str, Any]:
    """A card that is not recorded: without a uuid, so that no feedback is sent for it
    (CDS Hooks 2.0 §Feedback; with one, the feedback dismissing it was refused, 404)."""
    return {
        "summary": _clip(summary),
        "indicator": "info",
        "detail": detail,
        "source": {"label": SOURCE_LABEL, "url": f"{base_url}/"},
    }
