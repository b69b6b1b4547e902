"""Carbon intensity: zone rules, the yearly table, live providers, the cache and its refresh, the
service that turns joules into grams of CO2e, and low-carbon windows."""
