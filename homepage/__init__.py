"""The mock shop homepage, account page and rollout dashboard, served through the rollout router."""
