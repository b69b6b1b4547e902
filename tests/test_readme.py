"""The README holds: its Python examples run, its commands parse, the names and keywords it quotes
are the code's, its fences close, its layout trees and links (and CONTRIBUTING's) point at files
that exist. The Settings table, variables, quoted figures and extras: test_readme_settings.py.

Python blocks run in a fresh interpreter against simulated hardware (``sim.env()``), with every
provider pointed at a closed loopback port and an audit hook that refuses any other network
connection. Names a block uses without defining them must be placeholders listed here (the
reader's own code: ``train_one_epoch``, a ``Trainer``'s ``model``...), for which the test supplies
a small stand-in. A block that cannot run here is marked in the README with an HTML comment right
before it: ``<!-- readme-test: skip (why) -->``, or ``<!-- readme-test: join -->`` to run it after
the Python block before it; markers are kept rare (see ``MAX_MARKERS``).
"""

from __future__ import annotations

import argparse
import ast
import builtins
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from carbonctx import _cli, errors
from carbonctx._config import (
    DEFAULT_URLS,
)
from carbonctx.testing import SimulatedMachine

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_TEXT = README.read_text(encoding="utf-8")
#: Generous bound on one README block (a tiny Trainer run on the CPU included): a hang fails.
BLOCK_TIMEOUT_S = 50
#: Markers that keep a block from running on its own; a README that needs more is a README
#: whose examples are not examples.
MAX_MARKERS = 2

# ------------------------------------------------------------------------------- the blocks


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str | None = None  # the readme-test marker right before it, if any


_FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*readme-test:\s*((?:(?!-->).)*?)\s*-->\s*\Z", re.S)


def blocks(text: str = README_TEXT) -> list[Block]:
    out = []
    for m in _FENCE.finditer(text):
        before = text[: m.start()]
        marker = _MARKER.search(before.rstrip() + "\n" if before.strip() else "")
        out.append(
            Block(
                lang=m[1],
                code=m[2],
                line=before.count("\n") + 1,
                marker=marker[1] if marker else None,
            )
        )
    return out


def test_every_fence_closes() -> None:
    """An unclosed fence turns the rest of the page into code (and a tree into prose)."""
    fences = re.findall(r"^```", README_TEXT, re.M)
    assert len(fences) == 2 * len(blocks()), "a ``` fence of the README opens or closes nothing"


def test_the_layout_trees_name_real_files() -> None:
    trees = [b for b in blocks() if b.lang == "" and re.match(r"(rust|python)/", b.code)]
    assert len(trees) >= 2
    for b in trees:
        root: Path | None = None
        for k, line in enumerate(b.code.splitlines(), start=b.line + 1):
            m = re.match(r"( *)(\S+)", line)
            if not m or len(m[1]) not in (0, 2):
                continue  # a description's continuation
            path = REPO / m[2] if not m[1] else (root or REPO) / m[2]
            if not m[1]:
                root = path
            assert path.exists(), f"README line {k}: {m[2]} is not in {path.parent}"


def python_blocks(text: str = README_TEXT) -> list[Block]:
    """The README's Python blocks, each joined onto its predecessor where marked ``join``."""
    out: list[Block] = []
    for b in blocks(text):
        if b.lang != "python":
            continue
        if b.marker == "join":
            assert out, f"README line {b.line}: 'join' marker on the first Python block"
            prev = out[-1]
            out[-1] = Block("python", prev.code + "\n" + b.code, prev.line, prev.marker)
        else:
            out.append(b)
    return out


def test_markers_are_known_and_few() -> None:
    markers = [(b.line, b.marker) for b in blocks() if b.marker is not None]
    for line, marker in markers:
        assert marker == "join" or re.fullmatch(r"skip \(.+\)", marker), (
            f"README line {line}: unknown marker {marker!r}; use 'skip (why)' or 'join'"
        )
    assert len(markers) <= MAX_MARKERS, f"README blocks kept from running alone: {markers}"
    assert python_blocks(), "the README shows no Python"


def test_a_marker_belongs_to_the_block_right_after_it() -> None:
    text = (
        "Intro.\n\n<!-- readme-test: skip (needs a token) -->\n\n```python\nx = 1\n```\n\n"
        "<!-- readme-test: join -->\nThen prose.\n\n```python\ny = x\n```\n"
        "<!-- readme-test: join -->\n```python\nz = x\n```\n"
    )
    assert [(b.line, b.marker, b.code) for b in blocks(text)] == [
        (5, "skip (needs a token)", "x = 1\n"),
        (12, None, "y = x\n"),
        (16, "join", "z = x\n"),
    ]
    assert [(b.line, b.code) for b in python_blocks(text)] == [
        (5, "x = 1\n"),
        (12, "y = x\n\nz = x\n"),
    ]


def _free_names(code: str) -> set[str]:
    """Names the block reads but never binds (builtins aside): what it expects from elsewhere."""
    tree = ast.parse(code)
    bound: set[str] = set()
    loaded: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (loaded if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return loaded - bound - set(dir(builtins))


@dataclass(frozen=True)
class StandIn:
    """Code standing for the reader's own objects (``provides``: the first one names the
    stand-in, which a block gets when it uses that name), the modules it needs, and checks of
    what the README says about the result (run after the block)."""

    provides: tuple[str, ...]
    setup: str
    needs: tuple[str, ...] = ()
    check: str = ""


_LOOP = StandIn(
    provides=("train_one_epoch", "loader", "train_on"),
    setup=(
        "import time\n\ndef train_one_epoch():\n    time.sleep(0.002)\n\n"
        "loader = range(3)\n\ndef train_on(batch):\n    time.sleep(0.001)\n"
    ),
)
_TRAINER = StandIn(
    provides=("Trainer", "model", "args", "train", "val"),
    needs=("torch", "transformers"),
    setup="""
import torch, transformers
from transformers import Trainer, TrainingArguments

class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.ids = (torch.randint(0, 64, (n, 1), generator=g) + torch.arange(16)) % 64
    def __len__(self):
        return len(self.ids)
    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}

torch.manual_seed(0)
model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
    vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0))
args = TrainingArguments(
    output_dir="hf-out", per_device_train_batch_size=8, num_train_epochs=1, logging_steps=2,
    eval_strategy="epoch", save_strategy="no", report_to="none", use_cpu=True,
    disable_tqdm=True, dataloader_num_workers=0, seed=0)
train, val = _Tokens(32, 1), _Tokens(16, 2)
""",
    # "every log gets energy_j, co2_g, energy_j_per_sample, ..."; the callback's own figures.
    check="""
_train_logs = [h for h in trainer.state.log_history if "loss" in h]
assert _train_logs, trainer.state.log_history
for _h in _train_logs:
    assert _h["energy_j"] > 0 and _h["co2_g"] > 0 and _h["energy_j_per_sample"] > 0, _h
assert any("eval_energy_j" in _h for _h in trainer.state.log_history)
assert cb.total_j > 0 and cb.epochs and not cb.budget_exceeded
""",
)
#: What stands here for the reader's own code in README blocks.
STAND_INS = (_LOOP, _TRAINER)
#: The frameworks an integration's module needs (a block importing it runs where they import).
INTEGRATION_NEEDS = {
    "huggingface": ("torch", "transformers"),
    "lightning": ("torch", "lightning"),
    "keras": ("keras",),
    "prometheus": ("prometheus_client",),
    "opentelemetry": ("opentelemetry",),
    "ipython": ("IPython",),
    "frames": ("pandas",),
}

#: Keras 3 on the PyTorch backend (the one the test extra installs), unless one is chosen.
_KERAS = {"KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "torch")}

# Refuses every connection and name lookup but loopback's, in the block's own interpreter.
_GUARD = """
import socket as _socket, sys as _sys
_LOCAL = {None, "localhost", "127.0.0.1", "::1", b"localhost", b"127.0.0.1"}
def _no_network(event, args):
    if event == "socket.getaddrinfo" and args[0] not in _LOCAL:
        raise OSError(f"README test: no network (lookup of {args[0]!r})")
    if event == "socket.connect":
        sock, address = args
        if sock.family in (_socket.AF_INET, _socket.AF_INET6) and address[0] not in _LOCAL:
            raise OSError(f"README test: no network (connection to {address!r})")
_sys.addaudithook(_no_network)
"""
# What the README says of every region's result: finite figures, energy_j the sum of cpu_j,
# dram_j and gpu_j, nothing missing on a machine where every source works.
_RESULTS = """
import math as _math
import carbonctx as _carbonctx
for _name, _value in list(globals().items()):
    if isinstance(_value, _carbonctx.Tracker):
        _r = _value.result()
        assert not _r.missing, (_name, _r.missing)
        assert _math.isfinite(_r.energy_j) and _r.energy_j > 0, (_name, _r)
        _parts = _r.cpu_j + _r.dram_j + _r.gpu_j
        assert _math.isclose(_r.energy_j, _parts, rel_tol=1e-9, abs_tol=1e-9), (_name, _r)
        assert _math.isfinite(_r.co2_g) and _r.co2_g > 0, (_name, _r)
print("readme-test: block ran")
"""


def _module_available(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _warning_names() -> list[str]:
    return [n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, Warning)]


@pytest.fixture
def offline_env(tmp_path: Path) -> dict[str, str]:
    """Every provider at a closed loopback port, frameworks offline, no progress line."""
    env = {f"CARBONCTX_{pid.upper()}_URL": "http://127.0.0.1:9" for pid in DEFAULT_URLS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    env.update(CARBONCTX_PROGRESS="0", PYTHONUNBUFFERED="1")
    env.update(_KERAS)
    return env


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"line{b.line}")
def test_python_block_runs(
    block: Block, sim: SimulatedMachine, offline_env: dict[str, str], tmp_path: Path
) -> None:
    if block.marker and block.marker.startswith("skip"):
        pytest.skip(f"README line {block.line}: {block.marker}")
    free = _free_names(block.code)
    stand_ins = [s for s in STAND_INS if s.provides[0] in free]
    unknown = sorted(free.difference(*(s.provides for s in stand_ins)))
    assert not unknown, (
        f"README line {block.line} uses {unknown} without defining them: define them in the "
        "block, join it to the block before (<!-- readme-test: join -->), or give them a "
        "stand-in in STAND_INS here"
    )
    needs = [m for s in stand_ins for m in s.needs]
    for mod in re.findall(r"carbonctx\.integrations\.(\w+)", block.code):
        needs += INTEGRATION_NEEDS.get(mod, ())
    missing = [m for m in dict.fromkeys(needs) if not _module_available(m)]
    if missing:
        pytest.skip(f"README line {block.line} needs {', '.join(missing)}")
    script = tmp_path / f"readme_line{block.line}.py"
    script.write_text(
        "\n".join(
            [_GUARD, *(s.setup for s in stand_ins), block.code]
            + [s.check for s in stand_ins]
            + [_RESULTS]
        )
    )
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, **sim.env(), **offline_env},
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    where = f"README line {block.line}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert r.returncode == 0, where
    assert "readme-test: block ran" in r.stdout, where
    warned = [w for w in _warning_names() if w in r.stderr]
    assert not warned, where


# ------------------------------------------------------------------------------- commands


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = _cli.build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def command_lines() -> Iterator[tuple[int, str, list[str]]]:
    """(README line, command, flags named in its trailing comments) for each ``carbonctx``
    command in a shell block."""
    for b in blocks():
        if b.lang != "sh":
            continue
        current: list[Any] | None = None
        for k, raw in enumerate(b.code.splitlines(), start=b.line + 1):
            code, _, comment = raw.partition("#")
            if not code.strip() and current is not None:
                current[2] += re.findall(r"--[a-z][a-z-]*", comment)
                continue
            if current is not None:
                yield current[0], current[1], current[2]
            current = None
            for part in re.split(r"&&|;|\|", code):
                words = part.split()
                if words and words[0].rsplit("/", 1)[-1] == "carbonctx":
                    current = [k, " ".join(["carbonctx", *words[1:]]), []]
                    current[2] += re.findall(r"--[a-z][a-z-]*", comment)
        if current is not None:
            yield current[0], current[1], current[2]


def test_every_command_in_the_readme_parses() -> None:
    subs = _subparsers()
    found = list(command_lines())
    assert {c.split()[1] for _, c, _ in found} >= {"devices", "run", "report", "intensity"}
    for line, command, comment_flags in found:
        argv = command.split()[1:]
        try:
            _cli.build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"README line {line}: `{command}` does not parse")
        options = subs[argv[0]]._option_string_actions
        unknown = [f for f in comment_flags if f not in options]
        assert not unknown, f"README line {line}: `carbonctx {argv[0]}` has no {unknown}"


def test_every_command_quoted_in_the_text_exists_with_its_flags() -> None:
    subs = _subparsers()
    spans = re.findall(r"`carbonctx ([a-z]+)((?: [^`]*)?)`", README_TEXT)
    assert spans
    for cmd, rest in spans:
        assert cmd in subs, f"README quotes `carbonctx {cmd}`: no such command"
        flags = re.findall(r"(?<!\S)(--?[a-z][a-z-]*)", rest)
        unknown = [f for f in flags if f not in subs[cmd]._option_string_actions]
        assert not unknown, f"README quotes `carbonctx {cmd}{rest}`: no {unknown}"


def test_the_notebook_magics_options_are_its_own() -> None:
    pytest.importorskip("IPython")
    from carbonctx.integrations.ipython import _parse

    m = re.search(r"`%%carbonctx ([^`]*)`", README_TEXT)
    assert m, "the README no longer shows the cell magic's options"
    line = " ".join(re.findall(r"\[(--[^\]]+)\]", m[1])) + " name"
    name, tags, quiet, _ = _parse(line)
    assert (name, tags, quiet) == ("name", {"k": "v"}, True)


# ------------------------------------------------------------------------------ links


@dataclass
class Link:
    doc: str
    line: int
    target: str
    exists: bool = field(default=False)


def relative_links(doc: str) -> list[Link]:
    text = (REPO / doc).read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        target = m[1]
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (REPO / doc).parent / target.split("#", 1)[0]
        out.append(Link(doc, text[: m.start()].count("\n") + 1, target, path.exists()))
    return out


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md"])
def test_relative_links_resolve(doc: str) -> None:
    broken = [f"{x.doc}:{x.line} {x.target}" for x in relative_links(doc) if not x.exists]
    assert not broken, broken


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md"])
def test_quoted_paths_exist(doc: str) -> None:
    """Paths in code spans (``scripts/setup.sh``, ``benches/bench_*.py``; ``NAME`` and
    ``<name>`` stand for any name) match a file of the repository."""
    text = (REPO / doc).read_text(encoding="utf-8")
    quoted = re.findall(r"`(?:\S+ )*((?:\.ci|benches|python|rust|scripts|tests)/[^`\s]*)`", text)
    assert quoted
    for path in quoted:
        pattern = re.sub(r"<\w+>|\b[A-Z]{3,}\b", "*", path.rstrip("/"))
        assert list(REPO.glob(pattern)), f"{doc} quotes {path}: no such file"


# --------------------------------------------------------------- the API the text quotes


# Resolves each name given in argv, importing modules along the way; prints one line each:
# "ok", "framework" (an integration whose framework is not installed) or the error.
_RESOLVE = """
import importlib, sys
for dotted in sys.argv[1:]:
    parts = dotted.split(".")
    try:
        obj = importlib.import_module(parts[0])
        for k, part in enumerate(parts[1:], start=1):
            if hasattr(obj, part):
                obj = getattr(obj, part)
            else:
                obj = importlib.import_module(".".join(parts[: k + 1]))
        print(dotted, "ok")
    except ModuleNotFoundError as e:
        ours = (e.name or "").startswith("carbonctx")
        print(dotted, f"{type(e).__name__}: {e}" if ours else "framework")
    except (ImportError, AttributeError) as e:
        print(dotted, f"{type(e).__name__}: {e}")
"""


def _code_text() -> str:
    """The README's inline code and Python blocks."""
    spans = re.findall(r"`([^`]+)`", _FENCE.sub("", README_TEXT))
    return "\n".join(spans + [b.code for b in blocks() if b.lang == "python"])


def test_every_carbonctx_name_the_readme_quotes_exists() -> None:
    """Resolved in a fresh interpreter: the integrations import their frameworks."""
    names = sorted(set(re.findall(r"\bcarbonctx(?:\.[A-Za-z_]\w*)+", _code_text())))
    assert len(names) > 10
    r = subprocess.run(
        [sys.executable, "-c", _RESOLVE, *names],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **_KERAS},
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_S,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    results = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert set(results) == set(names), r.stdout
    wrong = {n: v for n, v in results.items() if v not in ("ok", "framework")}
    assert not wrong, f"names the README quotes that carbonctx lacks: {wrong}"


def _parameters(module: str) -> dict[str, tuple[set[str], bool]]:
    """Per top-level function and class (its ``__init__``) of an integration module, read from
    its source (no framework imported): parameter names, and whether it takes ``**kwargs``."""
    path = REPO / "python/carbonctx/integrations" / f"{module}.py"
    out: dict[str, tuple[set[str], bool]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        fn = node
        if isinstance(node, ast.ClassDef):
            inits = [
                n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"
            ]
            fn = inits[0] if inits else None
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = fn.args
            params = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs}
            out[node.name] = (params, a.kwarg is not None)  # type: ignore[union-attr]
    return out


def _calls(text: str) -> Iterator[tuple[str, str]]:
    """(name, keyword arguments' text) of every call in text, nested ones included."""
    for m in re.finditer(r"\b(\w+)\(", text):
        depth, k = 1, m.end()
        while k < len(text) and depth:
            depth += {"(": 1, ")": -1}.get(text[k], 0)
            k += 1
        args = text[m.end() : k - 1]
        yield m[1], re.sub(r"\([^()]*\)", "", args)  # the arguments of nested calls left out


_EXTRA_MODULE = {"otel": "opentelemetry", "pandas": "frames"}


def test_the_integrations_take_the_arguments_the_readme_gives_them() -> None:
    section = README_TEXT.split("\n## Integrations\n", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for para in re.split(r"\n(?=\*\*)", section):
        m = re.match(r"\*\*[^*]+\*\* \(`carbonctx\[(\w+)\]`\)", para)
        if not m:
            continue
        module = _EXTRA_MODULE.get(m[1], m[1])
        params = _parameters(module)
        for span in re.findall(r"`([^`]+)`", para):
            for name, args in _calls(span):
                if name not in params:
                    continue
                known, open_ = params[name]
                for kw in re.findall(r"(\w+)=", args):
                    checked += 1
                    assert open_ or kw in known, f"README: {module}.{name}() has no {kw}="
        for budget in sorted(set(re.findall(r"`(budget_\w+)`", para))):
            checked += 1
            assert budget in params["CarbonctxCallback"][0], f"{module}: no {budget}"
    assert checked >= 5
