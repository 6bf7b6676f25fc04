"""Imports every table module so that ``metadata`` holds the whole schema."""

from huren.adapters.db import tables
from huren.adapters.db.tables import metadata

__all__ = ["metadata", "tables"]
