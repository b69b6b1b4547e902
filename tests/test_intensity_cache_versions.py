"""Intensity cache files shared by processes of different carbonctx versions: a newer
version's file is neither believed nor overwritten, and the warning says what to do."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer
from test_intensity_failures import CLIENT_TIMEOUT, T0, _cache_doc, _poison, make, messages
from test_intensity_failures import server_value as server_value

__all__ = ["CLIENT_TIMEOUT", "T0"]  # read by the fixtures


def test_a_newer_versions_cache_file_is_neither_read_nor_replaced(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    newer = json.dumps(_cache_doc("recent", g_per_kwh=999.0) | {"format": 2})
    _poison(tmp_path, "recent", newer)
    s = make(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="newer carbonctx") as rec:
        cur = s.current()
    (msg,) = messages(rec)
    assert "cache format 2" in msg and "upgrade carbonctx" in msg
    assert "CARBONCTX_CACHE_DIR" in msg and "replaced" not in msg
    assert cur.g_per_kwh != 999.0  # nothing of the newer file believed
    s.refresh(wait=True)
    assert s.current().source == "live" and s.current().g_per_kwh == 200.0
    # The newer version's processes still find their file as they wrote it.
    assert (tmp_path / "cache" / "electricitymaps-DE-recent.json").read_text() == newer
