"""Compatibility package: ISStreamer 2.0.0's import paths, backed by :mod:`isstreamer`."""
