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
# Runtimes replaced by configure() while regions were open in them (Runtime.retire).
_RETIRING: list[Runtime] = []
_LOCK = threading.Lock()
_hooks_installed = False
# Processes (pid) whose multiprocessing exit path has been hooked; set once exit has begun.
_CHILD_HOOKED: set[int] = set()
_EXITING = False
#: How long a Pool worker's SIGTERM may spend writing its finished regions before it ends.
SIGTERM_FLUSH_S = 5.0
# The process (pid) whose inconsistent launcher variables have been warned about.
_RANKS_WARNED: set[int] = set()

#: Called in a forked child after the runtime has been replaced.
fork_listeners: list[Callable[[], None]] = []
#: Called with the runtime ``configure()`` has just replaced (before it retires).
replace_listeners: list[Callable[[Runtime], None]] = []


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
            _hook_multiprocessing_child()
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
        for f in replace_listeners:
            f(old)
    if old is not None and old.retire():
        # Regions open in it are measured to their end and recorded with the settings they
        # began under; it shuts itself down after the last one.
        _RETIRING[:] = [rt for rt in _RETIRING if not rt.finished] + [old]
    return new


def _checked(s: Settings) -> Settings:
    """Settings checked against what the distributed layer accepts: the output path's
    placeholders and the rank settings against the launcher's (ConfigurationError)."""
    if s.output:
        from carbonctx._distributed import placeholders

        placeholders(s.output)
    # A zone that is no zone code is refused as the other carbon settings are, not warned of
    # at the first region. (The zone rules are imported only when a zone is set.)
    if s.zone is not None:
        from carbonctx._carbon.zones import normalize_zone

        normalize_zone(s.zone, "zone")
    elif env_zone := _config.environ().get("CARBONCTX_ZONE", "").strip():
        from carbonctx._carbon.zones import normalize_zone

        normalize_zone(env_zone, "CARBONCTX_ZONE")
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
    """Stop everything and forget all settings and statistics (for tests), the exit's flag
    included (a test that ran the exit hook left every later exit hook doing nothing)."""
    global _RT, _SETTINGS, _EXITING
    with _LOCK:
        old, _RT, _SETTINGS = _RT, None, None
        _EXITING = False
        _RANKS_WARNED.clear()
        forget_rank_info()
        _native.set_hub(None)
        retiring = _RETIRING[:]
        _RETIRING.clear()
    for rt in [*retiring, old]:
        if rt is not None:
            rt.shutdown()


def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    import atexit

    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _hook_multiprocessing_child() -> None:
    """In a multiprocessing child, have its exit record what it measured.

    Children started by fork or forkserver, and every Pool worker, leave through ``os._exit``
    after ``multiprocessing.util._exit_function()``: atexit hooks never run there, but that
    function runs the finalizers registered in the child (``util.Finalize``), so one is
    registered here, once per process, when the child's runtime is made (after the fork, once
    multiprocessing has cleared the finalizers it inherited). A Pool worker is also stopped by
    SIGTERM (``Pool.terminate()``, which leaving ``with Pool(...)`` calls); where SIGTERM is at
    its default, the worker's first SIGTERM writes its finished regions (at most
    ``SIGTERM_FLUSH_S``) and then ends the process by SIGTERM as before.
    """
    pid = os.getpid()
    if pid in _CHILD_HOOKED:
        return
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return
    try:
        if mp.parent_process() is None:
            return
        from multiprocessing import util

        _CHILD_HOOKED.add(pid)
        # A worker prints no summary table (its regions are in the output): the program's
        # main process does, once.
        util.Finalize(None, _at_exit, kwargs={"summary": False}, exitpriority=0)
        if "PoolWorker" in mp.current_process().name:
            _hook_sigterm()
    except Exception:  # an unusual multiprocessing: the atexit hook remains
        return


def _hook_sigterm() -> None:
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return  # the program's own handler decides

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends it at once
        if _EXITING:
            return  # the worker is leaving already and writing them: let it finish
        # On another thread: the interrupted frame may hold a lock the flush needs.
        t = threading.Thread(target=_at_exit, args=(False,), name="carbonctx-sigterm", daemon=True)
        t.start()
        t.join(SIGTERM_FLUSH_S)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def _at_exit(summary: bool = True) -> None:
    global _EXITING
    if _EXITING:
        return
    _EXITING = True
    rt = _RT
    for old in _RETIRING:
        try:
            old.shutdown()
        except Exception as e:  # never fail the exit, nor cost the runtime in use its records
            print(f"carbonctx: error at exit: {e!r}", file=sys.stderr)
    if rt is None or rt.dead:
        return
    try:
        rt.shutdown()
        if summary and rt.settings.summary_at_exit and rt.resolver.accumulators:
            print("carbonctx summary\n" + str(rt.stats_now()), file=sys.stderr)
    except Exception as e:  # never fail the interpreter's exit
        print(f"carbonctx: error at exit: {e!r}", file=sys.stderr)


def _after_fork_in_child() -> None:
    global _RT, _EXITING
    old = _RT
    _EXITING = False
    for rt in [*_RETIRING, old]:
        if rt is not None:
            rt.abandon()
            _ZOMBIES.append(rt)  # never dropped: its native thread does not exist here
    _RETIRING.clear()
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
