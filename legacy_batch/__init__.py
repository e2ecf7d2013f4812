"""The legacy batch segmenter: as its owners wrote it, one set-based SQL query per rule set and as-of.

``schedule`` fixes the as-of times (SPEC §3), ``query`` builds the aggregate query
from a rule set's declarations, ``job`` loads events into SQL, runs the as-ofs and
writes the assignments (SQL, a Redis sink, a JSON Lines file with its sidecar).
"""
