"""Model wrappers, one small interface per kind (load, encode)."""
