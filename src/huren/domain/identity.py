"""Patient identifiers (R4): kinds, the 居民身份证 check digit, masking for lists.

GB 11643-1999 defines the 18-character citizen identity number; its last character is an
ISO 7064 MOD 11-2 check digit. python-stdnum implements it (``stdnum.cn.ric``), so we use
it rather than writing our own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from stdnum.cn import ric

from huren.domain.errors import Problem, ValidationFailed
from huren.domain.text import is_digits


class IdentifierKind(StrEnum):
    NATIONAL_ID = "national_id"  # 居民身份证
    INSURANCE = "insurance"  # 医保号 / 医保电子凭证
    HEALTH_CARD = "health_card"  # 电子健康卡
    MRN = "mrn"  # 院内病历号 / 就诊卡号 (scoped to the assigning institution)


IDENTIFIER_LABELS = {
    IdentifierKind.NATIONAL_ID: "居民身份证",
    IdentifierKind.INSURANCE: "医保号",
    IdentifierKind.HEALTH_CARD: "电子健康卡",
    IdentifierKind.MRN: "院内病历号",
}
# Patient.sex as stored (GB/T 2261.1 男 M / 女 F); anything else is shown as it is.
SEX_LABELS = {"M": "男", "F": "女"}


@dataclass(frozen=True, slots=True)
class PatientIdentifier:
    kind: IdentifierKind
    value: str
    assigner: str = ""  # institution code, required for MRN

    def normalized(self) -> PatientIdentifier:
        value = (
            self.value.strip().upper()
            if self.kind is IdentifierKind.NATIONAL_ID
            else (self.value.strip())
        )
        assigner = self.assigner if self.kind is IdentifierKind.MRN else ""
        return PatientIdentifier(self.kind, value, assigner)


def _national_id_problem(value: str) -> str | None:
    """What is wrong with an 18-character 身份证 number, or None.

    We check the form, the birth date and the ISO 7064 MOD 11-2 check digit, but not
    whether the six-digit address code was assigned in the birth year: stdnum's
    ``ric.validate`` does, and its table starts most codes in 1983, which would refuse
    real patients born earlier (and address codes are re-assigned over time)."""
    if (
        len(value) != 18
        or not is_digits(value[:17])
        or not (is_digits(value[17]) or value[17] == "X")
    ):
        return "应为 17 位数字加 1 位校验码（数字或 X）"
    try:
        date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError:
        return f"出生日期 {value[6:14]} 无效"
    if national_id_check_digit(value[:17]) != value[17]:
        return "校验码不正确"
    return None


def validate_national_id(value: str, where: str = "national_id") -> str:
    """Return the normalized 身份证 number or raise naming ``where``."""
    normalized = value.strip().upper()
    problem = _national_id_problem(normalized)
    if problem is not None:
        raise ValidationFailed(
            f"居民身份证号码无效: {mask_id(value)}",
            problems=[Problem(where, f"居民身份证号码无效（{problem}）")],
        )
    return normalized


def validate_identifier(ident: PatientIdentifier, where: str) -> PatientIdentifier:
    ident = ident.normalized()
    if not ident.value:
        raise ValidationFailed("患者标识为空", problems=[Problem(where, "患者标识为空")])
    if ident.kind is IdentifierKind.NATIONAL_ID:
        return PatientIdentifier(ident.kind, validate_national_id(ident.value, where))
    if ident.kind is IdentifierKind.MRN and not ident.assigner:
        raise ValidationFailed(
            "院内病历号必须注明发放机构", problems=[Problem(where, "院内病历号缺少发放机构")]
        )
    return ident


def birth_date_from_national_id(value: str) -> date | None:
    value = value.strip().upper()
    if _national_id_problem(value) is not None:
        return None
    return date(int(value[6:10]), int(value[10:12]), int(value[12:14]))


def national_id_check_digit(first17: str) -> str:
    """The check character for the first 17 digits (used by the synthetic generator)."""
    # stdnum's calc_check_digit takes the whole number and ignores its last character.
    return str(ric.calc_check_digit(first17 + "0"))


def mask_name(name: str) -> str:
    """张三 → 张*, 张小三 → 张*三, 欧阳小明 → 欧**明 (R4: 张*三)."""
    name = name.strip()
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def mask_id(value: str) -> str:
    """1101**********1234: keep the first four and last four characters."""
    value = value.strip()
    if len(value) <= 8:
        return value[:1] + "*" * max(len(value) - 1, 0)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]
