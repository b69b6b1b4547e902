"""Runs of epochs (``carbonctx.epochs()``): forecast maths, the budget, run logs and the lines a
run prints."""
