"""The shipped YAML configs (package data): the demo and real-analysis templates."""

from __future__ import annotations

from importlib import resources

__all__ = ["demo_config_text"]


def demo_config_text() -> str:
    """The text of ``configs/demo.yaml`` (relative paths point at ``<demo dir>/sample``)."""
    return resources.files("qgcal.configs").joinpath("demo.yaml").read_text(encoding="utf-8")
