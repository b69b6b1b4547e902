"""Formats: JSON Lines, CSV, Chrome trace, text and HTML reports. They render records and result
objects; they measure nothing, look nothing up and decide nothing."""
