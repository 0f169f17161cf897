"""The local Ray cluster a search starts listens on the loopback interface only."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# starts the cluster as a search does and reports the PIDs of that cluster's processes (the probe's
# descendants: GCS, raylet, agents, workers); the test matches them against ``ss -ltnp``
PROBE = r"""
import json, os, subprocess, time
import ray
from search.prepare import preflight
from search.prepare.config import SearchConfig

preflight.connect(SearchConfig(space="baseline"))
ray.get(ray.remote(lambda: 1).remote())          # a worker process is up too
time.sleep(1.0)
parents = {}
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
mine, grew = {os.getpid()}, True
while grew:
    more = {pid for pid, ppid in parents.items() if ppid in mine} - mine
    mine |= more
    grew = bool(more)
listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
print(json.dumps({"node": ray._private.worker._global_node.node_ip_address, "pids": sorted(mine),
                  "ss": listening}))
ray.shutdown()
"""


def listening(ss: str, pids: set[int]) -> list[tuple[str, str, int]]:
    """(local address, process name, pid) of the ``ss -ltnpH`` lines of the given processes."""
    out = []
    for line in ss.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        local = fields[3].rsplit(":", 1)[0].strip("[]")
        for name, pid in re.findall(r'\("([^"]+)",pid=(\d+)', line):
            if int(pid) in pids:
                out.append((local, name, int(pid)))
    return out


def _loopback(ip: str) -> bool:
    if ip == "*":
        return False
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss (iproute2)")
def test_the_local_cluster_listens_on_loopback_only():
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["node"] == "127.0.0.1"
    sockets = listening(found["ss"], set(found["pids"]))
    names = {name for _, name, _ in sockets}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), found["ss"]
    exposed = [s for s in sockets if not _loopback(s[0])]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"


def test_the_ss_reader_and_the_loopback_rule():
    ss = ('LISTEN 0 4096 [::ffff:127.0.0.1]:35913 *:* users:(("gcs_server",pid=11,fd=9))\n'
          'LISTEN 0 4096 *:41945 *:* users:(("ray::IDLE",pid=12,fd=3))\n'
          'LISTEN 0 128 0.0.0.0:22 0.0.0.0:* users:(("sshd",pid=1,fd=3))\n')
    assert listening(ss, {11, 12}) == [("::ffff:127.0.0.1", "gcs_server", 11), ("*", "ray::IDLE", 12)]
    assert not _loopback("*")


def test_loopback_is_a_check_that_can_fail():
    assert _loopback("127.0.0.1") and _loopback("::ffff:127.0.0.1") and _loopback("::1")
    assert not _loopback("0.0.0.0") and not _loopback("::") and not _loopback("192.0.2.2")
