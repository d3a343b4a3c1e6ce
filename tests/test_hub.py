"""Model references and hub failures: one line each, told apart by huggingface_hub's exception types."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError, RepositoryNotFoundError

from instantstyle import UserError
from instantstyle.loading import hub as hub_module
from instantstyle.loading.hub import hub_error, hub_reachable, model_source, require_hub
from instantstyle.loading.runtime import DEFAULT_ADAPTER, DEFAULT_MODEL

from .test_cli import run


def wrapped(cause: Exception) -> OSError:
    """The error as diffusers and transformers raise it: an OSError raised while handling the hub's error."""
    err = OSError("does not appear to have a file named model_index.json")
    err.__context__ = cause
    return err


def response(status: int) -> httpx.Response:
    return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/org/name"))


def test_not_cached_while_offline_says_so_and_how_to_get_it():
    error = hub_error("model", "org/name", wrapped(LocalEntryNotFoundError("no cached snapshot")))
    assert str(error) == ("model 'org/name' is not in the Hugging Face cache and the hub cannot be reached (offline, "
                          "no network, or a partial download): download it where there is network with "
                          "`hf download org/name`; --model also takes a local folder or .safetensors file")


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


# --- without a network: the cache first, then one short question to the hub, remembered --------------------------


class FakeHub:
    """A local endpoint that counts connections: ``silent`` accepts and never answers (a black hole: the client's
    timeout ends it), else it answers every request with ``status``."""

    def __init__(self, status: int | None = None) -> None:
        self.status, self.connections, self.held = status, 0, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            if self.status is None:
                self.held.append(conn)
                continue
            conn.recv(65536)
            conn.sendall(f"HTTP/1.1 {self.status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point this process's huggingface_hub at a fake endpoint, online, with an empty cache, the answer forgotten."""
    hubs = []

    def point(status: int | None = None) -> FakeHub:
        hub = FakeHub(status)
        hubs.append(hub)
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        return hub

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    monkeypatch.setattr(hub_module, "HUB_CHECK_TIMEOUT", 0.5)  # a black hole costs the test half a second
    hub_reachable.cache_clear()
    yield point
    hub_reachable.cache_clear()
    for fake in hubs:
        fake.close()


def test_a_silent_hub_is_asked_once_then_the_process_stays_offline(hub_at):
    hub = hub_at(status=None)
    assert hub_reachable() is False and hub_reachable() is False
    assert hub.connections == 1 and constants.HF_HUB_OFFLINE is True  # later loads read the cache, no retries


@pytest.mark.parametrize(("status", "reachable"), [(404, True), (401, True), (503, False), (429, False)])
def test_an_answer_huggingface_hub_would_retry_counts_as_unreachable(hub_at, status, reachable):
    hub = hub_at(status)
    assert hub_reachable() is reachable and hub.connections == 1


def test_offline_mode_asks_nothing(hub_at, monkeypatch):
    hub = hub_at(status=200)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub_reachable() is False and hub.connections == 0


def test_everything_missing_is_one_line_with_the_download_command_for_each(hub_at):
    hub_at(status=503)
    with pytest.raises(UserError) as caught:
        require_hub(("model", DEFAULT_MODEL), ("adapter", DEFAULT_ADAPTER), ("image encoder", None))
    message = str(caught.value)
    assert "\n" not in message and message.count("is not in the Hugging Face cache") == 2
    assert "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in message
    assert '`hf download h94/IP-Adapter --include "sdxl_models/*"`' in message
    assert "--model also takes a local folder or .safetensors file" in message


@pytest.mark.parametrize(
    ("what", "ref", "command"),
    [
        ("adapter", "org/repo/ip.safetensors", "hf download org/repo ip.safetensors"),
        ("adapter", "org/repo/sdxl/ip.bin", 'hf download org/repo --include "sdxl/*"'),
        ("image encoder", "org/repo/models/image_encoder", 'hf download org/repo --include "models/image_encoder/*"'),
        ("controlnet", "org/cn", "hf download org/cn"),
    ],
)
def test_the_download_command_fetches_what_the_reference_needs(hub_at, what, ref, command):
    hub_at(status=503)
    with pytest.raises(UserError, match=f"with `{re.escape(command)}`"):
        require_hub((what, ref))


def test_local_references_never_ask_the_hub(hub_at, tiny):
    hub = hub_at(status=200)
    require_hub(("model", str(tiny.sdxl)), ("adapter", str(tiny.sdxl_adapter)), ("image encoder", None))
    assert hub.connections == 0


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """The console command in a fresh process (the hub's settings are read at import), with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return subprocess.run([sys.executable, "-c", "from instantstyle.app.cli import entry; entry()", *args],
                          capture_output=True, text=True, env={**clean, **env}, timeout=timeout)


def test_first_run_without_network_is_one_line_at_once(tmp_path, tiny):
    """The default model and adapter, nothing cached, a hub that never answers (a fresh process, as a user runs it):
    one question, no retries, one line naming both downloads (it used to retry for about 27 s)."""
    hub = FakeHub(status=None)
    try:
        result = cli(["generate", "--style", str(tiny.style_image), "--prompt", "a cat", "-o", str(tmp_path / "o.png")],
                     {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url})
    finally:
        hub.close()
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in result.stderr
    assert '`hf download h94/IP-Adapter --include "sdxl_models/*"`' in result.stderr
    assert hub.connections == 1  # asked once, never retried


def test_blocks_of_an_uncached_model_without_network_is_one_line(hub_at, capsys):
    """It used to print 11-14 lines of hub retries first."""
    server = hub_at(status=None)
    code, _, err = run(capsys, "blocks")
    assert code == 2 and err.count("\n") == 1 and "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in err
    assert server.connections == 1


def test_the_ui_with_an_uncached_model_without_network_is_one_line(hub_at, capsys):
    pytest.importorskip("gradio")
    server = hub_at(status=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "ui", "--port", port)
    assert code == 2 and err.count("\n") == 1 and "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in err
    assert '`hf download h94/IP-Adapter --include "sdxl_models/*"`' in err and server.connections == 1


@pytest.mark.parametrize("command", ["score", "probe-blocks"])
def test_score_and_probe_blocks_without_network_name_every_missing_download_in_one_line(hub_at, capsys, tiny,
                                                                                          tmp_path, command):
    server = hub_at(status=None)
    args = {"score": [tiny.style_image, "--prompt", "a cat"],
            "probe-blocks": ["--style", tiny.style_image, "--prompt", "a cat", "-o", tmp_path / "probe"]}[command]
    code, _, err = run(capsys, command, *args)
    assert code == 2 and err.count("\n") == 1 and "`hf download stabilityai/stable-diffusion-xl-base-1.0`" in err
    assert '`hf download h94/IP-Adapter --include "sdxl_models/*"`' in err and server.connections == 1


def test_offline_mode_set_asks_nothing_and_says_so(hub_at, capsys, monkeypatch, tiny, tmp_path):
    server = hub_at(status=200)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run(capsys, "generate", "--style", tiny.style_image, "--prompt", "a cat", "-o", tmp_path / "o.png")
    assert code == 2 and err.count("\n") == 1 and "HF_HUB_OFFLINE is set" in err and server.connections == 0


def test_a_cached_hub_model_loads_without_network_asking_the_hub_once(tmp_path, tiny):
    """A model in the HF cache and a hub that never answers: it loads from the cache, with one question only."""
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-sdxl"
    commit = "0" * 40
    shutil.copytree(tiny.sdxl, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub = FakeHub(status=None)
    try:
        result = cli(["blocks", "--model", "someone/tiny-sdxl"],
                     {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": hub.url})
    finally:
        hub.close()
    assert result.returncode == 0 and "someone/tiny-sdxl (sdxl)" in result.stdout, result.stderr
    assert hub.connections == 1


@pytest.mark.parametrize(("in_repo", "asked"), [
    ("ip_adapter_plus_general.bin", "image_encoder/*"),  # Kwai-Kolors/Kolors-IP-Adapter-Plus: a file at the root
    ("sdxl_models/ip-adapter_sdxl.safetensors", "sdxl_models/image_encoder/*"),  # h94/IP-Adapter
])
def test_the_image_encoder_beside_a_cached_adapter_is_fetched_from_its_own_folder(in_repo, asked, tiny, tmp_path,
                                                                                   monkeypatch):
    """The image encoder is not downloaded yet: it is asked of the adapter's repository, beside the file."""
    import huggingface_hub

    from instantstyle.core.adapter import read_adapter
    from instantstyle.loading.hub import find_image_encoder

    snapshot = tmp_path / "hub" / "models--org--adapter" / "snapshots" / ("0" * 40)
    (snapshot / in_repo).parent.mkdir(parents=True)
    shutil.copy(tiny.sdxl_adapter_bin if in_repo.endswith(".bin") else tiny.sdxl_adapter, snapshot / in_repo)
    asked_for = []

    def download(repo_id, allow_patterns):  # the hub's answer: the folder lands in the snapshot
        asked_for.append((repo_id, allow_patterns))
        encoder = tiny.adapters / "sdxl_models" / "image_encoder"
        shutil.copytree(encoder, snapshot / allow_patterns[0].removesuffix("/*"))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    found = find_image_encoder(read_adapter(snapshot / in_repo))
    assert asked_for == [("org/adapter", [asked])] and found == snapshot / asked.removesuffix("/*")
