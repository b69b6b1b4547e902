"""Importing carbonctx imports no framework and none of its integrations."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = (
    "carbonctx.integrations",
    "torch",
    "transformers",
    "lightning",
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
