"""The demo's story, sent the way hospitals send it: hospital A's LIS and RIS post FHIR R4
transaction Bundles and its PACS sends the CT images (the same parse and store paths as
``POST /fhir`` and C-STORE); then hospital B orders the same tests again.

The story patient, 李秀英, had a chest CT (with 厚层, 薄层 and an MPR reformat, complete
per 沪卫医〔2024〕135号 四(二)2), a liver panel and a blood count at hospital A; B's
clinician orders all three. The CT and the liver panel are recognizable (marked, inside
the time limit, B inside the mark's scope); the blood count is beyond its 72-hour
reference limit and shown as information."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from typing import Any

from huren.adapters.fhir.ingest import parse_transaction
from huren.adapters.hl7v2.receiver import Hl7Receiver
from huren.adapters.hl7v2.responses import SqlResponseLog
from huren.bootstrap import Container
from huren.domain.china_time import CHINA_TZ
from huren.domain.identity import national_id_check_digit
from huren.domain.masterdata import Institution, InstitutionLevel
from huren.services.catalog import Catalog
from huren.services.imaging import Source
from huren.services.intake import Channel

INSTITUTION_SID = "https://huren.example/fhir/sid/institution"
NATIONAL_ID_SID = "https://huren.example/fhir/sid/national-id"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
UID_ROOT = "1.2.826.0.1.3680043.10.1467.9."  # the demo's own UID root

CT_CHEST = "YX-CT-001"  # 胸部CT平扫
LFT = "JY-SH-001"  # 肝功能
CBC = "JY-XY-001"  # 血常规
STORY_ITEMS = (CT_CHEST, LFT, CBC)

PATIENT_NAME = "李秀英"
PATIENT_MRN = "A0062314"
PATIENT_ID = "13010219620314302"  # 石家庄长安区, born 1962-03-14, female (17 digits)

# (code, name, LOINC, value, unit, low, high, flag)
LIVER_PANEL = [
    ("ALT", "丙氨酸氨基转移酶", "1742-6", 68.0, "U/L", 7, 40, "H"),
    ("AST", "天门冬氨酸氨基转移酶", "1920-8", 45.0, "U/L", 13, 35, "H"),
    ("ALP", "碱性磷酸酶", "6768-6", 96.0, "U/L", 35, 100, "N"),
    ("GGT", "γ-谷氨酰转移酶", "2324-2", 52.0, "U/L", 7, 45, "H"),
    ("TBIL", "总胆红素", "14631-6", 14.2, "umol/L", 3.4, 20.5, "N"),
    ("DBIL", "直接胆红素", "14629-0", 4.1, "umol/L", 0, 6.8, "N"),
    ("TP", "总蛋白", "2885-2", 70.3, "g/L", 65, 85, "N"),
    ("ALB", "白蛋白", "1751-7", 41.6, "g/L", 40, 55, "N"),
]
BLOOD_COUNT = [
    ("WBC", "白细胞计数", "6690-2", 6.12, "10*9/L", 3.5, 9.5, "N"),
    ("RBC", "红细胞计数", "789-8", 4.21, "10*12/L", 3.8, 5.1, "N"),
    ("HGB", "血红蛋白", "718-7", 126.0, "g/L", 115, 150, "N"),
    ("PLT", "血小板计数", "777-3", 231.0, "10*9/L", 125, 350, "N"),
]


@dataclass(frozen=True, slots=True)
class Story:
    producer: str  # hospital A
    producer_name: str
    orderer: str  # hospital B
    orderer_name: str
    national_id: str
    patient_name: str
    orderer_local_codes: dict[str, str]  # unified item → B's own code, as its HIS sends it
    marks: dict[str, str]  # unified item → the mark A's result carries


def national_id() -> str:
    return PATIENT_ID + national_id_check_digit(PATIENT_ID)


def _local_code(catalog: Catalog, institution: str, item: str) -> str:
    for (inst, local), unified in sorted(catalog.code_maps.items()):
        if inst == institution and unified == item:
            return local
    return item


def choose_hospitals(catalog: Catalog, at: datetime) -> tuple[str, str]:
    """A: a Hebei hospital (石家庄 and tertiary preferred) whose CT and liver panel both carry
    a mark today; B: another Hebei tertiary hospital (保定 preferred) inside both marks'
    scopes. The synthetic world decides who is qualified, so we search rather than assume."""

    def preference(city: str) -> Callable[[Institution], tuple[bool, bool, str]]:
        return lambda i: (i.jurisdiction != city, i.level is not InstitutionLevel.TERTIARY, i.code)

    hebei = [i for i in catalog.institutions.values() if catalog.province_of(i.code) == "HE"]
    orderers = sorted(
        (i for i in hebei if i.level is InstitutionLevel.TERTIARY), key=preference("HE-BD")
    )
    for a in sorted(hebei, key=preference("HE-SJZ")):
        marks = [catalog.mark_for(a.code, item, at) for item in (CT_CHEST, LFT)]
        if any(m is None for m in marks):
            continue
        for b in orderers:
            if b.code != a.code and all(
                catalog.graph.contains(m.scope, b.code) for m in marks if m is not None
            ):
                return a.code, b.code
    raise RuntimeError(
        "演示数据中找不到满足故事条件的医院：河北省内胸部CT与肝功能均有互认资质的机构"
    )


def _entry(url: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _patient_entries(institution: str, name: str) -> list[dict[str, Any]]:
    return [
        _entry(
            "urn:uuid:patient",
            {
                "resourceType": "Patient",
                "identifier": [
                    {"system": NATIONAL_ID_SID, "value": national_id()},
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "MR",
                                }
                            ]
                        },
                        "value": PATIENT_MRN,
                    },
                ],
                "name": [{"text": PATIENT_NAME}],
                "gender": "female",
                "birthDate": "1962-03-14",
            },
        ),
        _entry(
            "urn:uuid:org",
            {
                "resourceType": "Organization",
                "identifier": [{"system": INSTITUTION_SID, "value": institution}],
                "name": name,
            },
        ),
    ]


def _lab_bundle(
    institution: str,
    name: str,
    local: str,
    display: str,
    loinc: str,
    report_no: str,
    rows: list[tuple[Any, ...]],
    performed: datetime,
    notes: dict[str, str] | None = None,
) -> bytes:
    """``notes``: the lab's comment on a value, by local code (FHIR Observation.note)."""
    system = f"https://{institution.lower()}.example.cn/lis/item"
    entries = _patient_entries(institution, name)
    refs = []
    for k, (code, label, obs_loinc, value, unit, low, high, flag) in enumerate(rows):
        url = f"urn:uuid:obs-{k}"
        refs.append({"reference": url})
        note = (notes or {}).get(code)
        entries.append(
            _entry(
                url,
                {
                    **({"note": [{"text": note}]} if note else {}),
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": system, "code": code, "display": label},
                            {"system": LOINC, "code": obs_loinc},
                        ]
                    },
                    "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
                    "referenceRange": [
                        {"low": {"value": low, "unit": unit}, "high": {"value": high, "unit": unit}}
                    ],
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                                    "code": flag,
                                }
                            ]
                        }
                    ],
                },
            )
        )
    entries.append(
        _entry(
            "urn:uuid:report",
            {
                "resourceType": "DiagnosticReport",
                "identifier": [
                    {
                        "system": f"https://huren.example/fhir/sid/report-no/{institution}",
                        "value": report_no,
                    }
                ],
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                "code": "CH" if local != "CBC" else "HM",
                            }
                        ]
                    }
                ],
                "code": {
                    "coding": [
                        {"system": system, "code": local, "display": display},
                        {"system": LOINC, "code": loinc},
                    ]
                },
                "subject": {"reference": "urn:uuid:patient"},
                "effectiveDateTime": performed.isoformat(),
                "issued": (performed + timedelta(hours=3)).isoformat(),
                "performer": [{"reference": "urn:uuid:org"}],
                "resultsInterpreter": [{"display": "王建华"}],
                "result": refs,
            },
        )
    )
    return json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}, ensure_ascii=False
    ).encode()


def _ct_bundle(
    institution: str,
    name: str,
    local: str,
    report_no: str,
    accession: str,
    study_uid: str,
    performed: datetime,
) -> bytes:
    system = f"https://{institution.lower()}.example.cn/ris/item"
    entries = _patient_entries(institution, name)
    entries += [
        _entry(
            "urn:uuid:study",
            {
                "resourceType": "ImagingStudy",
                "status": "available",
                "identifier": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "ACSN",
                                }
                            ]
                        },
                        "value": accession,
                    },
                    {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
                ],
                "subject": {"reference": "urn:uuid:patient"},
            },
        ),
        _entry(
            "urn:uuid:findings",
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "59776-5", "display": "Procedure findings"}
                    ]
                },
                "valueString": "胸廓对称，气管居中。双肺纹理清晰，右肺上叶尖段见一直径约5mm磨玻璃密度"
                "结节，边界清楚；余肺野未见异常密度影。纵隔及肺门未见肿大淋巴结。"
                "心影大小正常，双侧胸膜未见增厚，未见胸腔积液。",
            },
        ),
        _entry(
            "urn:uuid:report",
            {
                "resourceType": "DiagnosticReport",
                "identifier": [{"value": report_no}],
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                                "code": "RAD",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": system, "code": local, "display": "胸部CT平扫"}]},
                "subject": {"reference": "urn:uuid:patient"},
                "effectiveDateTime": performed.isoformat(),
                "issued": (performed + timedelta(hours=5)).isoformat(),
                "performer": [{"reference": "urn:uuid:org"}],
                "resultsInterpreter": [{"display": "赵立新"}],
                "imagingStudy": [{"reference": "urn:uuid:study"}],
                "result": [{"reference": "urn:uuid:findings"}],
                "conclusion": "右肺上叶尖段磨玻璃结节（约5mm），建议12个月后低剂量CT复查。",
            },
        ),
    ]
    return json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}, ensure_ascii=False
    ).encode()


def _ct_series(
    study_uid: str, accession: str, institution: str, performed: datetime
) -> list[bytes]:
    """厚层 5 mm, 薄层 1 mm and a DERIVED MPR reformat, from pydicom's real CT slice."""
    # pydicom where the demo makes its images: every ``huren`` command imports this
    # module, and pydicom is a second and a half of its start.
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    template_path = get_testdata_file("CT_small.dcm")
    assert template_path is not None
    series = [
        (2, "胸部平扫 5mm 轴位", 5.0, False, 6),
        (3, "胸部平扫 1mm 轴位 肺算法", 1.0, False, 12),
        (4, "冠状位 MPR 3mm", 3.0, True, 4),
    ]
    local = performed.astimezone(CHINA_TZ)
    files = []
    for number, description, thickness, derived, images in series:
        series_uid = generate_uid(prefix=UID_ROOT, entropy_srcs=[study_uid, str(number)])
        for n in range(1, images + 1):
            ds = pydicom.dcmread(template_path)
            ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: Chinese descriptions (PS3.3 C.12.1.1.2)
            sop = generate_uid(prefix=UID_ROOT, entropy_srcs=[series_uid, str(n)])
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.FrameOfReferenceUID = generate_uid(prefix=UID_ROOT, entropy_srcs=[study_uid, "f"])
            ds.PatientID, ds.PatientName = PATIENT_MRN, "Li^Xiuying"
            ds.PatientSex, ds.PatientBirthDate = "F", "19620314"
            ds.AccessionNumber = accession
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = local.strftime("%Y%m%d")
            ds.StudyTime = ds.SeriesTime = local.strftime("%H%M%S")
            ds.StudyDescription, ds.InstitutionName = "胸部CT平扫", institution
            ds.Modality, ds.BodyPartExamined = "CT", "CHEST"
            ds.SeriesNumber, ds.SeriesDescription = number, description
            ds.SliceThickness, ds.InstanceNumber = thickness, n
            # PS3.3 C.7.6.1.1.2: DERIVED for reformats, ORIGINAL for acquired slices.
            ds.ImageType = (
                ["DERIVED", "SECONDARY", "MPR"] if derived else ["ORIGINAL", "PRIMARY", "AXIAL"]
            )
            z = -120.0 + (n - 1) * thickness
            ds.ImagePositionPatient, ds.SliceLocation = [-158.1, -179.0, z], z
            buf = BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            files.append(buf.getvalue())
    return files


def send_story(container: Container) -> Story:
    """Hospital A sends the patient's results; returns who is who for the printout."""
    from pydicom.uid import generate_uid

    now = container.clock.now()
    catalog = container.catalog.get()
    a, b = choose_hospitals(catalog, now)
    a_name, b_name = catalog.institutions[a].name, catalog.institutions[b].name
    day = now.astimezone(CHINA_TZ).strftime("%Y%m%d")
    ct_at = (
        (now - timedelta(days=5))
        .astimezone(CHINA_TZ)
        .replace(hour=9, minute=12, second=0, microsecond=0)
    )
    lft_at = (
        (now - timedelta(days=3))
        .astimezone(CHINA_TZ)
        .replace(hour=7, minute=45, second=0, microsecond=0)
    )
    cbc_at = (
        (now - timedelta(days=9))
        .astimezone(CHINA_TZ)
        .replace(hour=8, minute=5, second=0, microsecond=0)
    )
    study_uid = generate_uid(prefix=UID_ROOT, entropy_srcs=[a, day, "ct"])
    accession = f"CT{day}0318"
    bundles = [
        _ct_bundle(
            a,
            a_name,
            _local_code(catalog, a, CT_CHEST),
            f"YX{day}0318",
            accession,
            study_uid,
            ct_at,
        ),
        _lab_bundle(
            a,
            a_name,
            _local_code(catalog, a, LFT),
            "肝功能",
            "24325-3",
            f"JY{day}1107",
            LIVER_PANEL,
            lft_at,
            # What a lab writes beside a raised value: the clinician sees it on the card.
            notes={"ALT": "结果偏高，已复查确认"},
        ),
        _lab_bundle(
            a,
            a_name,
            _local_code(catalog, a, CBC),
            "血常规",
            "58410-2",
            f"JY{day}0562",
            BLOOD_COUNT,
            cbc_at,
        ),
    ]
    for raw in bundles:
        container.intake.receive(parse_transaction(raw, default_institution=a).message)
    for data in _ct_series(study_uid, accession, a, ct_at):
        container.imaging.store_instance(data, institution=a, source=Source.DIMSE)
    marks = {}
    for item in STORY_ITEMS:
        stored = [
            r
            for r in container.results.results_for_patient(_story_patient_id(container), [item])
            if r.institution == a
        ]
        marks[item] = (stored[0].mark_symbol or "无标识") if stored else "—"
    return Story(
        producer=a,
        producer_name=a_name,
        orderer=b,
        orderer_name=b_name,
        national_id=national_id(),
        patient_name=PATIENT_NAME,
        orderer_local_codes={i: _local_code(catalog, b, i) for i in STORY_ITEMS},
        marks=marks,
    )


def _story_patient_id(container: Container) -> int:
    from huren.domain.identity import IdentifierKind, PatientIdentifier

    found = container.results.find_patients(
        PatientIdentifier(IdentifierKind.NATIONAL_ID, national_id())
    )
    return found[0]


# What hospital A's LIS interface engine sent besides the story, for the integration
# engineer's pages: one result whose local code hospital A has not mapped yet (stored,
# listed under 未对码项目) and one message refused for a missing patient identifier (AE,
# listed under 拒收消息 with the field named). Another patient than the story's.
OTHER_PATIENT_ID = "13010419750822451"  # 石家庄新华区, born 1975-08-22 (17 digits)


def _oru(institution: str, control_id: str, at: datetime, pid3: str, obr4: str, obx: str) -> bytes:
    stamp = at.astimezone(CHINA_TZ).strftime("%Y%m%d%H%M%S")
    segments = [
        f"MSH|^~\\&|LIS|{institution}|HUREN|HUREN|{stamp}||ORU^R01^ORU_R01|{control_id}|P|2.5.1"
        "|||AL|NE||UNICODE UTF-8",
        f"PID|1||{pid3}||赵^建国||19750822|M",
        f"OBR|1|ORD-{control_id}|RPT-{control_id}|{obr4}|||{stamp}|||||||{stamp}|血清|||||||"
        f"{stamp}||CH|F",
        obx,
    ]
    return "\r".join(segments).encode()


def send_interface_traffic(container: Container, story: Story) -> list[str]:
    """Hospital A's LIS sends two messages over the MLLP path; returns their ACK codes."""
    receiver = Hl7Receiver(
        container.intake, container.clock, Channel.HL7V2_MLLP, SqlResponseLog(container.engine)
    )
    at = container.clock.now() - timedelta(hours=3)
    national = OTHER_PATIENT_ID + national_id_check_digit(OTHER_PATIENT_ID)
    unmapped = _oru(
        story.producer,
        f"DEMO-{at:%Y%m%d}-0101",
        at,
        f"{national}^^^CHN^NI",
        "LIS-HCY-2026^同型半胱氨酸（新增项目）^L",
        "OBX|1|NM|HCY^同型半胱氨酸^L||12.6|umol/L|5-15|N|||F",
    )
    refused = _oru(
        story.producer,
        f"DEMO-{at:%Y%m%d}-0102",
        at,
        "",  # PID-3 left empty by a misconfigured interface
        "LIS-GLU^葡萄糖^L",
        "OBX|1|NM|GLU^葡萄糖^L||5.4|mmol/L|3.9-6.1|N|||F",
    )
    return [receiver.handle(raw).code for raw in (unmapped, refused)]
