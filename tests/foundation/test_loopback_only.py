"""The suite talks to 127.0.0.1 and ::1 only: a Prefect-harness flow test, a download test
and a local Ray run under ``strace -f -e trace=connect``, and no process of theirs may connect
to any other address (a DNS server included: resolving an outside name is the first step
out)."""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# connect(7, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.0.0.2")}, 16) = 0
# connect(7, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=..,
#             inet_pton(AF_INET6, "2001:db8::1", &sin6_addr), sin6_scope_id=0}, 28) = 0
_ADDRESS = re.compile(r'inet_addr\("([^"]+)"\)|inet_pton\(AF_INET6, "([^"]+)"')


def outside_connects(strace_log: str) -> list[str]:
    """The ``connect()`` lines of an strace log that reach neither 127.0.0.0/8 nor ::1
    (an IPv4-mapped ::ffff:127.x counts as loopback; AF_UNIX and AF_UNSPEC are local)."""
    outside = []
    for line in strace_log.splitlines():
        if "connect(" not in line or "AF_UNIX" in line or "AF_UNSPEC" in line:
            continue
        match = _ADDRESS.search(line)
        if match is None:
            if "AF_INET" in line:
                outside.append(line)  # an address we cannot read: refuse, do not assume
            continue
        address = ipaddress.ip_address(match.group(1) or match.group(2))
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if not address.is_loopback:
            outside.append(line)
    return outside


def test_the_parser_finds_outside_connects():
    log = "\n".join([
        '1 connect(3, {sa_family=AF_INET, sin_port=htons(8080), sin_addr=inet_addr("127.0.0.1")}, 16) = 0',
        '1 connect(3, {sa_family=AF_UNIX, sun_path="/run/x.sock"}, 110) = 0',
        '2 connect(4, {sa_family=AF_INET, sin_port=htons(53), sin_addr=inet_addr("10.255.255.53")}, 16) = 0',
        '3 connect(5, {sa_family=AF_INET6, sin6_port=htons(443), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "2606:4700::1", &sin6_addr), sin6_scope_id=0}, 28) = -1',
        '3 connect(5, {sa_family=AF_INET6, sin6_port=htons(80), sin6_flowinfo=htonl(0), inet_pton(AF_INET6, "::1", &sin6_addr), sin6_scope_id=0}, 28) = 0',
    ])  # fmt: skip
    found = outside_connects(log)
    assert len(found) == 2 and "10.255.255.53" in found[0] and "2606:4700::1" in found[1]


def test_a_flow_a_download_and_a_local_ray_connect_only_to_loopback(tmp_path):
    strace = shutil.which("strace")
    assert strace is not None, "strace is missing: `make setup` installs it (Debian package)"
    log = tmp_path / "connect.log"
    tests = [
        "tests/crawl/test_crawl_flow.py",
        "tests/download/test_download.py::test_every_hostile_image_gets_its_named_reason",
        # Ray left to itself takes the machine's outward address, reports usage and asks
        # the cloud metadata service (tasks/core/local_ray.py).
        "tests/curate/test_execution.py::test_a_local_ray_instance_runs_mapped_tasks_in_its_own_workers",
    ]
    run = subprocess.run(
        [strace, "-f", "-qq", "--seccomp-bpf", "-e", "trace=connect", "-o", str(log),
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    text = log.read_text(errors="replace")
    assert 'inet_addr("127.0.0.1")' in text, "strace saw no connections at all"
    assert outside_connects(text) == []
