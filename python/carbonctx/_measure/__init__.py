"""Measuring: regions (``track``/``tracked``), the process runtime around the native sampler,
the resolver that turns resolved regions into results, and the process lifecycle (fork, exit)."""

#: How long reading a result waits for the sampler by default, seconds. Here (not in the
#: runtime) so that importing carbonctx does not import the runtime and numpy with it.
RESULT_TIMEOUT_S = 10.0
