"""probes package (see ARCHITECTURE.md)."""
