"""Fixtures of the predictor tests."""

import pytest

from predictor_service.artifact import static_encoder_from


@pytest.fixture(scope="module")
def static_encoder():
    return static_encoder_from()
