"""Model references and hub failures: one line each, told apart by huggingface_hub's exception types."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

from instantstyle import UserError
from instantstyle.hub import hub_error, model_source


def wrapped(cause: Exception) -> OSError:
    """The error as diffusers and transformers raise it: an OSError raised while handling the hub's error."""
    err = OSError("does not appear to have a file named model_index.json")
    err.__context__ = cause
    return err


def response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/org/name"))


def test_not_cached_while_offline_says_so():
    error = hub_error("model", "org/name", wrapped(LocalEntryNotFoundError("no cached snapshot")))
    assert str(error) == ("model 'org/name' is not in the Hugging Face cache and the hub cannot be reached "
                          "(offline or no network); download it first")


@pytest.mark.parametrize(
    ("cause", "message"),
    [
        (RepositoryNotFoundError("404", response=response(404)), "model 'org/name': no such repository on the hub"),
        (RemoteEntryNotFoundError("404", response=response(404)), "the hub repository has no such file"),
        (ValueError("odd"), "could not be loaded from the hub (OSError: does not appear to have a file named"),
    ],
)
def test_online_hub_failures_are_told_apart_by_type(monkeypatch, cause, message):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    error = hub_error("model", "org/name", wrapped(cause))
    assert isinstance(error, UserError) and message in str(error) and "\n" not in str(error)


@pytest.mark.parametrize(
    ("ref", "message"),
    [("./nowhere", "no such file or folder"), ("a/b/c", "no such file or folder"), ("model.ckpt", "no such file")],
)
def test_a_model_reference_that_is_neither_a_path_nor_a_hub_id_is_an_error(ref, message):
    with pytest.raises(UserError, match=message):
        model_source(ref)


def test_a_folder_without_model_index_is_not_a_model(tmp_path):
    with pytest.raises(UserError, match="not a diffusers model folder"):
        model_source(str(tmp_path))
