"""Triton Python-backend model for a qgcal tagger (copied to <repo>/<name>/<version>/model.py).

This file runs inside tritonserver's Python-backend stub, not inside qgcal: it imports
only numpy, scikit-learn and skops (which the stub's Python environment must provide, see
docs/triton.md), reads everything it needs from config.pbtxt parameters and the files next
to it, verifies the model fingerprint before loading, and never unpickles anything.
"""

import hashlib
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Returns the tagger's decision score (gluon log-odds) for each row of FEATURES."""

    def initialize(self, args):
        import skops.io

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(here, params["qgcal_model_file"])
        with open(path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != params["qgcal_model_sha256"]:
            raise pb_utils.TritonModelException(
                f"{path}: sha256 {actual[:12]} does not match config.pbtxt "
                f"{params['qgcal_model_sha256'][:12]}; re-export the repository"
            )
        trusted = json.loads(params["qgcal_trusted_types"])
        self.model = skops.io.load(path, trusted=trusted)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]

    def execute(self, requests):
        # Score all requests of a dynamic batch in one call, then split them again.
        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        x = np.ascontiguousarray(np.concatenate(arrays), dtype=np.float32)
        scores = self.model.decision_function(x) if len(x) else np.empty(0)
        scores = np.asarray(scores, dtype=np.float32).reshape(-1, 1)
        responses, start = [], 0
        for size in sizes:
            out = pb_utils.Tensor(self.output_name, scores[start : start + size])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += size
        return responses
