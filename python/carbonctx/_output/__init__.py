"""Formats: JSON Lines, CSV, Chrome trace, text and HTML reports of records and results.

Formats only: they measure nothing, fetch nothing and decide nothing. They sit just above the
value objects (``_results``) and below the code that produces them, which writes as it goes
(the runtime its JSON Lines, a run its log).
"""
