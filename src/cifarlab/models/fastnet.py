"""Model family fastnet (being written)."""
