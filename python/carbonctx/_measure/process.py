"""The one runtime of this process, and its lifecycle: made on first use, replaced by
``configure()``, shut down at interpreter exit, abandoned (and, by ``on_fork``, replaced) in a
forked child.

Whenever the runtime changes, its hub (``Runtime.core``) is handed to the native region code
(``_native.set_hub``), which reads nothing from this module.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from carbonctx import _config, _native
from carbonctx._config import Settings
from carbonctx._distributed import placeholders
from carbonctx._measure import RESULT_TIMEOUT_S
from carbonctx._measure.ranks import forget_rank_info, process_rank_info

if TYPE_CHECKING:
    from carbonctx._measure.runtime import Runtime

__all__ = [
    "RESULT_TIMEOUT_S",
    "configure",
    "current_runtime",
    "reset",
    "runtime",
]

_RT: Runtime | None = None
_SETTINGS: Settings | None = None
_ZOMBIES: list[Runtime] = []
_LOCK = threading.Lock()
_hooks_installed = False
# The process (pid) whose inconsistent launcher variables have been warned about.
_RANKS_WARNED: set[int] = set()

#: Called in a forked child after the runtime has been replaced.
fork_listeners: list[Callable[[], None]] = []


def runtime() -> Runtime:
    """The runtime of this process, made (with the settings so far) on first use."""
    global _RT, _SETTINGS
    rt = _RT
    if rt is not None:
        return rt
    with _LOCK:
        if _RT is None:
            if _SETTINGS is None:
                _SETTINGS = _checked(_config.build(None, {}))
            _RT = _new_runtime(_SETTINGS)
            _native.set_hub(_RT.core)
            _install_hooks()
        return _RT


def current_runtime() -> Runtime | None:
    """The runtime if one has been made, without making one."""
    return _RT


def configure(overrides: Mapping[str, Any]) -> Settings:
    """Apply settings; a running sampler is stopped and restarts with them on the next region."""
    global _RT, _SETTINGS
    new = _checked(_config.build(_SETTINGS, overrides))
    with _LOCK:
        old = _RT
        _SETTINGS = new
        _RT = None
        _native.set_hub(None)
    if old is not None:
        old.shutdown()
    return new


def _checked(s: Settings) -> Settings:
    """Settings checked against what the distributed layer accepts: the output path's
    placeholders and the rank settings against the launcher's (ConfigurationError)."""
    if s.output:
        placeholders(s.output)
    process_rank_info(s)
    return s


def _new_runtime(settings: Settings) -> Runtime:
    """A runtime with this process's rank; inconsistent launcher variables warn once per
    process (through the runtime's warn-once path)."""
    info = process_rank_info(settings)
    pid = os.getpid()
    warn = pid not in _RANKS_WARNED
    if info.problems:
        _RANKS_WARNED.add(pid)
    # Imported at the first region (on the caller's thread), not with carbonctx: the runtime
    # brings numpy, which a bare import need not pay for.
    from carbonctx._measure.runtime import Runtime

    return Runtime(settings, info, warn_ranks=warn)


def reset() -> None:
    """Stop everything and forget all settings and statistics (for tests)."""
    global _RT, _SETTINGS
    with _LOCK:
        old, _RT, _SETTINGS = _RT, None, None
        _RANKS_WARNED.clear()
        forget_rank_info()
        _native.set_hub(None)
    if old is not None:
        old.shutdown()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    import atexit

    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    rt = _RT
    if rt is None or rt.dead:
        return
    try:
        rt.shutdown()
        if rt.settings.summary_at_exit and rt.resolver.accumulators:
            print("carbonctx summary\n" + str(rt.stats_now()), file=sys.stderr)
    except Exception as e:  # never fail the interpreter's exit
        print(f"carbonctx: error at exit: {e!r}", file=sys.stderr)


def _after_fork_in_child() -> None:
    global _RT
    old = _RT
    if old is not None:
        old.abandon()
        _ZOMBIES.append(old)  # never dropped: its native thread does not exist here
    _RT = None
    _native.set_hub(None)
    settings = _SETTINGS if _SETTINGS is not None else (old.settings if old else None)
    if settings is not None and settings.on_fork == "disable":
        from carbonctx._measure.runtime import Runtime

        rt = Runtime(settings, process_rank_info(settings), warn_ranks=False)
        rt.started = True
        rt.start_error = "measurement is off in forked children (on_fork='disable')"
        _RT = rt
        _native.set_hub(rt.core)
    for f in fork_listeners:
        f()
