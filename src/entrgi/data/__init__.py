"""Data shipped with the package (prompt sets)."""
