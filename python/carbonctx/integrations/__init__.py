"""Framework integrations over carbonctx's public API, one module per framework.

Each module imports its framework, so import the one you use (its extra installs the
framework): ``carbonctx.integrations.huggingface`` (``carbonctx[huggingface]``),
``carbonctx.integrations.lightning``, ``carbonctx.integrations.keras``,
``carbonctx.integrations.prometheus``, ``carbonctx.integrations.opentelemetry``
(``carbonctx[otel]``) and ``carbonctx.integrations.ipython``. Importing ``carbonctx`` imports
none of them.
"""
