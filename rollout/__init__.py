"""The cutover: stages, plans, gates over comparison evidence, the decision log, the serving router."""
