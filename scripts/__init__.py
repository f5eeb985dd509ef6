"""Developer scripts (not installed)."""
