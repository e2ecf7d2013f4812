"""The segshadow command line; it only wires the parts together."""
