"""Results: the frozen value objects users read (per region, per name, per run).

Lowest layer after configuration: nothing here measures, looks up intensity or writes files.
"""
