"""Dual-write ingest and the shadow run: both segmenters on the same events, then the comparison."""
