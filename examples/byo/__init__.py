"""A team's own legacy SQL and Beam transform, written against segshadow's contracts."""
