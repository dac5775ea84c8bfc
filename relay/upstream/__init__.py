"""Gateway mode: the sync engine for a box hosted at an MSSanté operator (DESIGN.md)."""
