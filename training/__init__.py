"""training package (see ARCHITECTURE.md)."""
