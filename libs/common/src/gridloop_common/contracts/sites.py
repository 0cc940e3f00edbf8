"""The typed contract of ``flux.mg_sites`` (docs/design.md §4): one set of rules for every service that reads a site.

A site is a value of ``flux.mg_device_registry.site``. Its row in ``flux.mg_sites`` is optional: a site without
one has the defaults, ``SiteParameters.defaults(name)`` (time zone UTC, no import or export limit, no site meter).
telemetry-ingest's triggers hold the same rules in SQL (``flux.site_problem``, ``flux.refuse_unknown_site_timezones``)
so a bad row is refused when written, naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["DEFAULT_SITE_TIMEZONE", "InvalidSiteParameters", "SiteParameters"]

DEFAULT_SITE_TIMEZONE: Final = "UTC"
# Names in the zone database that are not places (the database's other layouts and its placeholders).
_NOT_PLACES: Final = ("posixrules", "localtime", "Factory")


class InvalidSiteParameters(ValueError):
    """A site row that breaks the contract; ``field`` names the first field at fault."""

    def __init__(self, site: str, field: str, message: str) -> None:
        super().__init__(f"site {site}: {field}: {message}")
        self.site = site
        self.field = field
        self.message = message


class SiteParameters(BaseModel):
    """One site's parameters: its IANA time zone and its grid limits (kW, magnitudes; None: no limit)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    timezone: str = Field(default=DEFAULT_SITE_TIMEZONE, description="IANA time zone, e.g. America/Toronto.")
    import_limit_kw: float | None = Field(default=None, ge=0, description="Most drawn from the grid, kW.")
    export_limit_kw: float | None = Field(default=None, ge=0, description="Most fed into the grid, kW.")
    site_meter: str | None = Field(default=None, min_length=1, description="The registry's meter at the grid.")
    metadata: dict[str, Any] | None = None
    described: bool = Field(default=True, description="False: the site has no flux.mg_sites row (the defaults).")

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, name: str) -> str:
        if name.startswith(("posix/", "right/")) or name in _NOT_PLACES:
            raise ValueError(f"{name!r} is not an IANA time zone name")
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as error:
            raise ValueError(f"{name!r} is not an IANA time zone name") from error
        return name

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @classmethod
    def defaults(cls, name: str) -> SiteParameters:
        """A site of the registry that has no flux.mg_sites row."""
        return cls(name=name, described=False)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> SiteParameters:
        """A flux.mg_sites row (name, timezone, import_limit_kw, export_limit_kw, site_meter, metadata)."""
        name = str(row.get("name", ""))
        values = {
            key: row[key]
            for key in ("name", "timezone", "import_limit_kw", "export_limit_kw", "site_meter", "metadata")
            if key in row
        }
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else "site"
            raise InvalidSiteParameters(name, field, first["msg"]) from error
