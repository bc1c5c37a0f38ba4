"""Typed ``inference:`` section of the qgcal YAML config.

Why pydantic with ``extra="forbid"``: a misspelled key (``batchsize``) must fail with a
precise message instead of silently running with the default.  The pipeline embeds
:class:`InferenceConfig` as its ``inference:`` field; the CLI overrides (``--backend``,
``--device``, ``--triton-url``) are applied to the whole config once, by
:meth:`qgcal.config.Config.with_overrides`.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["InferenceConfig", "TritonDtype", "TritonSettings", "validate_url"]

TritonDtype = Literal["FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL"]

_URL = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def validate_url(url: str) -> str:
    """Check ``host:port`` (tritonclient wants no scheme); return it stripped."""
    url = url.strip()
    match = _URL.match(url)
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise ValueError(
            f"Triton url {url!r} is not HOST:PORT (for example 127.0.0.1:8001); give it without http:// or grpc://"
        )
    return url


class TritonSettings(BaseModel):
    """How to reach a Triton Inference Server and how the served model is laid out."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str = Field(
        default="127.0.0.1:8001",
        description="HOST:PORT of the server; the gRPC port for protocol grpc, HTTP port for http.",
    )
    protocol: Literal["grpc", "http"] = Field(
        default="grpc",
        description="Transport: gRPC (default, faster for large batches) or HTTP/REST.",
    )
    model_name: str = Field(
        default="qgcal_tagger",
        min_length=1,
        description="Name of the model in the server's repository.",
    )
    model_version: str = Field(
        default="",
        description="Model version to call; empty string lets the server pick its policy's latest.",
    )
    input_name: str = Field(default="FEATURES", min_length=1, description="Name of the model's input tensor.")
    output_name: str = Field(default="SCORE", min_length=1, description="Name of the output tensor to read.")
    input_dtype: TritonDtype = Field(
        default="FP32",
        description="Triton dtype of the input tensor; features are cast to it before sending.",
    )
    output_dtype: TritonDtype = Field(
        default="FP32",
        description="Expected Triton dtype of the output; a mismatch is an error, not a cast.",
    )
    batch_size: int = Field(
        default=65536,
        ge=1,
        description="Rows per request; must not exceed the served model's max_batch_size.",
    )
    max_in_flight: int = Field(
        default=4,
        ge=1,
        le=256,
        description="Maximum number of requests outstanding at once per scorer.",
    )
    timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="Per-request timeout in seconds (a request slower than this fails).",
    )
    retry_budget_s: float = Field(
        default=10.0,
        ge=0,
        description="Total seconds spent retrying connection failures (exponential backoff) "
        "before giving up or falling back.",
    )
    fallback: Literal["none", "local"] = Field(
        default="none",
        description="What to do when the server stays unreachable: fail (none) or score "
        "in-process with the local model (local); the fallback is logged and recorded in provenance.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return validate_url(value)


class InferenceConfig(BaseModel):
    """Where and how tagger models are evaluated (the ``inference:`` config section)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    backend: Literal["local", "triton"] = Field(
        default="local",
        description="local: evaluate in this process; triton: send jets to a Triton server.",
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        default="cpu",
        description="Local device: cpu (scikit-learn), cuda (trees as torch tensors on the GPU, "
        "needs the gpu extra), auto (cuda when available, else scikit-learn on cpu).",
    )
    triton: TritonSettings = Field(
        default_factory=TritonSettings,
        description="Triton client settings (used when backend=triton).",
    )
