"""What a live provider is: the :class:`Provider` protocol and the :class:`ProviderError` every
failed request becomes (its ``kind`` drives back-off and warnings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Protocol

import attrs

if TYPE_CHECKING:
    import httpx

    from carbonctx._carbon.intensity import Intensity

__all__ = ["FAILURE_KINDS", "Fetched", "Provider", "ProviderError"]


class ProviderError(Exception):
    """A provider request failed. ``kind`` is one of :data:`FAILURE_KINDS`."""

    def __init__(self, kind: str, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.retry_after = retry_after


#: Failure kinds and what they mean to a user.
FAILURE_KINDS = {
    "timeout": "the request timed out",
    "connection": "could not connect",
    "auth": "the credentials were refused (HTTP 401)",
    "forbidden": "access refused: the plan, zone or token does not allow it (HTTP 403)",
    "rate-limited": "the provider asked us to slow down",
    "server": "the provider had a server error",
    "malformed": "the answer could not be read",
    "unknown-zone": "the provider does not know this zone",
    "http": "the provider refused the request",
    "no-data": "the provider had no values for this zone and time",
    "throttled": "held back to respect the provider's request limit",
    "error": "an unexpected error",
}


@attrs.frozen
class Fetched:
    """What one fetch gave: its periods, and the failures of secondary requests that did not
    stop it (``(endpoint, error)``: a history refused while the latest value came)."""

    periods: list[Intensity]
    problems: tuple[tuple[str, ProviderError], ...] = ()
    #: False when a secondary request was not sent (held back after a refusal)
    complete: bool = True


class Provider(Protocol):
    """What the intensity service needs of a live provider."""

    id: ClassVar[str]
    name: ClassVar[str]
    #: seconds a fetched value counts as fresh: the provider's update cadence
    ttl_s: ClassVar[float]
    #: how long past its period a value may stand in for "now" when nothing newer is known
    max_age_s: ClassVar[float]
    has_forecast: ClassVar[bool]
    #: what its values are: "average" (of the generation mix) or "marginal"
    signal: ClassVar[str]

    def covers(self, zone: str) -> bool: ...

    def fetch(self, client: httpx.Client, zone: str, kind: str, now: float) -> Fetched:
        """Periods for ``zone``: ``kind="recent"`` (past day up to now) or ``"forecast"``."""
        ...
