"""The Beam streaming segmenter: event time, lateness, expiry, corrections; replay and live."""
