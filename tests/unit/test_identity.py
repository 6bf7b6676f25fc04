"""Patient identifiers (R4): 身份证 check digit and masking."""

from __future__ import annotations

from datetime import date

import pytest

from huren.domain.errors import ValidationFailed
from huren.domain.identity import (
    IdentifierKind,
    PatientIdentifier,
    birth_date_from_national_id,
    mask_id,
    mask_name,
    national_id_check_digit,
    validate_identifier,
    validate_national_id,
)


def test_check_digit_x_is_computed() -> None:
    # GB 11643-1999 example number 11010519491231002X
    assert national_id_check_digit("11010519491231002") == "X"


def test_valid_number_is_normalized_to_upper_case() -> None:
    assert validate_national_id("11010519491231002x") == "11010519491231002X"


def test_wrong_check_digit_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_national_id("110105194912310021", where="PID-3")
    assert err.value.problems[0].field == "PID-3"


def test_birth_date_is_read_from_the_number() -> None:
    assert birth_date_from_national_id("11010519491231002X") == date(1949, 12, 31)


@pytest.mark.parametrize(
    ("name", "masked"), [("张三", "张*"), ("张小三", "张*三"), ("欧阳小明", "欧**明")]
)
def test_names_are_masked_for_lists(name: str, masked: str) -> None:
    assert mask_name(name) == masked


def test_id_is_masked_keeping_four_and_four() -> None:
    assert mask_id("110105194912311234") == "1101**********1234"


def test_mrn_needs_its_assigning_institution() -> None:
    with pytest.raises(ValidationFailed):
        validate_identifier(PatientIdentifier(IdentifierKind.MRN, "000123"), "PID-3")
    ok = validate_identifier(PatientIdentifier(IdentifierKind.MRN, " 000123 ", "H1"), "PID-3")
    assert ok == PatientIdentifier(IdentifierKind.MRN, "000123", "H1")


def test_address_code_assigned_after_the_birth_year_is_accepted() -> None:
    # 130102 (石家庄长安区) entered stdnum's table in 1983; a patient born in 1960 is real.
    first17 = "13010219600101001"
    number = first17 + national_id_check_digit(first17)
    assert validate_national_id(number) == number


def test_impossible_birth_date_is_rejected() -> None:
    first17 = "13010219600231001"
    with pytest.raises(ValidationFailed, match="居民身份证号码无效"):
        validate_national_id(first17 + national_id_check_digit(first17))


@pytest.mark.parametrize(
    "value",
    [
        "1101051949123100²X",  # a superscript: str.isdigit() said yes, int() then failed
        "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X",  # Arabic-Indic digits: were accepted and stored as they are
    ],
)
def test_only_ascii_digits_make_a_national_id(value: str) -> None:
    with pytest.raises(ValidationFailed) as err:
        validate_national_id(value, where="PID-3")
    assert err.value.problems[0].field == "PID-3"
