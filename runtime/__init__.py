"""disnet runtime layer."""
