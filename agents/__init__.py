"""disnet agents layer."""
