"""IPython and Jupyter: ``%%carbonctx`` measures a cell, ``%carbonctx`` a line.

::

    %load_ext carbonctx.integrations.ipython

    %%carbonctx train-epoch
    train_one_epoch()                # the cell runs as the region "train-epoch"

    %carbonctx model.fit(x, y)       # one statement, as the region "line"
    %carbonctx                       # the per-name statistics so far

A measured cell runs as usual (its output, its last value, its errors), then its
:class:`~carbonctx.Measurement` is shown (as an HTML table in notebooks) and kept in the user's
namespace as ``_carbonctx``. Options before the name: ``--tag key=value`` (repeatable) and
``--quiet`` (keep the result, show nothing). A cell that ends in ``;`` hides its last value, as
IPython does, and still shows its measurement. A magic runs synchronously, so a cell with
top-level ``await`` cannot be measured whole: ``with carbonctx.track("name"):`` inside the cell
measures it (a clear error says so).
"""

from __future__ import annotations

import ast
import contextlib
import io
import shlex
import tokenize
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display

import carbonctx

__all__ = ["CarbonctxMagics", "load_ipython_extension", "unload_ipython_extension"]


def _parse(line: str) -> tuple[str | None, dict[str, str], bool, str]:
    """(name, tags, quiet, rest of the line) from ``[--tag k=v]... [--quiet] [name] [rest]``."""
    words = shlex.split(line, posix=True)
    tags: dict[str, str] = {}
    quiet = False
    i = 0
    while i < len(words) and words[i].startswith("--"):
        opt = words[i]
        if opt == "--quiet":
            quiet = True
        elif opt == "--tag" and i + 1 < len(words) and "=" in words[i + 1]:
            k, _, v = words[i + 1].partition("=")
            tags[k] = v
            i += 1
        else:
            raise ValueError(f"%carbonctx: unknown option {opt!r} (--tag key=value, --quiet)")
        i += 1
    rest = words[i:]
    name = rest[0] if rest else None
    return name, tags, quiet, " ".join(rest[1:])


@magics_class
class CarbonctxMagics(Magics):
    """The ``carbonctx`` line and cell magic."""

    @line_cell_magic  # type: ignore[untyped-decorator]
    def carbonctx(self, line: str, cell: str | None = None) -> Any:
        if cell is None:
            if not line.strip():
                return carbonctx.stats()
            # A line: the statement runs as the region "line".
            return self._measure("line", {}, False, line)
        name, tags, quiet, rest = _parse(line)
        if rest:
            raise ValueError(
                f"%%carbonctx takes one region name, got {line!r}: quote a name with spaces"
            )
        return self._measure(name or "cell", tags, quiet, cell)

    def _measure(self, name: str, tags: dict[str, str], quiet: bool, code: str) -> Any:
        shell = self.shell
        # As %%time does: IPython's own syntax (magics, !commands) is transformed first, and a
        # final expression's value is shown, as the cell's would be.
        source = shell.transform_cell(code)
        tree = ast.parse(source)
        last: ast.expr | None = None
        # (A final ``;`` hides the value, as IPython does.)
        if tree.body and isinstance(tree.body[-1], ast.Expr) and not _ends_in_semicolon(source):
            last = tree.body.pop().value
        try:
            body = compile(tree, "<carbonctx cell>", "exec")
            tail = compile(ast.Expression(last), "<carbonctx cell>", "eval") if last else None
        except SyntaxError as e:
            if _needs_top_level_await(source):
                raise SyntaxError(
                    "%%carbonctx cannot measure a cell with top-level await (a magic runs "
                    "synchronously): measure it inside the cell instead, with "
                    f"carbonctx.track({name!r}): await ..."
                ) from e
            raise
        ns = shell.user_ns
        value = None
        region = carbonctx.track(name, tags=tags or None)
        try:
            with region:
                exec(body, shell.user_global_ns, ns)
                if tail is not None:
                    value = eval(tail, shell.user_global_ns, ns)
        finally:
            # The region ended, whether the cell failed or not (unless it never began).
            with contextlib.suppress(carbonctx.CarbonctxError):
                ns["_carbonctx"] = region.result()
            # IPython keeps a failed cell's traceback, and with it this frame: it must not hold
            # the region (and through it the runtime's resolved batches) for ever.
            del region
        if value is not None:
            display(value)
        return None if quiet else ns["_carbonctx"]


def _ends_in_semicolon(source: str) -> bool:
    """Whether the last token of ``source`` (comments and line ends aside) is ``;``."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    skip = (tokenize.ENDMARKER, tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT)
    for tok in reversed(tokens):
        if tok.type not in skip:
            return tok.type == tokenize.OP and tok.string == ";"
    return False


def _needs_top_level_await(source: str) -> bool:
    """Whether ``source`` compiles only with top-level ``await``."""
    try:
        compile(source, "<carbonctx cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    except SyntaxError:
        return False
    return True


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext carbonctx.integrations.ipython``: registers ``%carbonctx``/``%%carbonctx``."""
    ipython.register_magics(CarbonctxMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext``: the magics are left as they are (IPython has no way to remove them)."""
