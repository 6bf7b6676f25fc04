"""Input/output models of the auth endpoints."""

from __future__ import annotations

from pydantic import BaseModel, Field

from huren.domain.accounts import Role


class TokenOut(BaseModel):
    """RFC 6749 §5.1 access token response."""

    access_token: str
    token_type: str = Field("bearer", description="总是 bearer")
    expires_in: int = Field(description="有效期（秒）")


class PrincipalOut(BaseModel):
    account_id: int
    username: str
    display_name: str
    role: Role
    role_label: str
    institution: str | None = None
    jurisdiction: str | None = None
    department: str | None = None
    patient_id: int | None = None
