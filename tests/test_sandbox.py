"""The code sandbox: only completed unit tests pass (no exit trick does), isolation holds, hostile programs fail
harmlessly, and where full isolation is impossible running code stops with a one-line error."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import metrics
import sandbox
from configs.base_config import ConfigError, build_config
from sandbox import SandboxUnavailable, run_tests

ROOT = Path(__file__).resolve().parent.parent
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="full isolation needs root")
CODE = {"metric": "code_pass_at_1", "entry_point": "add", "tests": "assert add(2, 3) == 5\nassert add(-1, 1) == 0"}
WRONG = "def add(a, b):\n    return a - b\n"
RIGHT = "def add(a, b):\n    return a + b\n"


def score(output: str) -> dict:
    return metrics.score_sample(CODE, output)


# ---- only completed tests pass -------------------------------------------------------------------------------------

EXIT_TRICKS = {
    "sys.exit": "import sys\nsys.exit(0)",
    "os._exit": "import os\nos._exit(0)",
    "exit": "exit()",
    "quit": "quit(0)",
    "SystemExit": "raise SystemExit(0)",
    "atexit": "import atexit, os\natexit.register(lambda: os._exit(0))",
    "excepthook": "import os, sys\nsys.excepthook = lambda *args: os._exit(0)",
    "signal handler": "import os, signal\nsignal.signal(signal.SIGALRM, lambda *args: os._exit(0))\n"
                      "signal.setitimer(signal.ITIMER_REAL, 0.01)\nimport time\ntime.sleep(5)",
    "kill self": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nos.kill(os.getpid(), signal.SIGKILL)",
    "rebound output": "import builtins, os, sys\nbuiltins.print = lambda *a, **k: None\n"
                      "sys.stdout = sys.stderr = open(os.devnull, 'w')\nos.write = lambda fd, data: len(data)",
    "rebound builtins": "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 0\n"
                        "builtins.exec = builtins.compile = lambda *a, **k: None",
}


@AS_ROOT
@pytest.mark.parametrize("trick", EXIT_TRICKS.values(), ids=EXIT_TRICKS.keys())
def test_a_wrong_function_scores_0_with_every_exit_trick(trick):
    after = score(f"```python\n{WRONG}{trick}\n```")  # at module level, after the definition
    inside = score("```python\ndef add(a, b):\n" + "".join(f"    {line}\n" for line in trick.splitlines())
                   + "    return a - b\n```")  # inside the function the tests call
    assert after["score"] == 0.0 and inside["score"] == 0.0, (after, inside)
    assert after["isolation"] == inside["isolation"] == "full"


@AS_ROOT
def test_tests_run_with_the_builtins_the_solution_found():
    record = dict(CODE, tests="assert abs(add(2, 3) - 5) < 1e-9 and len([add]) == 1")
    assert metrics.score_sample(record, RIGHT + "import builtins\nbuiltins.len = lambda x: 0\n")["score"] == 1.0
    assert metrics.score_sample(record, WRONG + "import builtins\nbuiltins.abs = lambda x: 0\n")["score"] == 0.0


@AS_ROOT
def test_correct_function_with_future_import_or_main_guard_passes():
    future = score("```python\nfrom __future__ import annotations\n\ndef add(a: int, b: int) -> int:\n"
                   "    return a + b\n```")
    guard = score(f"```python\n{RIGHT}\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n"
                  f"    raise SystemExit(1)\n```")
    assert future["score"] == 1.0 and guard["score"] == 1.0, (future, guard)
    assert future["status"] == "passed" and future["isolation"] == "full"


@AS_ROOT
def test_a_failure_reports_why():
    wrong = score(WRONG)
    assert wrong["status"] == "failed" and "AssertionError" in wrong["detail"] and "add(2, 3)" in wrong["detail"]
    assert "exit code 0" in score(WRONG + "import os\nos._exit(0)")["detail"]
    assert "SyntaxError" in score("def add(a, b) return a + b")["detail"]


# ---- isolation -----------------------------------------------------------------------------------------------------

@AS_ROOT
def test_writes_outside_the_working_folder_leave_nothing_on_the_host():
    name = f"cit_sandbox_probe_{uuid.uuid4().hex}"
    folders = ["/tmp", "/var/tmp", "/dev/shm", str(ROOT)]
    program = (f"import os\nfor folder in {folders!r}:\n    try:\n"
               f"        open(os.path.join(folder, {name!r}), 'w').write('x')\n    except OSError:\n        pass\n"
               f"open({name!r}, 'w').write('its own folder is writable')\nassert os.getcwd() == '/tmp'")
    result = run_tests(program)
    leaked = [os.path.join(folder, name) for folder in folders if os.path.exists(os.path.join(folder, name))]
    for path in leaked:
        os.remove(path)
    assert not leaked and result.passed, (leaked, result)


@AS_ROOT
def test_no_host_port_is_reached_not_even_through_the_socket_module():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        program = (f"import _socket, socket\nreached = []\n"
                   f"for connect in (lambda: socket.create_connection(('127.0.0.1', {port}), timeout=1),\n"
                   f"                lambda: _socket.socket().connect(('127.0.0.1', {port}))):\n"
                   f"    try:\n        connect()\n        reached.append(True)\n    except OSError:\n        pass\n"
                   f"assert not reached")
        result = run_tests(program)
        listener.settimeout(0.5)
        with pytest.raises(socket.timeout):
            listener.accept()
    assert result.passed, result


@AS_ROOT
def test_the_program_sees_no_host_environment_process_or_privilege(monkeypatch):
    monkeypatch.setenv("CIT_SECRET_TOKEN", "hunter2")
    program = ("import os\nassert not set(os.environ) - {'LC_CTYPE'}, dict(os.environ)\n"  # PEP 538 may set LC_CTYPE
               "assert os.getuid() != 0 and os.geteuid() != 0 and os.getgroups() == []\n"
               "assert os.getpid() < 10 and all(int(p) < 10 for p in os.listdir('/proc') if p.isdigit())")
    result = run_tests(program)
    assert result.passed, result


@AS_ROOT
def test_a_program_cannot_outlive_its_time_limit():
    started = time.perf_counter()
    loop = run_tests("while True:\n    pass", timeout_s=2)
    sleeper = run_tests("import os, time\nos.fork()\nos.setsid()\ntime.sleep(60)", timeout_s=1)  # both leave the group
    assert loop.status == sleeper.status == "timeout" and not loop.passed
    assert time.perf_counter() - started < 15
    assert run_tests("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)").detail == "killed by signal 9"
    deadline = time.monotonic() + 5  # the kernel tears the PID namespace down just after its init is killed
    while _sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _sandbox_processes()


def _sandbox_processes() -> list[int]:
    """Processes running under a sandbox run's fresh uid (200000 <= uid < 2000000)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            uid = int(next(line for line in status.read_text().splitlines() if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue
        if 200_000 <= uid < 2_000_000:
            found.append(int(status.parent.name))
    return found


@AS_ROOT
def test_memory_bomb_fork_bomb_and_file_deletion_fail_harmlessly(tmp_path):
    assert "MemoryError" in run_tests("x = bytearray(8 * 1024**3)", memory_mb=512).detail
    started = time.perf_counter()
    assert not run_tests("import os\nwhile True:\n    os.fork()", timeout_s=2).passed
    bypass = "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(10000):\n    libc.fork()"
    run_tests(bypass, timeout_s=2)  # whatever it manages, the host keeps working and the namespace is killed
    assert time.perf_counter() - started < 20
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    os.chmod(tmp_path, 0o755)
    for program in (f"import os\nos.remove({str(victim)!r})", f"import pathlib\npathlib.Path({str(victim)!r}).unlink()",
                    f"open({str(victim)!r}, 'w').write('gone')", f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        assert not run_tests(program).passed
    assert victim.read_text() == "keep me"
    assert run_tests("assert 1 + 1 == 2").passed


# ---- where full isolation is impossible ----------------------------------------------------------------------------

@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv") or not os.path.exists("/usr/bin/python3"),
                    reason="needs root to become another user, setpriv and a system python3")
def test_as_an_unprivileged_user_full_isolation_stops_with_one_line_and_weak_is_an_explicit_opt_in():
    script = ("import sys\nsys.path.insert(0, '.')\nimport sandbox\n"
              "try:\n    sandbox.run_tests('x = 1')\nexcept sandbox.SandboxUnavailable as error:\n    print(error)\n"
              "sandbox.configure('weak')\nresult = sandbox.run_tests('def f():\\n    return 1', 'assert f() == 1')\n"
              "print(result.passed, result.isolation)\n"
              "print(sandbox.run_tests('import sys\\nsys.exit(0)', 'assert False').passed)")
    with tempfile.TemporaryDirectory() as folder:  # not pytest's tmp_path: it sits in a folder only root can enter
        for module in ("sandbox.py", "sandbox_harness.py"):  # the repo or its venv may be unreadable to that user
            shutil.copy(ROOT / module, folder)
        os.chmod(folder, 0o755)
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                               "-I", "-c", script], capture_output=True, text=True, timeout=120, cwd=folder, env={})
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stderr
    assert "needs root" in lines[0] and "--sandbox_isolation weak" in lines[0]
    assert lines[1:] == ["True weak", "False"]


def test_refused_or_missing_unshare_stops_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sandbox, "_full_isolation_checked", False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # the root path, whoever runs the test
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="unshare") as missing:
        sandbox.check_isolation()
    refusing = tmp_path / "unshare"
    refusing.write_text("#!/bin/sh\necho 'unshare: unshare failed: Operation not permitted' >&2\nexit 1\n")
    refusing.chmod(0o755)
    with pytest.raises(SandboxUnavailable, match="Operation not permitted") as refused:
        run_tests(RIGHT, "assert add(1, 1) == 2")
    for error in (missing.value, refused.value):
        assert "\n" not in str(error) and "--sandbox_isolation weak" in str(error)


@AS_ROOT
def test_a_failed_isolation_step_raises_instead_of_scoring(monkeypatch):
    sandbox.run_tests("pass")  # the probe has passed
    monkeypatch.setattr(sandbox.sandbox_harness, "WORK_DIR", "/nonexistent/cit_sandbox")
    with pytest.raises(SandboxUnavailable, match="tmpfs on /nonexistent/cit_sandbox"):
        run_tests(RIGHT, "assert add(1, 1) == 2")


def test_weak_isolation_is_recorded_and_the_level_is_validated(monkeypatch):
    monkeypatch.setattr(sandbox, "ISOLATION", sandbox.ISOLATION)
    sandbox.configure("weak")
    result = score(RIGHT)
    assert result["score"] == 1.0 and result["isolation"] == "weak"
    assert score(WRONG + "import sys\nsys.exit(0)")["score"] == 0.0
    with pytest.raises(ValueError, match="full, weak"):
        sandbox.configure("none")
    with pytest.raises(ConfigError, match="sandbox_isolation"):
        build_config(overrides={"sandbox_isolation": "off"})
