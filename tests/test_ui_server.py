"""The served command (``instantstyle ui``) under a careless or hostile visitor: one server process for the module,
with a login, measured from outside (its memory, its temp folder, its answers); and one of its own that is stopped
as systemd stops it (the tests run in any order).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web UI needs gradio (pip install 'instantstyle[ui]')")
httpx = pytest.importorskip("httpx")
psutil = pytest.importorskip("psutil")

from instantstyle.app.ui import guard  # noqa: E402

LOGIN = {"username": "ann", "password": "a-long-secret"}
MB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The server process, its address, temp folder and output so far."""

    def __init__(self, process: subprocess.Popen, url: str, temp: Path, log: Path) -> None:
        self.process, self.url, self.temp, self.log = process, url, temp, log

    def output(self) -> str:
        return self.log.read_text()

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    @contextmanager
    def client(self) -> Iterator[httpx.Client]:
        """An HTTP client logged in to the page."""
        with httpx.Client(base_url=self.url, timeout=60) as client:
            assert client.post("login", data=LOGIN).status_code == 200
            yield client


@contextmanager
def serving(tiny, root: Path) -> Iterator[Served]:
    """``instantstyle ui`` on the tiny SDXL in its own process, with a login, until the block ends."""
    (root / "logins.txt").write_text(f"{LOGIN['username']}:{LOGIN['password']}\n")
    temp, log, port = root / "gradio-temp", root / "server.log", free_port()
    command = [sys.executable, "-c", "from instantstyle.app.cli import entry; entry()", "ui", "--model", str(tiny.sdxl),
               "--adapter", str(tiny.sdxl_adapter), "--port", str(port), "--workdir", str(root / "work"),
               "--max-pixels", "4096", "--auth-file", str(root / "logins.txt")]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp), "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Served(process, f"http://127.0.0.1:{port}/", temp, log)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(server.url, timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"no page within 180 s: {server.output()}")
    try:
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory) -> Iterator[Served]:
    with serving(tiny, tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture
def stopped(tiny, tmp_path_factory) -> Iterator[Served]:
    """A server of its own, for a test that stops it."""
    with serving(tiny, tmp_path_factory.mktemp("stopped")) as server:
        yield server


def test_one_command_serves_the_page_behind_its_login(served):
    assert httpx.get(served.url + "config", timeout=30).status_code == 401
    with served.client() as client:
        assert client.get("config").status_code == 200
    assert "--share makes a temporary gradio.live one" in served.output() and "share=True" not in served.output()


def test_the_pixel_cap_holds_for_an_api_client(served, tiny):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(served.url, auth=(LOGIN["username"], LOGIN["password"]), verbose=False)
    with pytest.raises(AppError, match="style image style.png: 96x64 is over the limit of 4,096 pixels"):
        client.predict(style=[handle_file(str(tiny.style_image))], prompt="a cat", api_name="/generate")


def _blob(client: httpx.Client, component: int, session: str, blob_id: str, kind: str = "layer", index="0",
          size: int = 1000) -> httpx.Response:
    """What the page's image editor sends ahead of an event: one image blob for a painting's id."""
    fields = {"component_id": str(component), "session_hash": session, "fn_name": "accept_blobs", "id": blob_id,
              "type": kind, "index": str(index)}
    return client.post("gradio_api/component_server", data=fields, files={"file": ("layer.png", b"\0" * size)})


def test_the_painters_blob_route_never_grows_the_servers_memory(served):
    """Issue 19, item 1: an index of 30 million added 230 MB, 1e9 asked for 8 GB, and 20 blobs of 5 MB with fresh
    ids stayed (+100 MB). Now an index past the page's one layer is refused, and what waits is capped."""
    with served.client() as client:
        config = client.get("config").json()
        painter = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "mask-paint")
        before = served.rss()
        for index in (30_000_000, 1_000_000_000, 1):
            assert _blob(client, painter, "s1", f"big-{index}", index=index).status_code == 400
        answers = [_blob(client, painter, f"s{i % 3}", f"fresh-{i}", size=5 * MB).status_code for i in range(20)]
        assert answers.count(200) == guard.MAX_PENDING_PER_CLIENT and set(answers) == {200, 429}
        grown = served.rss() - before
    assert grown < (guard.MAX_PENDING_PER_CLIENT * 5 + 40) * MB, f"grew {grown / MB:.0f} MB"


def test_failed_logins_back_off_per_client(served):
    """Issue 19, item 14: about 130 attempts in 15 s went through; now each failure past the free ones waits."""
    wrong = {**LOGIN, "password": "guess"}
    with httpx.Client(base_url=served.url, timeout=30) as client:
        answers = [client.post("login", data=wrong).status_code for _ in range(guard.LOGIN_FREE_TRIES + 1)]
        assert answers == [400] * (guard.LOGIN_FREE_TRIES + 1)
        refused = client.post("login", data=LOGIN)  # even the right password waits its turn
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert "too many failed logins" in refused.json()["detail"]
        time.sleep(1.1)
        assert client.post("login", data=LOGIN).status_code == 200
        assert client.post("login", data=wrong).status_code == 400  # forgotten after a success: a free try again


def test_sigterm_stops_the_server_and_deletes_the_uploads_as_ctrl_c_does(stopped):
    """Issue 19, item 8: systemd and docker stop with SIGTERM; gradio cleaned its upload copies on SIGINT only."""
    served = stopped
    with served.client() as client:
        uploaded = [Path(p) for p in client.post("gradio_api/upload",
                                                 files=[("files", (f"u{i}.png", b"x" * 100)) for i in range(3)]).json()]
    assert all(p.is_file() and served.temp in p.parents for p in uploaded)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=60) == 0
    assert [p for p in uploaded if p.exists()] == []
    assert json.dumps(served.output()).count("Traceback") == 0
