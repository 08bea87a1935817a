"""Compatibility shims that must run before third-party packages import."""
