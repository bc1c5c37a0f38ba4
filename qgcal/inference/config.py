"""The ``inference:`` section of the config (model taggers come with the inference subsystem)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class InferenceConfig(BaseModel):
    """Where model taggers are evaluated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["local", "triton"] = Field("local", description="local process or Triton server")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="local device")
