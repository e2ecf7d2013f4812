"""The shared vocabulary of segshadow: events, rule sets, windows, stores, workloads, importers."""
