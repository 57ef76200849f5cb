"""Two "hosts" on one PostgreSQL: a worker in a Linux network namespace loses its link mid-trial.

Worker A runs inside a network namespace joined to this one by a veth pair; PostgreSQL listens
on 127.0.0.1 only, so a small TCP forwarder in the test process listens on the host side of the
veth and forwards to 127.0.0.1:5432. Worker B runs here on 127.0.0.1. Cutting the veth leaves A
alive (same PID namespace, same hostname) but silent, so only the heartbeat can tell B that A's
trial is dead: B fails it, re-runs it and finishes the study. Then the link heals and A's late
writes must not change anything B has settled.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from optuna.trial import TrialState
from worker_processes import (
    FINISHED,
    load,
    make_tiny_data,
    scored_an_epoch,
    wait_for_running_trial,
    worker_cmd,
    write_space,
)

pytestmark = pytest.mark.slow  # real worker processes and searches, tens of seconds each

TRIALS = 4
HEAL_TIMEOUT = 240  # seconds A gets to exit once its link is back


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_data(tmp_path_factory.mktemp("multi_host") / "data")


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, MASKOPT_THREADS="1", HF_HUB_OFFLINE="1")
    # Output to a file, not a pipe: nobody reads A's pipe while it hangs on a dead link.
    out = open(log, "w")
    try:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                                cwd=log.parent)
    finally:
        out.close()


# --- the network: a namespace, a veth pair, a forwarder -------------------------------------

def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def _free_subnet() -> int:
    """An n for 10.251.n.0/30 that no interface here uses yet."""
    used = ip("-4", "-o", "addr", "show").stdout
    for _ in range(50):
        n = uuid.uuid4().int % 250 + 1
        if f"10.251.{n}." not in used:
            return n
    pytest.fail("no free 10.251.n.0/30 subnet")


class Forwarder:
    """Threaded TCP forwarder: (listen_host, free port) -> target."""

    def __init__(self, listen_host: str, target: tuple[str, int]):
        self.target = target
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((listen_host, 0))
        self.server.listen(64)
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True, name="forwarder-accept")
        accept.start()
        self.threads.append(accept)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True, name="forwarder-pump")
                t.start()
                self.threads.append(t)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stopping.set()
        self.server.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for t in self.threads:
            t.join(timeout=5)


class Host:
    """A second "host": a network namespace reached over a veth pair."""

    def __init__(self):
        tag = uuid.uuid4().hex[:6]
        self.name = f"maskopt-mh-{tag}"
        self.outside = f"mhv{tag}"  # veth names: at most 15 characters
        self.inside = f"mhn{tag}"
        self.n = _free_subnet()
        self.host_ip = f"10.251.{self.n}.1"
        self.ns_ip = f"10.251.{self.n}.2"
        self.made_ns = False
        self.made_link = False

    def up(self):
        ip("netns", "add", self.name)
        self.made_ns = True
        ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        self.made_link = True
        ip("link", "set", self.inside, "netns", self.name)
        ip("addr", "add", f"{self.host_ip}/30", "dev", self.outside)
        ip("link", "set", self.outside, "up")
        ip("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.inside)
        ip("-n", self.name, "link", "set", self.inside, "up")
        ip("-n", self.name, "link", "set", "lo", "up")

    def cut(self):
        ip("link", "set", self.outside, "down")

    def heal(self):
        ip("link", "set", self.outside, "up")

    def down(self):
        if self.made_link:
            ip("link", "del", self.outside, check=False)  # deletes the peer too
        if self.made_ns:
            ip("netns", "del", self.name, check=False)


def _cannot_make_namespaces() -> str | None:
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe = f"maskopt-probe-{uuid.uuid4().hex[:6]}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        veth = ip("link", "add", f"mhp{probe[-6:]}", "type", "veth", "peer", "name", f"mhq{probe[-6:]}",
                  check=False)
        if veth.returncode != 0:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
        ip("link", "del", f"mhp{probe[-6:]}", check=False)
    finally:
        ip("netns", "del", probe, check=False)
    return None


@pytest.fixture
def second_host():
    reason = _cannot_make_namespaces()
    if reason is not None:
        pytest.skip(reason)
    host = Host()
    forwarder = None
    try:
        host.up()
        forwarder = Forwarder(host.host_ip, ("127.0.0.1", 5432))
        host.forwarder = forwarder
        yield host
    finally:
        if forwarder is not None:
            forwarder.close()
        host.down()


def kill(process: subprocess.Popen):
    if process.poll() is None:
        process.kill()
        process.wait(timeout=30)


def test_worker_cut_off_mid_trial_is_retried_by_the_other_host(fresh_postgres_url, tiny_data, tmp_path,
                                                               second_host):
    import sqlalchemy

    url = sqlalchemy.engine.make_url(fresh_postgres_url)
    assert url.host in ("127.0.0.1", "localhost") and (url.port or 5432) == 5432, url
    remote_url = url.set(host=second_host.host_ip, port=second_host.forwarder.port).render_as_string(
        hide_password=False)

    name = "multihost"
    space = write_space(tmp_path, name, epochs=3)
    beat = ("--heartbeat-interval", "1")
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start(["ip", "netns", "exec", second_host.name,
               *worker_cmd(space, tiny_data, remote_url, TRIALS, tmp_path / "cache-a", *beat)], log_a)
    b = None
    try:
        # `ip netns exec` execs the command: A's pid is the python worker's pid.
        time.sleep(1.0)
        cmdline = Path(f"/proc/{a.pid}/cmdline").read_bytes().split(b"\0")
        assert b"maskopt" in cmdline and b"ip" not in cmdline[:1], cmdline

        cut_trial = wait_for_running_trial(fresh_postgres_url, name, a, log=log_a, until=scored_an_epoch)
        b = start(worker_cmd(space, tiny_data, fresh_postgres_url, TRIALS, tmp_path / "cache-b",
                             "--worker-index", "1", *beat), log_b)
        second_host.cut()
        cut_at = time.monotonic()
        try:
            b.wait(timeout=480)
        except subprocess.TimeoutExpired:
            kill(b)
            pytest.fail(f"B did not finish with A cut off:\n{log_b.read_text()}")
        b_seconds = time.monotonic() - cut_at
        out_b = log_b.read_text()
        assert b.returncode == 0, out_b

        before = {t.number: t for t in load(fresh_postgres_url, name).get_trials()}
        assert before[cut_trial.number].state == TrialState.FAIL, before[cut_trial.number]
        assert a.poll() is None, f"A exited while cut off:\n{log_a.read_text()}"

        second_host.heal()
        healed_at = time.monotonic()
        try:
            a.wait(timeout=HEAL_TIMEOUT)
            a_killed = False
        except subprocess.TimeoutExpired:
            kill(a)
            a_killed = True
        a_seconds = time.monotonic() - healed_at
        out_a = log_a.read_text()
        print(f"\nB finished {b_seconds:.1f}s after the cut; A {'was killed' if a_killed else 'exited'} "
              f"{a_seconds:.1f}s after the heal with code {a.returncode}\n--- A's output ---\n{out_a}"
              f"--- B's output ---\n{out_b}")

        after = {t.number: t for t in load(fresh_postgres_url, name).get_trials()}
        finished = [t for t in after.values() if t.state in FINISHED]
        running = [t for t in after.values() if t.state == TrialState.RUNNING]
        assert len(finished) == TRIALS, [(t.number, t.state) for t in after.values()]
        assert running == []
        assert after[cut_trial.number].state == TrialState.FAIL  # A's late writes did not revive it
        retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == cut_trial.number]
        assert len(retries) == 1, [(t.number, t.state, t.system_attrs) for t in after.values()]
        assert retries[0].params == cut_trial.params
        assert retries[0].state in FINISHED
        for number, t in before.items():
            if t.state in FINISHED:
                assert after[number].state == t.state, number
                assert after[number].value == t.value, number
                assert after[number].params == t.params, number
        assert not a_killed, f"A did not exit within {HEAL_TIMEOUT}s of the heal:\n{out_a}"
        assert "Traceback" not in out_a, out_a
        assert a.returncode == 0 and f"trial {cut_trial.number} was failed by another worker" in out_a, out_a
    finally:
        if b is not None:
            kill(b)
        kill(a)
