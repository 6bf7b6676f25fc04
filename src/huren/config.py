"""Settings, read once from the environment (prefix ``HUREN_``) or a ``.env`` file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUREN_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///./var/huren.db",
        description="SQLAlchemy URL: sqlite:///path (embedded) or postgresql+psycopg://...",
    )
    data_dir: Path = Field(default=Path("./var/data"), description="DICOM files and exports")
    host: str = "127.0.0.1"
    port: int = 8000
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11112
    dicom_ae_title: str = "HUREN"
    dicom_fsync: bool = Field(
        default=True,
        description="flush received DICOM data to disk (one journal fsync shared by every "
        "instance waiting at that moment) before answering success; off: survives a process "
        "kill but not an OS crash, like the SQLite WAL NORMAL setting",
    )
    base_url: str = Field(default="", description="public URL used in links; empty = request's own")
    # Keys: HMAC key for identifier lookup hashes, AES-256-GCM key for display values,
    # signing key for access tokens. All base64/hex text; the demo generates them and says so.
    identifier_hash_key: SecretStr = SecretStr("")
    identifier_encryption_key: SecretStr = SecretStr("")
    token_signing_key: SecretStr = SecretStr("")
    token_ttl_seconds: int = 3600
    jurisdiction: str = Field(default="HE", description="home jurisdiction of this node")
    workbench_frame_ancestors: str = Field(
        default="'self'",
        description="CSP frame-ancestors of the embeddable workbench page: the HIS origins "
        "allowed to show it in a frame, space separated (e.g. 'self' https://his.hospital.cn)",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="server processes sharing the HTTP and MLLP ports (huren serve --workers)",
    )
    cds_threads: int = Field(
        default=0,
        ge=0,
        description="threads answering CDS Hooks service calls in each server process; "
        "0 = the default for the database (huren.api.routes.cdshooks.CALL_WORKERS)",
    )
    start_mllp: bool = True
    background_jobs: bool = True
    monitoring_refresh_seconds: float = 60.0
    start_dicom: bool = True


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
