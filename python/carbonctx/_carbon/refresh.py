"""Keeping the cache fresh: fetch from the zone's provider off the caller's thread, back off
after failures, and warn once per series (and endpoint) and kind of failure, again after that
series has worked in between (a token revoked later is warned).

:class:`Refresher` owns the cached series (memory and disk), the one refresh thread and the HTTP
client; the service reads the series under :attr:`Refresher.lock`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from carbonctx._carbon.cache import CachedSeries, DiskCache, Failure, NewerCache, UnusableCache
from carbonctx._carbon.intensity import Intensity
from carbonctx._carbon.providers import Fetched, Provider, ProviderError
from carbonctx._carbon.providers.http import RETRY_AFTER_MAX_S
from carbonctx.errors import IntensityWarning

if TYPE_CHECKING:
    import httpx

__all__ = ["BACKOFF_BASE", "BACKOFF_MAX", "KEEP_HISTORY_S", "Refresher", "backoff"]

#: First back-off delay per kind of failure, in seconds; it doubles with each further failure.
BACKOFF_BASE: dict[str, float] = {
    "timeout": 60.0,
    "connection": 60.0,
    "server": 60.0,
    "rate-limited": 60.0,
    "malformed": 300.0,
    "no-data": 300.0,
    "http": 600.0,
    "error": 600.0,
    "auth": 3600.0,
    "forbidden": 3600.0,
    "unknown-zone": 86400.0,
}
BACKOFF_MAX = 6 * 3600.0
#: The longest any back-off holds, even one read from another process's cache file.
HOLD_MAX = 86400.0
KEEP_HISTORY_S = 48 * 3600.0
#: How long ``close()`` waits for a fetch in flight; the thread is a daemon and finishes (or
#: not) on its own, within the request's deadline.
CLOSE_WAIT_S = 1.0


def _hint(provider: Provider, kind: str) -> str:
    credentials = getattr(provider, "credentials", "")
    url = f"CARBONCTX_{provider.id.upper()}_URL"
    if kind == "auth" and credentials:
        return f"Check {credentials}."
    if kind == "forbidden":
        return "Check that your plan covers this zone and data" + (
            f" ({credentials})." if credentials else "."
        )
    if kind == "unknown-zone":
        if getattr(provider, "latitude", None) is not None:  # asked by coordinates
            return "Check the coordinates (CARBONCTX_LATITUDE and CARBONCTX_LONGITUDE)."
        return "Check the zone (CARBONCTX_ZONE or the zone argument)."
    if kind in ("timeout", "connection"):
        return f"Check the network, or {url}."
    return ""


def backoff(exc: ProviderError, attempts: int) -> float:
    """Seconds before asking again after ``attempts`` failures in a row, the last ``exc``: the
    provider's ``Retry-After`` where it gave one (capped), else doubling from the kind's base."""
    if exc.retry_after is not None:
        return min(BACKOFF_MAX, max(1.0, exc.retry_after))
    if exc.kind == "unknown-zone":
        return BACKOFF_BASE["unknown-zone"]
    base = BACKOFF_BASE.get(exc.kind, 600.0)
    return min(BACKOFF_MAX, base * 2.0 ** min(attempts - 1, 20))


def _longest_backoff(fail: Failure) -> float:
    """The longest back-off a failure of this kind and count can have been given."""
    doubling = backoff(ProviderError(fail.kind, ""), max(1, fail.attempts))
    if fail.kind in ("rate-limited", "server"):  # a Retry-After, or a provider's own ban
        return max(doubling, min(BACKOFF_MAX, RETRY_AFTER_MAX_S))
    return doubling


class Refresher:
    """Fetches ``provider``'s values for ``zone`` into the cache, at most one fetch at a time."""

    def __init__(
        self,
        provider: Provider,
        zone: str,
        disk: DiskCache,
        *,
        client: httpx.Client | None,
        clock: Callable[[], float],
        background: bool,
        secrets: tuple[str, ...],
    ) -> None:
        self.provider = provider
        self.zone = zone
        self.disk = disk
        self.clock = clock
        self.background = background
        self.series: dict[str, CachedSeries] = {
            "recent": CachedSeries(),
            "forecast": CachedSeries(),
        }
        self.want_forecast = False
        self.closed = False
        self._secrets = secrets
        self._client = client
        self._owns_client = client is None
        self._warned: set[tuple[str, str]] = set()  # (series or endpoint, kind of failure)
        self._unusable_warned = False
        self._pending: list[str] = []
        self._last_now = float("-inf")  # the latest clock reading seen
        self._init_threading()
        for kind in self.series:
            self.reload_disk(kind)

    def _init_threading(self) -> None:
        self._pid = os.getpid()
        self.lock = threading.RLock()  # guards series, _pending, thread
        self._refresh_mutex = threading.Lock()  # one fetch at a time
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ what the service calls

    def refresh(self, *, wait: bool, force: bool) -> None:
        if self.closed:
            return
        self.check_fork()
        if wait:
            self.run(force)
            self.emit_warnings(swallow=False)
        else:
            self.start_thread(force)

    def housekeeping(self, now: float) -> None:
        """Before a lookup: start a background refresh when one is due; pass on warnings."""
        self.check_fork()
        if self.background and not self.closed:
            thread = self.thread
            if (thread is None or not thread.is_alive()) and any(
                self.due(kind, now, False) for kind in self.kinds()
            ):
                self.start_thread(False)
        if self._pending:
            self.emit_warnings(swallow=True)

    def fresh(self, series: CachedSeries, now: float) -> bool:
        return series.fetched_at is not None and (
            series.fetched_at <= now < series.fetched_at + self.provider.ttl_s
        )

    def close(self) -> None:
        """Stop refreshing. A fetch in flight gets ``CLOSE_WAIT_S`` to finish; past that it
        is left to its daemon thread, which closes the client when it is done."""
        self.closed = True
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=CLOSE_WAIT_S)
            if thread.is_alive():
                return  # the thread closes the client (see run)
        self._close_client()

    def _close_client(self) -> None:
        with self.lock:
            client, self._client = self._client, None
        if self._owns_client and client is not None:
            client.close()

    def join(self, timeout: float = 30.0) -> None:
        """Wait for a background refresh to finish (for tests and orderly shutdown)."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------ scheduling

    def check_fork(self) -> None:
        if os.getpid() != self._pid:  # forked: the parent's thread and locks are not ours
            self._init_threading()
            if self._owns_client:
                self._client = None  # its sockets belong to the parent

    def kinds(self) -> list[str]:
        if self.provider.has_forecast and self.want_forecast:
            return ["recent", "forecast"]
        return ["recent"]

    def due(self, kind: str, now: float, force: bool) -> bool:
        self._follow_clock(now)
        series = self.series[kind]
        if series.failure is not None and now < series.failure.until:
            return False
        if now < series.hold_until:
            return False
        return force or not self.fresh(series, now)

    def _follow_clock(self, now: float) -> None:
        """The system clock set back (by hand, or NTP after a skew): a back-off and a hold keep
        the time they had left instead of growing by the step."""
        with self.lock:
            step = self._last_now - now
            self._last_now = max(self._last_now, now) if step <= 1.0 else now
            if step <= 1.0:
                return
            shifted = []
            for kind, series in self.series.items():
                if series.failure is not None:
                    series.failure.until -= step
                    shifted.append(kind)
                series.hold_until -= step
        for kind in shifted:  # or the file's back-off would come back at the next read
            self.write_disk(kind)

    def start_thread(self, force: bool) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return
            self.thread = threading.Thread(
                target=self.run,
                args=(force,),
                name="carbonctx-intensity-refresh",
                daemon=True,
            )
            self.thread.start()

    def _get_client(self) -> httpx.Client:
        import httpx

        if self._client is None:
            self._client = httpx.Client(
                timeout=httpx.Timeout(10.0, connect=5.0),
                headers={"user-agent": "carbonctx"},
            )
        return self._client

    # ------------------------------------------------------------------ fetching

    def run(self, force: bool) -> None:
        try:
            self._run(force)
        finally:
            if self.closed and threading.current_thread() is self.thread:
                self._close_client()  # close() did not wait for this fetch

    def _run(self, force: bool) -> None:
        prov = self.provider
        with self._refresh_mutex:
            for kind in self.kinds():
                if self.closed:
                    return
                now = self.clock()
                try:
                    self._follow_clock(now)  # before the file is read: it holds our back-off
                    self.reload_disk(kind)  # another process may have fetched it already
                    if not self.due(kind, now, force):
                        continue
                    got = prov.fetch(self._get_client(), self.zone, kind, now)
                except ProviderError as exc:
                    self._record_failure(kind, exc, now)
                except Exception as exc:  # a bug must not kill the thread or the caller
                    err = ProviderError("error", f"{prov.id}: {type(exc).__name__}")
                    self._record_failure(kind, err, now)
                else:
                    if not isinstance(got, Fetched):
                        got = Fetched(list(got))
                    self._record_success(kind, got.periods, now)
                    for endpoint, problem in got.problems:
                        self._warn_partial(kind, endpoint, problem)
                    if got.complete and not got.problems:  # all worked: refusals are news
                        with self.lock:
                            self._warned = {
                                k for k in self._warned if not k[0].startswith(f"{kind}/")
                            }

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _record_failure(self, kind: str, exc: ProviderError, now: float) -> None:
        prov = self.provider
        if exc.kind == "throttled":  # not a failure: the previous request was moments ago
            with self.lock:
                self.series[kind].hold_until = now + (exc.retry_after or 60.0)
            return
        with self.lock:
            series = self.series[kind]
            attempts = series.failure.attempts + 1 if series.failure is not None else 1
            delay = backoff(exc, attempts)
            reason = self._scrub(exc.reason)
            series.failure = Failure(exc.kind, reason, attempts, now + delay)
            if (kind, exc.kind) not in self._warned:
                self._warned.add((kind, exc.kind))
                hint = _hint(prov, exc.kind)
                if kind == "forecast":
                    what, then = "the forecast", "No forecast until it works"
                else:
                    what, then = (
                        "live carbon intensity",
                        "Using cached values, then the yearly table",
                    )
                self._pending.append(
                    f"carbonctx: {what} for zone {self.zone} is unavailable: "
                    f"{reason}. {then}; next try in {delay:.0f} s. {hint}".rstrip()
                )
        self.write_disk(kind)

    def _warn_partial(self, kind: str, endpoint: str, exc: ProviderError) -> None:
        """A secondary request failed while the fetch as a whole worked: warn once per
        endpoint and kind of failure."""
        with self.lock:
            key = (f"{kind}/{endpoint}", exc.kind)
            if key in self._warned:
                return
            self._warned.add(key)
            self._pending.append(
                f"carbonctx: {endpoint} for zone {self.zone} is unavailable: "
                f"{self._scrub(exc.reason)}. The values that came are used. "
                f"{_hint(self.provider, exc.kind)}".rstrip()
            )

    def _record_success(self, kind: str, periods: list[Intensity], now: float) -> None:
        with self.lock:
            series = self.series[kind]
            merged = dict(series.periods) if kind == "recent" else {}
            for p in periods:
                if p.valid_from is not None:
                    merged[p.valid_from.timestamp()] = p
            horizon = now - KEEP_HISTORY_S
            merged = {
                s: p
                for s, p in merged.items()
                if p.valid_to is not None and p.valid_to.timestamp() > horizon
            }
            series.set_periods(merged)
            series.fetched_at = now
            series.failure = None
            # it works again: a later failure of any kind is news, and warned
            self._warned = {k for k in self._warned if k[0] != kind}
        self.write_disk(kind)

    def _warn_unusable(self, why: str, then: str = "it is replaced on the next fetch") -> None:
        with self.lock:
            if self._unusable_warned:  # one warning, however many files
                return
            self._unusable_warned = True
            self._pending.append(
                f"carbonctx: ignored an unusable intensity cache file ({self._scrub(why)}); {then}."
            )

    def emit_warnings(self, *, swallow: bool) -> None:
        with self.lock:
            pending, self._pending = self._pending, []
        for message in pending:
            if swallow:
                # co2()/current() never raise, even where warnings are turned into errors;
                # the reason stays in each result's note.
                with contextlib.suppress(Warning):
                    warnings.warn(message, IntensityWarning, stacklevel=5)
            else:
                warnings.warn(message, IntensityWarning, stacklevel=4)

    # ------------------------------------------------------------------ disk

    def write_disk(self, kind: str) -> None:
        with self.lock:
            data = self.disk.snapshot(kind, self.series[kind])
        self.disk.write(kind, data)

    def reload_disk(self, kind: str) -> None:
        try:
            found = self.disk.read(kind)
        except NewerCache as exc:
            self._warn_unusable(
                str(exc),
                "it is left as it is and this process keeps its own figures in memory; "
                "upgrade carbonctx, or give each version its own cache_dir "
                "(CARBONCTX_CACHE_DIR)",
            )
            return
        except UnusableCache as exc:
            self._warn_unusable(str(exc))
            return
        if found is None:
            return
        fetched_at, periods, fail = found
        now = self.clock()
        if fetched_at is not None and fetched_at > now + 300:
            # this process's own file, the clock set back since, is no damage
            if fetched_at != self.series[kind].fetched_at:
                self._warn_unusable(f"{self.disk.path(kind)}: fetched in the future")
            return
        if fail is not None and fail.until > now + HOLD_MAX:
            # no back-off this code writes holds that long: not to be trusted
            self._warn_unusable(f"{self.disk.path(kind)}: a back-off of more than a day")
            return
        stretched = fail is not None and fail.until > now + _longest_backoff(fail)
        if fail is not None and stretched:
            # written before the clock was set back (by a process gone since): it keeps no
            # more than the longest its kind and count can give, not the step on top
            fail = Failure(fail.kind, fail.reason, fail.attempts, now + _longest_backoff(fail))
        with self.lock:
            self.series[kind].merge_from_disk(kind, self.zone, fetched_at, periods, fail)
        if stretched:  # or every later read would start it again from its own now, for ever
            self.write_disk(kind)
