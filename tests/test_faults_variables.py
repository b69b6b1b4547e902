"""``CARBONCTX_*`` variables as shell scripts and job files set them: stray whitespace, values
of whitespace alone, other letter cases; an error names the variable and says what to use."""

from __future__ import annotations

import pytest

from carbonctx import _config
from carbonctx._config.validation import build
from carbonctx.errors import ConfigurationError


@pytest.mark.parametrize(
    "name",
    [
        "CARBONCTX_CPU_BACKENDS",  # was no CPU backend at all
        "CARBONCTX_GPU",  # was GPUs off
        "CARBONCTX_NODE_SAMPLER",
        "CARBONCTX_STRICT",
        "CARBONCTX_ESTIMATE",
        "CARBONCTX_NODE",
        "CARBONCTX_JOB",
        "CARBONCTX_WORLD_SIZE",
        "CARBONCTX_OUTPUT",  # was a file named " "
        "CARBONCTX_INTERVALS",
    ],
)
@pytest.mark.parametrize("blank", [" ", "\t", "\n", " \u00a0"])
def test_a_variable_of_whitespace_alone_is_unset_like_an_empty_one(name: str, blank: str) -> None:
    assert build(None, {}, {name: blank}) == build(None, {}, {name: ""}) == build(None, {}, {})


def test_whitespace_around_a_value_is_no_part_of_it() -> None:
    s = build(
        None,
        {},
        {
            "CARBONCTX_ESTIMATE": " Always\n",
            "CARBONCTX_ON_FORK": "disable ",
            "CARBONCTX_NODE": " node-1 ",
            "CARBONCTX_JOB": "job-7\n",
            "CARBONCTX_OUTPUT": "out.jsonl\n",
            "CARBONCTX_RANK": " 1 ",
            "CARBONCTX_WORLD_SIZE": "2 ",
        },
    )
    assert (s.estimate, s.on_fork, s.node, s.job, s.output) == (
        "always",
        "disable",
        "node-1",
        "job-7",
        "out.jsonl",
    )
    assert (s.rank, s.world_size) == (1, 2)


@pytest.mark.parametrize(
    ("name", "value"), [("CARBONCTX_ESTIMATE", "sometimes"), ("CARBONCTX_ON_FORK", "5s")]
)
def test_a_bad_choice_names_its_variable_and_the_choices(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{name}='{value}': use one of") as err:
        build(None, {}, {name: value})
    assert "always" in str(err.value) or "restart" in str(err.value)


def test_a_bmc_password_keeps_its_spaces() -> None:
    got = _config.from_env(
        {
            "CARBONCTX_REDFISH_URL": " https://bmc.example ",
            "CARBONCTX_REDFISH_USER": "admin",
            "CARBONCTX_REDFISH_PASSWORD": " pass word ",
        }
    )
    assert got["redfish_url"] == "https://bmc.example"
    assert got["redfish_password"] == " pass word "


@pytest.mark.parametrize("key", ["output", "cache_dir", "sys_root"])
@pytest.mark.parametrize("blank", ["", " ", "\n"])
def test_a_blank_path_argument_is_unset_like_a_blank_variable(key: str, blank: str) -> None:
    # cache_dir="" was the working directory; output=" " a file named by a space.
    assert getattr(build(None, {key: blank}, {}), key) is None


@pytest.mark.parametrize("flag", [True, False])
def test_a_pue_of_true_or_false_is_refused_not_read_as_one_or_zero(flag: bool) -> None:
    with pytest.raises(ConfigurationError, match=f"pue={flag} is not a usable PUE"):
        build(None, {"pue": flag}, {})
