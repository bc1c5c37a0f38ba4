"""Tagger inference backends (model taggers); the subsystem lands in a later commit."""
