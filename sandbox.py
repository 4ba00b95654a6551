"""Run untrusted generated Python against its unit tests in a sandboxed subprocess.

A program passes only when its tests ran to completion. The exit code never decides: the parent hands the harness
(sandbox_harness.py, a fresh interpreter per run) a random per-run nonce on stdin, and the harness writes it to a
result pipe only after it ran the solution and then the tests without an exception. The harness reads its whole
job and points stdin at /dev/null before any untrusted code runs, and binds ``os.write``, ``os._exit`` and ``exec``
to local names first, so ``sys.exit``/``os._exit``/``exit()``/``SystemExit``, ``atexit`` and ``sys.excepthook``
tricks, signal handlers, and rebinding ``print``, ``os.write`` or ``sys.stdout`` all fail. The solution runs as its
own module (``__name__ == "solution"``: ``from __future__`` imports work, a main guard does not run); the tests see
its names but the builtins as they were before it ran (rebinding ``abs`` or ``len`` does not fool them). Not proof
against code written to attack the harness itself (walking the interpreter's frames to the nonce, objects whose
``__eq__`` is always true), the same limit as HumanEval's own harness.

Isolation levels (set once with :func:`configure`; every result records the one it ran under):
- ``full`` (default; needs root and util-linux ``unshare``): fresh mount, PID, network, IPC and UTS namespaces.
  Inside, still root, the harness remounts every mount read-only (nosuid, nodev) and mounts a private 64 MiB tmpfs
  on ``/tmp`` as the working folder; it stays root as the namespace's PID 1 and runs the program in a child that
  becomes a fresh unprivileged uid for good (no groups, no capabilities, no_new_privs). Nothing is written outside
  that tmpfs, which vanishes with the run; there is no network (only a down loopback); ``/proc`` shows only the
  run's own processes, and killing PID 1 at the time limit kills them all. Where this is not possible (checked once
  with a probe program), running code raises :class:`SandboxUnavailable`: never a silent fallback.
- ``weak`` (explicit opt-in, ``--sandbox_isolation weak``): the same harness as the current user in a temporary
  folder, with the resource limits and an empty environment only: the host's files and network stay reachable.
Both: an empty environment, ``python -I``, limits on CPU seconds, address space (memory bomb -> MemoryError), file
size and process count (fork bomb), and a wall-clock kill of the whole process group.
"""
from __future__ import annotations

import json
import os
import random
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import sandbox_harness

LEVELS = ("full", "weak")
ISOLATION = "full"  # the level run_tests uses; set once by the entry points through configure()
OPT_IN = "or opt in to weak isolation (resource limits and an empty environment only) with --sandbox_isolation weak"
_full_isolation_checked = False  # set once a probe program has passed under full isolation


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot be provided here; the message is one line: why, and how to opt in."""


@dataclass
class SandboxResult:
    passed: bool
    status: str  # passed | failed | timeout | error (killed by a signal, e.g. the CPU limit)
    detail: str  # last lines of stderr, for the per-sample log
    isolation: str  # full | weak: the level the program ran under


def configure(isolation: str) -> None:
    """Set the isolation level of every later run (the config field ``sandbox_isolation``)."""
    global ISOLATION
    if isolation not in LEVELS:
        raise ValueError(f"sandbox isolation must be one of {', '.join(LEVELS)}, got {isolation!r}")
    ISOLATION = isolation


def check_isolation() -> None:
    """Raise SandboxUnavailable unless the configured level can run here; entry points call it up front so a run
    with a code task stops before training rather than at its first code evaluation."""
    if ISOLATION == "full":
        _require_full_isolation()


def run_tests(code: str, tests: str = "", timeout_s: float = 10.0, memory_mb: int = 1024, max_processes: int = 32
              ) -> SandboxResult:
    """Run ``code`` as a module, then ``tests`` against its names, at the configured isolation level; passed only
    when the tests ran to completion. SandboxUnavailable when that level cannot be provided here."""
    check_isolation()
    return _run(code, tests, ISOLATION, timeout_s, memory_mb, max_processes)


def _require_full_isolation() -> None:
    """Raise SandboxUnavailable unless full isolation works here (checked once, by running a probe program)."""
    global _full_isolation_checked
    if _full_isolation_checked:
        return
    if os.geteuid() != 0:
        raise SandboxUnavailable(f"the code sandbox's full isolation needs root (running as uid {os.geteuid()}): "
                                 f"run as root, {OPT_IN}")
    if not shutil.which("unshare"):
        raise SandboxUnavailable(f"the code sandbox's full isolation needs util-linux's unshare, not on PATH: "
                                 f"install it, {OPT_IN}")
    probe = _run("import collections, json, os", "assert os.getuid() != 0 and not os.access('/var/tmp', os.W_OK)",
                 "full", timeout_s=30, memory_mb=1024, max_processes=32)
    if not probe.passed:
        why = probe.detail.splitlines()[-1] if probe.detail else probe.status
        raise SandboxUnavailable(f"the code sandbox's full isolation failed here ({why}): {OPT_IN}")
    _full_isolation_checked = True


def _limits(cpu_seconds: int, memory_bytes: int, max_processes: int):
    def apply() -> None:  # runs in the child between fork and exec; the limits survive the exec
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))
        # Not enforced for root: under full isolation it counts from the harness's switch to a fresh uid on.
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _command(isolation: str) -> list[str]:
    """The harness command. Under full isolation it runs in fresh namespaces with the system python3: the fresh
    uid cannot read a virtual environment under /root, and the tests need the standard library only."""
    harness = [os.path.abspath(sandbox_harness.__file__)]
    if isolation == "weak":
        return [sys.executable, "-I", "-B", *harness]
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or sys.executable
    return [shutil.which("unshare"), "--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
            "--mount-proc", "--", python, "-I", "-B", *harness]


def _run(code: str, tests: str, isolation: str, timeout_s: float, memory_mb: int, max_processes: int
         ) -> SandboxResult:
    nonce = secrets.token_hex(16).encode()
    read_end, write_end = os.pipe()
    workdir = tempfile.mkdtemp(prefix="cit_sandbox_") if isolation == "weak" else None
    job = dict(nonce=nonce.decode(), result_fd=write_end, solution=code, tests=tests, isolation=isolation,
               uid=random.SystemRandom().randrange(200_000, 2_000_000),  # full: a uid no account uses
               workdir=workdir or sandbox_harness.WORK_DIR)
    try:
        with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: RLIMIT_FSIZE caps what the program writes
            process = subprocess.Popen(
                _command(isolation), cwd=workdir or "/", env={}, stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(write_end,), start_new_session=True,
                preexec_fn=_limits(int(timeout_s) + 1, memory_mb * 2**20, max_processes))
            os.close(write_end)
            write_end = -1
            timed_out = _wait(process, json.dumps(job).encode(), timeout_s)
            stderr.seek(max(0, stderr.seek(0, os.SEEK_END) - 4096))
            detail = "\n".join(stderr.read().decode("utf-8", "replace").strip().splitlines()[-3:])
        os.set_blocking(read_end, False)
        try:  # what the harness reported; a leftover process of a weak run may still hold the pipe open
            report = os.read(read_end, 4096)
        except BlockingIOError:
            report = b""
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    setup_failed = nonce + sandbox_harness.SETUP_FAILED
    if report.startswith(setup_failed):  # authentic (the nonce): no untrusted code had run yet
        raise SandboxUnavailable(f"the code sandbox could not isolate a program "
                                 f"({report[len(setup_failed):].decode('utf-8', 'replace')}): {OPT_IN}")
    if timed_out:
        return SandboxResult(False, "timeout", f"killed after {timeout_s:g} s", isolation)
    if report == nonce:
        return SandboxResult(True, "passed", "", isolation)
    exit_code = process.returncode
    if not 0 <= exit_code <= 128:  # killed by a signal (under full isolation the supervisor exits with 128 + signal)
        return SandboxResult(False, "error", detail or f"killed by signal {abs(exit_code) % 128}", isolation)
    return SandboxResult(False, "failed", detail or f"exit code {exit_code} before its tests completed", isolation)


def _wait(process: subprocess.Popen, job: bytes, timeout_s: float) -> bool:
    """Send the job and wait; kill the whole process group when done or after ``timeout_s`` (True: timed out)."""
    try:
        process.communicate(job, timeout=timeout_s)
        return False
    except subprocess.TimeoutExpired:
        return True
    finally:
        try:  # unshare's group (the namespace dies with it), or a weak run's leftover children
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.communicate()  # reaps it and closes the job pipe
