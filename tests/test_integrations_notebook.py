"""Notebooks and pandas: HTML display of results, the IPython magics in a real InteractiveShell,
and the per-region DataFrame."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest

import carbonctx
from carbonctx.testing import SimulatedMachine


@pytest.fixture
def shell(sim: SimulatedMachine) -> Iterator[Any]:
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False  # no SQLite history file
    ip = interactiveshell.InteractiveShell.instance(config=cfg)
    ip.extension_manager.load_extension("carbonctx.integrations.ipython")
    yield ip
    interactiveshell.InteractiveShell.clear_instance()


def _html(ip: Any, obj: Any) -> str:
    data, _ = ip.display_formatter.format(obj)
    return str(data["text/html"])


def test_a_cell_is_a_region_and_shows_its_measurement(shell: Any) -> None:
    res = shell.run_cell("%%carbonctx --tag model=tiny train\nx = sum(range(200_000))\n")
    assert res.success, res.error_in_exec
    m = res.result
    assert isinstance(m, carbonctx.Measurement)
    assert m.name == "train" and m.tags == {"model": "tiny"} and m.energy_j > 0
    assert shell.user_ns["x"] == sum(range(200_000))  # the cell ran in the user's namespace
    assert shell.user_ns["_carbonctx"] is m
    html = _html(shell, m)
    assert "carbonctx region &#x27;train&#x27;" in html and "<table>" in html
    assert "package" in html.lower() and "counter" in html


def test_a_line_is_a_region_and_an_empty_line_shows_the_statistics(shell: Any) -> None:
    res = shell.run_cell("%carbonctx y = [i * i for i in range(10_000)]")
    assert res.success, res.error_in_exec
    assert res.result.name == "line" and len(shell.user_ns["y"]) == 10_000
    res = shell.run_cell("%carbonctx")
    table = res.result
    assert isinstance(table, carbonctx.StatsTable) and "line" in table
    html = _html(shell, table)
    assert '<td style="text-align:left">line</td>' in html


def test_a_failing_cell_raises_as_usual_and_is_still_measured(shell: Any) -> None:
    res = shell.run_cell("%%carbonctx --quiet boom\nraise KeyError('x')\n")
    assert res.result is None
    assert shell.user_ns["_carbonctx"].name == "boom"
    assert shell.user_ns["_carbonctx"].duration_s > 0


def _shown(shell: Any, cell: str) -> tuple[Any, list[str]]:
    """Run ``cell``; its result and the plain text of what it displayed."""
    from IPython.utils.capture import capture_output

    with capture_output() as cap:
        res = shell.run_cell(cell)
    return res, [o.data.get("text/plain", "") for o in cap.outputs]


def test_a_final_semicolon_hides_the_value_and_not_the_measurement(shell: Any) -> None:
    res, shown = _shown(shell, "%%carbonctx value\n6 * 7\n")
    assert res.success and "42" in shown
    # As in any cell, `;` (a comment after it aside) hides the last value.
    res, shown = _shown(shell, "%%carbonctx hidden\nz = 6\nz * 7;  # no output\n")
    assert res.success, res.error_in_exec
    assert "42" not in shown
    assert isinstance(res.result, carbonctx.Measurement) and res.result.name == "hidden"


def test_a_semicolon_in_a_string_or_a_comment_hides_nothing(shell: Any) -> None:
    # Only a `;` that is the cell's last token hides the value (as IPython has it).
    res, shown = _shown(shell, "%%carbonctx text\n'a;' + 'b;'\n")
    assert res.success and "'a;b;'" in shown
    res, shown = _shown(shell, "%%carbonctx comment\n6 * 7  # not hidden;\n")
    assert res.success and "42" in shown
    res, shown = _shown(shell, '%%carbonctx triple\n"""x\n;"""\n')
    assert res.success and "'x\\n;'" in shown


def test_a_cell_with_top_level_await_says_how_to_measure_it(shell: Any) -> None:
    res = shell.run_cell("%%carbonctx fetch\nimport asyncio\nawait asyncio.sleep(0)\n")
    assert isinstance(res.error_in_exec, SyntaxError)
    assert "top-level await" in str(res.error_in_exec)
    assert "carbonctx.track('fetch')" in str(res.error_in_exec)
    # A plain syntax error stays itself.
    res = shell.run_cell("%%carbonctx broken\nx = (\n")
    assert isinstance(res.error_in_exec, SyntaxError)
    assert "await" not in str(res.error_in_exec)


def test_bad_options_say_what_is_accepted(shell: Any) -> None:
    res = shell.run_cell("%%carbonctx --bogus name\npass\n")
    assert isinstance(res.error_in_exec, ValueError)
    assert "--tag key=value" in str(res.error_in_exec)


def test_html_escapes_names_and_shows_missing_sources(sim: SimulatedMachine) -> None:
    with carbonctx.track("<b>step</b>") as t:
        pass
    m = t.result()
    html = m._repr_html_()
    assert "&lt;b&gt;step&lt;/b&gt;" in html and "<b>step" not in html
    empty = carbonctx.StatsTable([])._repr_html_()
    assert "no regions measured" in empty


def test_a_dataframe_has_a_row_per_region_with_fields_sources_and_tags(
    sim: SimulatedMachine,
) -> None:
    pytest.importorskip("pandas")
    from carbonctx.integrations.frames import frame, recent_frame

    with carbonctx.track("a", tags={"model": "x"}) as a:
        pass
    for _ in range(3):
        with carbonctx.track("b"):
            pass
    df = recent_frame()
    assert len(df) == 4 and list(df["name"]) == ["a", "b", "b", "b"]
    assert df.index.name == "id" and df.loc[a.id, "energy_j"] == a.energy_j
    assert df.loc[a.id, "tag.model"] == "x"
    assert df["tag.model"].isna().sum() == 3
    sources = [c for c in df.columns if c.startswith("joules.")]
    assert sources and math.isclose(
        df.loc[a.id, sources].sum(skipna=True), sum(s.joules or 0 for s in a.by_source.values())
    )
    assert {"duration_s", "cpu_j", "dram_j", "gpu_j", "co2_g", "zone", "missing"} <= set(df.columns)
    one = frame([a])
    assert list(one.index) == [a.id]


def test_load_ext_carbonctx_and_the_public_frame(sim: SimulatedMachine) -> None:
    """``%load_ext carbonctx`` (the package itself) gives the magics; ``carbonctx.recent_frame()``
    is the per-region DataFrame."""
    interactiveshell = pytest.importorskip("IPython.core.interactiveshell")
    pytest.importorskip("pandas")
    from traitlets.config import Config

    cfg = Config()
    cfg.HistoryManager.enabled = False
    ip = interactiveshell.InteractiveShell.instance(config=cfg)
    try:
        ip.run_line_magic("load_ext", "carbonctx")
        res = ip.run_cell("%%carbonctx cell\ny = 2 + 2\n")
        assert res.success, res.error_in_exec
        assert isinstance(res.result, carbonctx.Measurement) and res.result.name == "cell"
    finally:
        interactiveshell.InteractiveShell.clear_instance()
    df = carbonctx.recent_frame()
    assert "cell" in list(df["name"])
