"""disnet env layer."""
