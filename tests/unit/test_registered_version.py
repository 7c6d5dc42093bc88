"""core.tracking.registered_version: the one resolution of a registered model's URI that the predictor
(`serve --model-uri`) and the batch scorer (`score --model`) share, against a real MLflow registry on sqlite."""
from __future__ import annotations

import pytest

from sentimentops.steps.core.config import CommonSettings, load_settings
from sentimentops.steps.core.errors import DataError, UsageError
from sentimentops.steps.core.tracking import configure, registered_version


@pytest.fixture()
def registry(home, tmp_path):
    settings = load_settings(CommonSettings)  # the fresh home of the `home` fixture (SENTIMENTOPS_HOME)
    assert str(home) in settings.mlflow_tracking_uri
    client = configure(settings)
    client.create_registered_model("sentiment")
    for _ in range(2):
        client.create_model_version("sentiment", source=(tmp_path / "model").as_uri())
    client.set_registered_model_alias("sentiment", "champion", "1")
    return settings


def test_an_alias_and_a_number_resolve_to_the_concrete_version(registry):
    assert registered_version(registry, "models:/sentiment@champion")[:2] == ("sentiment", "1")
    assert registered_version(registry, "models:/sentiment/2")[:2] == ("sentiment", "2")


@pytest.mark.parametrize("uri", ["models:/sentiment@challenger", "models:/sentiment/9", "models:/other@champion"])
def test_what_the_registry_lacks_is_a_data_error(registry, uri):
    with pytest.raises(DataError, match="cannot resolve"):
        registered_version(registry, uri)


@pytest.mark.parametrize("uri", ["", "sentiment@champion", "models:/sentiment", "models:/sentiment/two",
                                 "runs:/abc/model"])
def test_another_form_is_a_usage_error(registry, uri):
    with pytest.raises(UsageError, match="models:/NAME@ALIAS"):
        registered_version(registry, uri)
