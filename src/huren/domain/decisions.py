"""The clinician's decision on a prior result (R5): accept it, or decline it with a reason
from the negative list (负面清单).

- Accept → the text the clinician inserts into the EMR, in the form Hebei requires
  (冀卫医政函〔2025〕7号 二(三)): 注明“医学检查检验互认项目”，记载内容除检查检验结果外，
  还应包括“检查检验单位”“检查检验时间”“报告单编号”; 住院患者完整互认检查检验报告单复印
  收入病案予以留存. Money saved is the item's price.
- Decline → a reason valid in the ordering institution's jurisdiction (冀 二(四) six;
  沪卫医〔2024〕135号 四(五) ten, (6) for imaging only, 其他情形 with free text), and a
  plain-language explanation for the patient of the purpose and necessity of the re-test
  (冀 二(三): 充分告知复检的目的及必要性; 沪 五(三): 做好解释说明).

What is recognized is the result, not the reporting physician's conclusion
(沪卫医〔2024〕135号 三: 检查检验结果不包括医师出具的诊断结论): the EMR text carries the
findings / values, not the impression.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from huren.domain.china_time import local_time
from huren.domain.errors import Problem, ValidationFailed
from huren.domain.masterdata import Category, Item, NegativeReason
from huren.domain.results import StoredResult

# China Standard Time (no daylight saving): how times are written for clinicians.

EMR_HEADING = "医学检查检验互认项目"


class Action(StrEnum):
    ACCEPTED = "accepted"  # 接受互认
    DECLINED = "declined"  # 不予互认，重新检查


ACTION_LABELS: Mapping[Action, str] = {Action.ACCEPTED: "接受互认", Action.DECLINED: "重新检查"}


def result_text(result: StoredResult) -> str:
    """The result as recorded: the values with units and flags for lab items, the findings
    (检查所见) for imaging — never the conclusion (沪 三)."""
    if result.observations:
        return "；".join(o.display() for o in result.observations)
    return result.findings.strip()


@dataclass(frozen=True, slots=True)
class ReportForRecord:
    """What the EMR text is built from: a stored result or a report the patient brought."""

    item_name: str
    result: str
    institution_name: str
    performed_at: datetime
    report_no: str
    mark_symbol: str = ""
    brought_by_patient: bool = False

    @classmethod
    def of(cls, result: StoredResult, item: Item, institution_name: str) -> ReportForRecord:
        return cls(
            item_name=item.name,
            result=result_text(result),
            institution_name=institution_name,
            performed_at=result.performed_at,
            report_no=result.report_no,
            mark_symbol=result.mark_symbol or "",
        )


def emr_text(report: ReportForRecord, *, inpatient: bool) -> str:
    """冀卫医政函〔2025〕7号 二(三): the EMR record of an accepted result."""
    title = f"【{EMR_HEADING}】{report.item_name}"
    if report.mark_symbol:
        title += f"（互认标识：{report.mark_symbol}）"
    lines = [
        title,
        f"检查检验结果：{report.result or '详见原报告单'}",
        f"检查检验单位：{report.institution_name}",
        f"检查检验时间：{local_time(report.performed_at)}",
        f"报告单编号：{report.report_no}",
    ]
    if report.brought_by_patient:
        # 冀 二(三): 参考患者提供的医疗机构出具的完整检验检查报告单和相应影像资料
        lines.append("依据：患者提供的完整检查检验报告单（出具机构未接入互认共享系统）")
    if inpatient:
        lines.append("住院患者：完整互认检查检验报告单已复印收入病案留存")
    return "\n".join(lines)


def choose_reason(
    reasons: Sequence[NegativeReason],
    code: str,
    item: Item,
    free_text: str,
    *,
    where: str = "reason_code",
) -> NegativeReason:
    """The negative-list reason ``code`` if it is valid for ``item`` where ``reasons`` are
    in force; raise naming the field otherwise."""
    found = next((r for r in reasons if r.code == code), None)
    if found is None:
        valid = "、".join(f"{r.code}" for r in reasons)
        raise ValidationFailed(
            "不予互认的理由不在本辖区负面清单中",
            problems=[Problem(where, f"理由代码 {code or '（空）'} 无效，本辖区可用：{valid}")],
        )
    if found.imaging_only and item.category is not Category.IMAGING:
        # 沪卫医〔2024〕135号 四(五)(6): 图像质量和方法不能满足诊断要求的医学影像学检查
        raise ValidationFailed(
            "该理由仅适用于医学影像学检查",
            problems=[Problem(where, f"“{found.text}”仅适用于影像检查，{item.name}不是影像检查")],
        )
    if found.requires_free_text and not free_text.strip():
        # 其他情形确需复查的: the clinician must say which.
        raise ValidationFailed(
            "选择“其他情形”时须填写具体原因",
            problems=[Problem("free_text", f"“{found.text}”须填写具体原因")],
        )
    return found


@dataclass(frozen=True, slots=True)
class Explanation:
    """Plain-language text for the patient about one reason: why the test is repeated and
    what it is for."""

    why: str
    purpose: str


def patient_explanation(
    reason: NegativeReason,
    item: Item,
    explanations: Mapping[str, Explanation],
    *,
    free_text: str = "",
    prior_institution: str = "",
) -> str:
    """冀 二(三) / 沪 五(三): 向患者或家属充分解释，告知复检的目的及必要性."""
    e = explanations.get(reason.code)
    where = f"在{prior_institution}" if prior_institution else "此前"
    parts = [f"您{where}做过的“{item.name}”结果，医生已经认真查看。"]
    if e is not None:
        parts.append(f"这次仍需要重新检查，原因是：{e.why}")
        if free_text.strip():
            parts.append(f"医生的具体说明：{free_text.strip()}。")
        parts.append(f"重新检查的目的：{e.purpose}")
    else:
        parts.append(f"这次仍需要重新检查，原因是：{reason.text}。")
        if free_text.strip():
            parts.append(f"医生的具体说明：{free_text.strip()}。")
    parts.append("如有疑问，请随时向接诊医生询问。")
    return "".join(parts)


def saved_fen(item: Item, action: Action) -> int:
    """Money saved: the item's price when the prior result is accepted instead of repeated."""
    return item.price_fen if action is Action.ACCEPTED else 0
