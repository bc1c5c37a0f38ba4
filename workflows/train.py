"""Placeholder until the inference subsystem lands."""
