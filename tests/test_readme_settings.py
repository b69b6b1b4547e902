"""The README's Settings table, variables and the figures, extras and dependencies it quotes are
the code's: every setting it names exists with the default it states, every public setting is in
it, every ``CARBONCTX_*`` name it mentions is read, and each variable sets the setting it is listed
with (found by giving the variable sample values)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from carbonctx._carbon.zones import resolve_zone
from carbonctx._config import (
    DEFAULT_URLS,
    ESTIMATE_MODES,
    FORK_MODES,
    MAX_REDFISH_LAG_S,
    SIGNALS,
    Settings,
    carbon_settings,
    from_env,
    log_dir,
    progress,
    redfish,
)
from carbonctx.errors import ConfigurationError
from carbonctx.testing import SimulatedMachine

REPO = Path(__file__).resolve().parents[1]
README_TEXT = (REPO / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the settings


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def settings_table() -> list[list[str]]:
    section = README_TEXT.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows = [_cells(ln) for ln in section.splitlines() if ln.startswith("| ")]
    assert rows and rows[0] == ["setting", "variable", "default"], rows[:1]
    return [r for r in rows[1:] if not set("".join(r)) <= set("- ")]


def _outside_parentheses(text: str) -> str:
    while (shorter := re.sub(r"\([^()]*\)", "", text)) != text:
        text = shorter
    return text


def _setting_names(cell: str) -> list[str]:
    return re.findall(r"`([a-z][a-z0-9_]*)`", _outside_parentheses(cell))


def variables_in(text: str) -> list[str]:
    """The ``CARBONCTX_*`` names in text, ``_X`` abbreviations expanded after a full name
    (```CARBONCTX_REDFISH_URL`, `_USER``: ``CARBONCTX_REDFISH_USER``)."""
    out: list[str] = []
    for line in text.splitlines():
        prefix = None
        for tok in re.findall(r"`?(CARBONCTX_[A-Z0-9_]*\*?|_[A-Z][A-Z0-9_]*)", line):
            if tok.startswith("CARBONCTX_"):
                prefix = tok.rsplit("_", 1)[0]
                out.append(tok)
            elif prefix is not None and re.search(rf"`{tok}`", line):
                out.append(prefix + tok)
    return list(dict.fromkeys(out))


def _probe(var: str, value: str, extra: Mapping[str, str] | None = None) -> set[str]:
    """The settings ``var=value`` sets (from_env, the carbon settings or the zone rules);
    raises ConfigurationError where the value is refused."""
    base = dict(extra or {})
    env = {**base, var: value}
    fields = set(from_env(env)) - set(from_env(base))
    c0, c1 = carbon_settings(env=base), carbon_settings(env=env)
    renamed = {"provider_ids": "providers"}
    for f in attrs.fields(type(c1)):
        if getattr(c0, f.name) != getattr(c1, f.name) and f.name != "pue_source":
            fields.add(renamed.get(f.name, f.name))
    if resolve_zone(env=env).rule == var:
        fields.add("zone")
    return fields


_SAMPLES = ("1", "2", "0.5", "marginal", "v4", "gb", "powercap=1", "powercap", "always", "disable")
_SAMPLES += ("https://127.0.0.1:9", "DE", "CAISO_NORTH", "tok")
#: Variables read only as a pair: both are set for the probe, which then changes one.
_PAIR = {"CARBONCTX_LATITUDE": "0", "CARBONCTX_LONGITUDE": "0"}
_COMPANIONS = dict.fromkeys(_PAIR, _PAIR)


def setting_of(var: str) -> set[str]:
    """The settings a variable sets, found by giving it sample values."""
    for value in _SAMPLES:
        try:
            fields = _probe(var, value, _COMPANIONS.get(var))
        except ConfigurationError:
            continue
        if fields:
            return fields
    return set()


def test_every_setting_the_table_names_exists_and_its_variables_set_it() -> None:
    fields = {f.name for f in attrs.fields(Settings)}
    for setting, variable, _ in settings_table():
        names = _setting_names(setting)
        unknown = [n for n in names if n not in fields]
        assert not unknown, f"the Settings table names {unknown}, not settings of configure()"
        for var in variables_in(_outside_parentheses(variable)):
            got = setting_of(var)
            assert got, f"{var} (Settings table) sets no setting"
            if names:
                assert got & set(names), f"{var} sets {got}, the table says {names}"


def test_every_setting_is_in_the_table() -> None:
    listed: set[str] = set()
    for setting, variable, _ in settings_table():
        listed.update(_setting_names(setting))
        for var in variables_in(_outside_parentheses(variable)):
            listed |= setting_of(var)
    unlisted = sorted({f.name for f in attrs.fields(Settings)} - listed)
    assert not unlisted, f"settings of configure() missing from the README's table: {unlisted}"


def test_the_table_names_every_providers_url_variable() -> None:
    row = next(r for r in settings_table() if r[0].startswith("provider base URLs"))
    assert set(variables_in(row[1])) == {f"CARBONCTX_{p.upper()}_URL" for p in DEFAULT_URLS}


def _rust(path: str) -> str:
    return (REPO / "rust" / path).read_text(encoding="utf-8")


def _rust_value(path: str, pattern: str) -> str:
    m = re.search(pattern, _rust(path))
    assert m, f"{pattern!r} not in rust/{path}: update this test with the code"
    return m[1]


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _interval_ms(devices: dict[str, Any], backend: str) -> str:
    (s,) = {x["interval_s"] for x in devices["sources"] if x["backend"] == backend}
    return f"{s * 1e3:g} ms"


def _expected_defaults(sim_devices: dict[str, Any]) -> dict[str, Callable[[], str]]:
    """The default column each row must show, from the code, keyed by the row's first setting
    (or variable). Defaults that say where a value comes from are checked for being unset."""
    s, c = Settings(), carbon_settings(env={})
    bmc = redfish(Settings(redfish_url="https://10.0.0.5"))
    assert bmc is not None
    roots = [
        _rust_value("sampler/src/sensors/source.rs", rf'{k}: PathBuf::from\("([^"]+)"\)')
        for k in ("sys", "dev", "proc")
    ]
    libs = [
        _rust_value(f"sampler/src/sensors/{d}/ffi.rs", r'const DEFAULT_LIBRARY: &str = "([^"]+)"')
        for d in ("nvml", "amd")
    ]
    assert (s.power_share, s.cpu_tdp_w, s.gpus, s.node_sampler, s.node_dir) == (None,) * 5
    assert all(getattr(s, k) is None for k in s.rank_kwargs())
    assert all(getattr(s, k) is None for k in ("sys_root", "dev_root", "proc_root"))
    assert c.urls == DEFAULT_URLS and s.zone is None
    no_credentials = (c.entsoe_token, c.eia_key, c.watttime_username, c.watttime_password)
    assert no_credentials == (None,) * 4 and (c.watttime_region, c.latitude) == (None, None)
    # ``CARBONCTX_INTERVALS`` is in milliseconds, as the example says.
    assert from_env({"CARBONCTX_INTERVALS": "powercap=1,nvml=20"}) == {
        "intervals": {"powercap": 0.001, "nvml": 0.02}
    }
    return {
        "output": lambda: "none" if s.output is None else f"`{s.output}`",
        "cpu_backends": lambda: f"`{','.join(s.cpu_backends)}`",
        "gpu": lambda: _on(s.gpu),
        "hwmon": lambda: _on(s.hwmon),
        "amdsmi": lambda: _on(s.amdsmi),
        "gpu_power_samples": lambda: _on(s.gpu_power_samples),
        "sampler_realtime": lambda: _on(s.sampler_realtime),
        "power_share": lambda: _rust_value(
            "sampler/src/sampler/config.rs", r"power_share: ([0-9.]+),"
        ),
        "redfish_url": lambda: f"none; verify {_on(bmc['verify'] is True)}; {bmc['period_s']:g} s",
        "redfish_lag_s": lambda: f"{bmc['lag_s']:g} s",
        "estimate": lambda: f"`{s.estimate}`",
        "intervals": lambda: "{} RAPL, {} NVML".format(
            _interval_ms(sim_devices, "powercap"), _interval_ms(sim_devices, "nvml")
        ),
        "window": lambda: f"{s.window}",
        "strict": lambda: _on(s.strict),
        "on_fork": lambda: f"`{s.on_fork}`",
        "summary_at_exit": lambda: _on(s.summary_at_exit),
        "zone": lambda: f"table figures, PUE {c.pue:.1f}",
        "signal": lambda: f"`{c.signal}`, {c.deadline_s:g} s",
        "entsoe_token": lambda: f"none; `{c.electricitymaps_api}`",
        "CARBONCTX_SYSFS_ROOT": lambda: ", ".join(f"`{x}`" for x in roots + libs),
        "node_sampler": lambda: "on where a node runs several processes of a job; `{}`".format(
            _rust_value("sampler/src/shared/mod.rs", r'dir: PathBuf::from\("([^"]+)"\)')
        ),
    }


def test_the_table_states_the_code_defaults(sim: SimulatedMachine) -> None:
    import carbonctx

    expected = _expected_defaults(carbonctx.devices())
    seen = set()
    for setting, variable, default in settings_table():
        keys = _setting_names(setting) + variables_in(variable)
        key = next((k for k in keys if k in expected), None)
        if key is None:
            continue  # a default that says where the value comes from (a launcher, a model)
        seen.add(key)
        assert default == expected[key](), f"Settings table, {keys[0]}: README says {default!r}"
    assert seen == set(expected), f"rows not found in the Settings table: {set(expected) - seen}"


@pytest.mark.parametrize(
    ("setting", "values"),
    [("estimate", ESTIMATE_MODES), ("on_fork", FORK_MODES), ("signal", SIGNALS)],
)
def test_the_table_lists_each_choice(setting: str, values: tuple[str, ...]) -> None:
    (cell,) = [r[0] for r in settings_table() if setting in _setting_names(r[0])]
    paren = re.search(rf"`{setting}` \(([^)]*)\)", cell)
    assert paren, cell
    assert set(re.findall(r"`(\w+)`", paren[1])) == set(values), cell


# ------------------------------------------------------------------------------ variables


class _Recording(dict[str, str]):
    """An environment that records every name looked up in it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self.read.add(str(key))
        return super().__contains__(key)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def variables_read() -> set[str]:
    """``CARBONCTX_*`` names carbonctx reads: those the settings' readers look up (names built
    at run time included), and those named in an environment read anywhere in python/ or
    rust/ (``.get("...")``, ``environ["..."]``, ``getenv``, ``env::var``)."""
    env = _Recording()
    from_env(env)
    carbon_settings(env=env)
    log_dir(None, env)
    progress(None, env)
    resolve_zone(env=env)
    read = {n for n in env.read if n.startswith("CARBONCTX_")}
    call = re.compile(r"""(?:get|getenv|environ\[|var|var_os)\(?\s*["'](CARBONCTX_[A-Z0-9_]+)""")
    for root, pattern in (("python", "*.py"), ("rust", "*.rs")):
        for path in (REPO / root).rglob(pattern):
            read.update(call.findall(path.read_text(encoding="utf-8")))
    return read


def test_every_variable_the_readme_names_is_read() -> None:
    read = variables_read()
    named = variables_in(README_TEXT)
    assert len(named) > 30
    for var in named:
        if var.endswith("*"):
            assert any(r.startswith(var[:-1]) for r in read), f"README names {var}: none is read"
        else:
            assert var in read, f"README names {var}, which carbonctx never reads"


def test_the_values_the_readme_gives_variables_are_taken() -> None:
    given = re.findall(r"`(CARBONCTX_[A-Z0-9_]+)=([^`\s]+)`", README_TEXT)
    assert given
    for var, value in given:
        assert _probe(var, value), f"README: `{var}={value}` changes nothing"


def test_configure_calls_in_the_text_name_real_settings() -> None:
    fields = {f.name for f in attrs.fields(Settings)}
    spans = re.findall(r"configure\(([^`]*)", README_TEXT)
    names = {n for s in spans for n in re.findall(r"(\w+)=", s)}
    assert names and names <= fields, names - fields


# ------------------------------------------------------------------ figures from the code


def _figures() -> list[tuple[str, float]]:
    """(README phrase with the figure as its group, the code's figure)."""
    from carbonctx._carbon.intensity import MAX_G_PER_KWH
    from carbonctx._carbon.providers.http import DEFAULT_LIMITS, RETRY_AFTER_MAX_S
    from carbonctx._cli.run import KILL_AFTER_S
    from carbonctx.integrations._meter import Meter

    meter = inspect.signature(Meter.__init__).parameters
    bmc = redfish(Settings(redfish_url="https://10.0.0.5"))
    assert bmc is not None
    return [
        (r"killed (\d+) s later \(--kill-after\)", KILL_AFTER_S),
        (r"recent `window` regions \((\d+) by default\)", Settings().window),
        (r"regions of `interval` seconds \((\d+) by default\)", meter["interval"].default),
        (r"the first `max_regions` \((\d+)\)", meter["max_regions"].default),
        (r"The BMC is read every (\d+) s", bmc["period_s"]),
        (r"`redfish_lag_s` set \(at most (\d+) s", MAX_REDFISH_LAG_S),
        (r"checked \(finite, 0 to ([\d,]+) g/kWh\)", MAX_G_PER_KWH),
        (r"`Retry-After` is honoured up to an (hour)", RETRY_AFTER_MAX_S / 3600),
        (
            r"overall deadline \((\d+) s, `CARBONCTX_INTENSITY_DEADLINE`\)",
            carbon_settings(env={}).deadline_s,
        ),
        (r"answers stop at (\d+) MiB", DEFAULT_LIMITS.max_bytes / 2**20),
    ]


def test_the_figures_the_readme_quotes_from_the_code() -> None:
    for phrase, value in _figures():
        m = re.search(phrase.replace(" ", r"\s+"), README_TEXT)
        assert m, f"the README no longer says {phrase!r}: update this test"
        stated = 1.0 if m[1] == "hour" else float(m[1].replace(",", ""))
        assert stated == value, f"README: {m[0]!r}; the code: {value:g}"


# ------------------------------------------------------------------ extras and dependencies


def _toml_list(section: str, key: str) -> list[str]:
    """A list of strings from pyproject.toml (read as text: tomllib is Python 3.11+)."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    body = text.split(f"\n[{section}]\n", 1)[1].split("\n[", 1)[0]
    m = re.search(rf"^{re.escape(key)} = \[(.*?)\]", body, re.M | re.S)
    assert m, f"no {key} in [{section}]"
    return re.findall(r'^\s*"([^"]+)"', m[1], re.M) or re.findall(r'"([^"]+)"', m[1])


def test_the_extras_and_dependencies_are_pyprojects() -> None:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    extras_section = text.split("\n[project.optional-dependencies]\n", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z][\w-]*) = \[", extras_section, re.M)) - {"test", "dev"}
    install = README_TEXT.split("\n## Install\n", 1)[1].split("\n## ", 1)[0]
    para = install.split("Extras name", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([a-z]+)`", para))
    assert named == extras, f"README's extras {sorted(named)}, pyproject's {sorted(extras)}"
    shown = re.findall(r"\[([a-z,]+)\]", install.split("```sh", 1)[1].split("```", 1)[0])
    assert shown and set(",".join(shown).split(",")) <= extras, shown
    deps = {
        re.split(r"[<>=!~ ;\[]", d, maxsplit=1)[0] for d in _toml_list("project", "dependencies")
    }
    said = re.search(r"# (.*) come with it", install)
    assert said, "the README no longer says what comes with the wheel"
    assert set(re.findall(r"\w+", said[1])) - {"and"} == deps, (said[1], deps)
