"""Model family mobilenet (being written)."""
