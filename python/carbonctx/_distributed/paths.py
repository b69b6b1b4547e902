"""Output paths for the ranks of a job: ``{rank}``, ``{local_rank}``, ``{node}``, ``{job}``.

``{rank}`` and ``{local_rank}`` take an integer format (``{rank:03d}``); ``{node}`` and ``{job}``
are made safe for a file name (characters other than letters, digits, ``.``, ``_`` and ``-``
become ``_``; no leading dot). A process not part of a job is rank 0, local rank 0; with no job
id ``{job}`` is ``nojob``. ``{{`` and ``}}`` are literal braces. Any other placeholder, or a
malformed one, is a :class:`~carbonctx.errors.ConfigurationError` naming the ones allowed.

A path that cannot tell the ranks of a distributed job apart (no ``{rank}``, and not both
``{node}`` and ``{local_rank}``) would have every rank overwrite the others' file, so the rank is
added before the suffix (``out.json`` becomes ``out.rank3.json``; a directory ``runs/`` becomes
``runs/rank3``) on every rank, rank 0 included, so that a job's files look alike and
``carbonctx report DIR`` can merge them. Outside a distributed job the path is used as given.

>>> from carbonctx._distributed.ranks import RankInfo
>>> info = RankInfo(rank=3, world_size=4, local_rank=1, local_world_size=2, node="gpu01",
...                 job="812.0", distributed=True)
>>> str(expand_path("runs/{job}/{node}-r{rank:02d}.json", info))
'runs/812.0/gpu01-r03.json'
>>> str(expand_path("emissions.csv", info))
'emissions.rank3.csv'
"""

from __future__ import annotations

import os
import re
import string
from pathlib import Path

from carbonctx._distributed.ranks import RankInfo
from carbonctx.errors import ConfigurationError

__all__ = ["PLACEHOLDERS", "distinguishes_ranks", "expand_path", "placeholders", "safe_name"]

PLACEHOLDERS = ("rank", "local_rank", "node", "job")
_INT_FIELDS = ("rank", "local_rank")
_ALLOWED = "{rank}, {local_rank}, {node} and {job} ({{ and }} for literal braces)"


def safe_name(text: str) -> str:
    """``text`` as one path component: only letters, digits, ``.``, ``_``, ``-``; no leading dot."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", text)
    out = re.sub(r"^\.", "_", out)
    return out or "_"


def placeholders(template: str) -> list[str]:
    """The placeholders ``template`` uses, checked; raises ConfigurationError otherwise."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigurationError(
            f"output path {template!r} is malformed ({e}); it may use {_ALLOWED}"
        ) from None
    out: list[str] = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            shown = "{" + field + "}" if field else "{}"
            raise ConfigurationError(
                f"output path {template!r} uses {shown}; it may use {_ALLOWED}"
            )
        if conversion is not None:
            raise ConfigurationError(
                f"output path {template!r} uses a conversion (!{conversion}) in {{{field}}}; "
                f"it may use {_ALLOWED}"
            )
        if spec and field not in _INT_FIELDS:
            raise ConfigurationError(
                f"output path {template!r} gives {{{field}}} a format ({spec}); only {{rank}} "
                "and {local_rank} take one, like {rank:03d}"
            )
        if spec and ("{" in spec or not re.fullmatch(r"[0-9<>=^+ #,_dxXob-]*", spec)):
            raise ConfigurationError(
                f"output path {template!r} gives {{{field}}} the format {spec!r}, which is not "
                "an integer format; use one like {rank:03d}"
            )
        out.append(field)
    return out


def distinguishes_ranks(template: str) -> bool:
    """Whether every rank of a job gets its own file from ``template``."""
    used = set(placeholders(template))
    return "rank" in used or {"node", "local_rank"} <= used


def expand_path(template: str | os.PathLike[str], info: RankInfo) -> Path:
    """``template`` with this rank's values filled in (see the module's rules)."""
    text = os.fspath(template)
    used = placeholders(text)
    values = {
        "rank": info.rank,
        "local_rank": info.local_rank if info.local_rank is not None else 0,
        "node": safe_name(info.node) if info.node else "_",
        "job": safe_name(info.job) if info.job is not None else "nojob",
    }
    if "local_rank" in used and info.local_rank is None and info.distributed:
        raise ConfigurationError(
            f"output path {text!r} uses {{local_rank}} but no launcher says this process's "
            "local rank; use {rank}, or set LOCAL_RANK (or CARBONCTX_LOCAL_RANK)"
        )
    try:
        filled = text.format(**values)
    except (ValueError, TypeError) as e:
        raise ConfigurationError(
            f"output path {text!r} cannot be filled in ({e}); it may use {_ALLOWED}"
        ) from None
    if info.distributed and not distinguishes_ranks(text):
        tag = f"rank{info.rank}"
        if filled.endswith(("/", os.sep)):
            return Path(filled) / tag
        p = Path(filled)
        return p.with_name(f"{p.stem}.{tag}{p.suffix}") if p.name else p / tag
    return Path(filled)
