"""Importing carbonctx imports no framework and none of its integrations."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = (
    "carbonctx.integrations",
    "torch",
    "transformers",
    "lightning",
    "pytorch_lightning",
    "keras",
    "prometheus_client",
    "opentelemetry",
    "IPython",
    "pandas",
)


def test_importing_carbonctx_imports_no_framework() -> None:
    code = (
        f"import sys, carbonctx\nprint(','.join(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_numpy_comes_with_the_first_region_not_with_the_import(tmp_path) -> None:
    # numpy is most of what importing carbonctx used to cost: it is imported with the runtime, at
    # the first region, on the caller's thread (never first in the resolver thread).
    code = (
        "import sys, carbonctx\n"
        "from carbonctx.testing import SimulatedMachine\n"
        "before = 'numpy' in sys.modules\n"
        f"with SimulatedMachine({str(tmp_path)!r}) as sim:\n"
        "    carbonctx.configure(**sim.settings())\n"
        "    with carbonctx.track('x') as t:\n"
        "        pass\n"
        "    e = t.result().energy_j\n"
        "print(before, 'numpy' in sys.modules, e >= 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["False", "True", "True"], out.stdout + out.stderr
