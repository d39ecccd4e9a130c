"""Model family seed_cnns (being written)."""
