"""Measuring: regions (``track``/``tracked``), the process runtime around the native sampler,
the resolver that turns resolved regions into results, and the process lifecycle (fork, exit)."""
