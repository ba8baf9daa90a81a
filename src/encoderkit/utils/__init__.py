"""Helpers every layer uses: argument checks and atomic file writes."""
