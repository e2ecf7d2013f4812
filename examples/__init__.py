"""Examples of bringing your own job under shadow (README, "Put your own job under shadow")."""
