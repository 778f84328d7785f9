"""apps package (see ARCHITECTURE.md)."""
