"""Output path templates for the ranks of a job."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonctx._distributed.paths import (
    distinguishes_ranks,
    expand_path,
    placeholders,
    safe_name,
)
from carbonctx._distributed.ranks import RankInfo
from carbonctx.errors import ConfigurationError

RANK3 = RankInfo(
    rank=3,
    world_size=4,
    local_rank=1,
    local_world_size=2,
    node="gpu01-3f2a9c1e",
    job="812.0",
    distributed=True,
)
ALONE = RankInfo(node="laptop", job=None)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("runs/{job}/rank{rank}.json", "runs/812.0/rank3.json"),
        ("{node}/{local_rank}.csv", "gpu01-3f2a9c1e/1.csv"),
        ("r{rank:03d}-l{local_rank:02d}.json", "r003-l01.json"),
        ("{{literal}}-{rank}.txt", "{literal}-3.txt"),
        ("/abs/{job}-{rank}", "/abs/812.0-3"),
    ],
)
def test_placeholders_are_filled(template: str, expected: str) -> None:
    assert expand_path(template, RANK3) == Path(expected)


def test_path_like_template() -> None:
    assert expand_path(Path("out") / "{rank}.json", RANK3) == Path("out/3.json")


def test_node_and_job_are_made_safe() -> None:
    info = RankInfo(
        rank=0, world_size=2, node="../etc host", job="prterun-vm-15293@1", distributed=True
    )
    assert expand_path("{node}/{job}/{rank}.json", info) == Path(
        "_._etc_host/prterun-vm-15293_1/0.json"
    )
    assert safe_name("..") == "_."
    assert safe_name("") == "_"
    assert safe_name("a/b\\c d") == "a_b_c_d"


def test_outside_a_job() -> None:
    assert expand_path("{job}/{rank}-{local_rank}.json", ALONE) == Path("nojob/0-0.json")
    # Outside a distributed job a plain path stays as given.
    assert expand_path("emissions.csv", ALONE) == Path("emissions.csv")


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("emissions.csv", "emissions.rank3.csv"),
        ("runs/out", "runs/out.rank3"),
        ("runs/", "runs/rank3"),
        ("runs/{job}.json", "runs/812.0.rank3.json"),
        ("{local_rank}.json", "1.rank3.json"),  # local ranks repeat on every node
    ],
)
def test_a_path_that_does_not_tell_ranks_apart_gets_the_rank(template: str, expected: str) -> None:
    assert not distinguishes_ranks(template)
    assert expand_path(template, RANK3) == Path(expected)


def test_rank_0_gets_the_suffix_too() -> None:
    info = RankInfo(rank=0, world_size=2, node="n", distributed=True)
    assert expand_path("out.json", info) == Path("out.rank0.json")


def test_node_and_local_rank_tell_ranks_apart() -> None:
    assert distinguishes_ranks("{node}-{local_rank}.json")
    assert expand_path("{node}-{local_rank}.json", RANK3) == Path("gpu01-3f2a9c1e-1.json")


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{host}.json", "uses {host}; it may use {rank}, {local_rank}, {node} and {job}"),
        ("{}.json", "uses {}"),
        ("{0}.json", "uses {0}"),
        ("{rank.real}.json", "uses {rank.real}"),
        ("{node[0]}.json", "uses {node[0]}"),
        ("{rank!r}.json", "conversion"),
        ("{node:>10}.json", "only {rank} and {local_rank} take one"),
        ("{rank:.2f}.json", "not an integer format"),
        ("{rank", "malformed"),
        ("rank}", "malformed"),
    ],
)
def test_bad_templates_say_what_is_allowed(template: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as e:
        expand_path(template, RANK3)
    assert words in str(e.value)


def test_local_rank_unknown_in_a_job() -> None:
    info = RankInfo(rank=1, world_size=2, local_rank=None, node="n", distributed=True)
    with pytest.raises(ConfigurationError, match="no launcher says this process's local rank"):
        expand_path("{node}-{local_rank}.json", info)


def test_placeholders_lists_the_used_ones() -> None:
    assert placeholders("{job}/{node}-{rank:02d}") == ["job", "node", "rank"]
    assert placeholders("plain.json") == []
