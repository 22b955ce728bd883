"""The serving floor: routoo_predictor's request/response handling without the prediction.

Reads each request's PROMPT tensor (as routoo_predictor does) and answers zeros of the pool's width, so
its latency is what Triton, gRPC and the Python backend cost on their own.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from predictor_service.contract import EXPECTED_COST_USD, PROMPT, QUALITY, ServedPool, ServedPoolError


class TritonPythonModel:
    def initialize(self, args):
        try:
            pool = ServedPool.from_json_config(json.loads(args["model_config"]))
        except ServedPoolError as e:
            raise pb_utils.TritonModelException(
                f"{e}; serve a materialised repository (routoo serve-predictor)") from e
        self.n_models = len(pool.names)

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, PROMPT).as_numpy().shape[0]
            zeros = np.zeros((rows, self.n_models), np.float32)  # (rows, n_models)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(QUALITY, zeros), pb_utils.Tensor(EXPECTED_COST_USD, zeros)]))
        return responses
