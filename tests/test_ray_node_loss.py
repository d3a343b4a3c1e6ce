"""A real two-node Ray cluster on this machine, started as the README tells users (``ray start --head``, then
``ray start --address`` with the second node's own resources), loses its second node mid-batch: every job still
ends exactly once, retried on the head, and the run says which jobs were retried.

Every process of the cluster is found by the session ``ray start`` was given (its own process session) and
killed by id when the test ends, however it ends."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import FAST

pytest.importorskip("ray")
RAY = Path(sys.executable).with_name("ray")
JOBS = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ports() -> list[str]:
    """Every port a Ray node binds, free ones (Ray's defaults would clash with another cluster on this machine)."""
    flags = ["--node-manager-port", "--object-manager-port", "--ray-client-server-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    pairs = [[flag, str(free_port())] for flag in flags]
    return [*sum(pairs, []), "--worker-port-list", ",".join(str(free_port()) for _ in range(6))]


def session_pids(sid: int) -> list[int]:
    """The processes of one process session (a ``ray start`` and every daemon and worker it left running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # after the name: state, ppid, pgrp, session
                found.append(int(entry.name))
    return found


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


class Cluster:
    """A head and a second node of Ray on this machine, each ``ray start`` in a session of its own."""

    def __init__(self, root: Path) -> None:
        self.root, self.sessions = root, []
        self.port = free_port()
        # Ray 2.59+ turns token authentication on for the head: every node and the driver share one token (and a
        # token of their own, not the user's ~/.ray/auth_token).
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, *flags: str) -> int:
        """Start a node; returns its session (``ray start`` runs as the leader of a new one)."""
        command = [str(RAY), "start", "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
                   *ports(), *flags]
        process = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, start_new_session=True)
        self.sessions.append(process.pid)
        output, _ = process.communicate(timeout=240)
        assert process.returncode == 0, output[-2000:]
        return process.pid

    def raylet(self, session: int) -> int:
        return next(pid for pid in session_pids(session) if Path(f"/proc/{pid}/exe").resolve().name == "raylet")

    def stop(self) -> list[int]:
        """Kill every process of the cluster's sessions; returns those still running 30 s later (none)."""
        for session in self.sessions:
            for pid in session_pids(session):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 30
        while (left := [p for s in self.sessions for p in session_pids(s)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rn-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    cluster = Cluster(root)
    try:
        cluster.head = cluster.start("--head", "--port", str(cluster.port), "--temp-dir", str(root),
                                     "--include-dashboard=false", "--dashboard-port", str(free_port()))
        cluster.second = cluster.start("--address", f"127.0.0.1:{cluster.port}", "--resources", '{"second_node": 1}')
        yield cluster
    finally:
        left = cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.mark.slow
def test_a_node_lost_mid_batch_costs_nothing_but_time_and_the_run_says_which_jobs_were_retried(cluster, tiny,
                                                                                               tmp_path):
    rows = [{"id": f"job-{i}", "prompt": f"a lighthouse {i}", "style": str(tiny.style_image), **FAST, "seed": i,
             "model": str(tiny.sdxl), "adapter": str(tiny.sdxl_adapter)} for i in range(JOBS)]
    jobs, out = tmp_path / "jobs.jsonl", tmp_path / "out"
    jobs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    command = [sys.executable, "-m", "instantstyle", "batch", str(jobs), "-o", str(out), "--ray",
               f"127.0.0.1:{cluster.port}", "--workers", "2", "-q", "--device", "cpu"]
    driver = subprocess.Popen(command, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        second_raylet = cluster.raylet(cluster.second)
        manifest, deadline = out / "manifest.jsonl", time.monotonic() + 400
        while time.monotonic() < deadline and driver.poll() is None:  # both workers at work: one job is done
            if manifest.exists() and manifest.read_text().count("\n") >= 1 and child_pids(second_raylet):
                break
            time.sleep(0.2)
        lost_workers = {f"{socket.gethostname()}:{pid}" for pid in child_pids(second_raylet)}
        assert driver.poll() is None and manifest.read_text().count("\n") < JOBS, "the batch ended before the kill"
        os.kill(second_raylet, signal.SIGKILL)  # the second machine is gone, its worker with it
        stdout, stderr = driver.communicate(timeout=400)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr
    summary = stdout.splitlines()[-1]  # Ray itself prints the lost raylet's last log lines before it
    assert summary.startswith(f"{JOBS} jobs: {JOBS} done, 0 already done, 0 failed, "), summary
    assert "retried after their Ray worker was lost" in summary
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(e["id"] for e in lines) == sorted(r["id"] for r in rows)  # each job once
    assert all(e["status"] == "done" and (out / e["outputs"][0]).is_file() for e in lines)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    retried = [job for line in warnings for job in line.split("warning: ", 1)[1].split(":")[0].split(", ")]
    assert warnings and retried and set(retried) <= {r["id"] for r in rows}, stderr
    assert all("their Ray worker was lost" in line and "retried on the others" in line for line in warnings)
    by_id = {e["id"]: e for e in lines}
    assert not {by_id[job]["worker"] for job in retried} & lost_workers  # made on the head
