"""The trusted harness that runs inside the code sandbox (``python sandbox_harness.py``; see sandbox.py).

It reads its job (a nonce, the result pipe, the solution, the tests, the isolation level) from stdin as JSON and
points stdin at /dev/null; under full isolation it makes the mounts read-only, mounts the private working tmpfs and
stays root as the namespace's PID 1 while a child drops to the fresh uid; then it runs the solution as its own
module and the tests against its names, and only when the tests complete writes the nonce to the result pipe.
Every run starts a fresh interpreter with this file, so it imports only the small part of the standard library it
needs.
"""
import builtins
import json
import linecache
import os
import sys
import traceback
import types

WORK_DIR = "/tmp"  # the working folder under full isolation: a private tmpfs mounted there
TMPFS_OPTIONS = "size=64m,nr_inodes=4096,mode=0700"
SETUP_FAILED = b" setup failed: "  # after the nonce: isolation failed before any untrusted code ran
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 1, 2, 4, 8, 32, 4096
KEPT_OPTIONS = {b"noexec": MS_NOEXEC, b"noatime": 1024, b"nodiratime": 2048, b"relatime": 1 << 21,
                b"strictatime": 1 << 24}  # options a read-only remount keeps (changing atime may be refused)
PR_SET_NO_NEW_PRIVS = 38


def mounts() -> list:
    """(mount point, its per-mount options) of every mount here, from /proc/self/mountinfo, whose mount points
    write space, tab, newline and backslash as \\ooo."""
    def unescape(path: bytes) -> bytes:
        head, *rest = path.split(b"\\")
        return head + b"".join(bytes([int(part[:3], 8)]) + part[3:] for part in rest)

    with open("/proc/self/mountinfo", "rb") as handle:
        return [(unescape(fields[4]), set(fields[5].split(b","))) for fields in map(bytes.split, handle)]


def supervise() -> None:
    """Fork and return in the child. The parent, PID 1 of the namespace, stays root and only waits: the program
    (another uid) cannot signal it, trace it or move it out of the process group the sandbox kills at the time
    limit, and when it exits the kernel kills every process left in the namespace. It exits with the child's
    status (128 + the signal when the child was killed)."""
    child = os.fork()
    if child:
        status = os.waitpid(child, 0)[1]
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


def isolate(uid: int, workdir: str) -> None:
    """As root inside fresh namespaces: every mount read-only, a private tmpfs on ``workdir``, then (in a child of
    the root supervisor) a fresh uid for good. The standard library has no mount(2) or prctl(2), hence ctypes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def call(result: int, what: str) -> None:
        if result != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{what}: {os.strerror(error)}")

    visible = mounts()
    for target, options in visible:
        kept = sum(flag for option, flag in KEPT_OPTIONS.items() if option in options)
        libc.mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | kept, None)
    for target, _ in visible:  # judged on the result (a mount hidden under another refuses the remount): every
        try:  # reachable mount point must now be read-only
            writable = not os.statvfs(target).f_flag & os.ST_RDONLY
        except OSError:  # gone or unreachable
            continue
        if writable:
            raise OSError(f"{os.fsdecode(target)} stays writable")
    call(libc.mount(b"tmpfs", os.fsencode(workdir), b"tmpfs", MS_NOSUID | MS_NODEV,
                    f"{TMPFS_OPTIONS},uid={uid},gid={uid}".encode()), f"tmpfs on {workdir}")
    supervise()
    call(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)  # from root to a non-zero uid: every capability is dropped


def main() -> None:
    """Read the job, isolate, run solution then tests; the nonce on the result pipe only when the tests completed."""
    # Bound before any untrusted code runs: rebinding os.write, exec, builtins or this module's globals changes
    # nothing below.
    write, exit_now, run, format_exception, copy = os.write, os._exit, exec, traceback.format_exception, dict
    job = json.loads(sys.stdin.buffer.read())
    nonce, result_fd = job.pop("nonce").encode(), job["result_fd"]
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the job, nonce included, can no longer be read from stdin
    os.close(devnull)
    sys.dont_write_bytecode = True
    try:
        if job["isolation"] == "full":
            isolate(job["uid"], job["workdir"])
        os.chdir(job["workdir"])
    except OSError as error:
        write(result_fd, nonce + SETUP_FAILED + str(error).encode("utf-8", "replace"))
        exit_now(70)
    for name in ("solution", "tests"):  # source lines in the tracebacks of the failure detail
        linecache.cache[f"{name}.py"] = (len(job[name]), None, job[name].splitlines(True), f"{name}.py")
    try:
        tests = compile(job["tests"], "tests.py", "exec", dont_inherit=True)
        solution = compile(job["solution"], "solution.py", "exec", dont_inherit=True)
        builtins_before = copy(builtins.__dict__)
        module = types.ModuleType("solution")  # its own module: a main guard does not run
        sys.modules["solution"] = module
        run(solution, module.__dict__)
        namespace = {name: value for name, value in module.__dict__.items() if name not in builtins_before}
        namespace.update(__builtins__=builtins_before, __name__="tests")  # rebound builtins do not reach the tests
        run(tests, namespace)
    except BaseException as error:  # SystemExit and KeyboardInterrupt included: the tests did not complete
        try:
            lines = format_exception(error.__class__, error, error.__traceback__)
            write(2, "".join(lines).encode("utf-8", "replace"))
        finally:
            exit_now(1)
    write(result_fd, nonce)
    exit_now(0)


if __name__ == "__main__":
    main()
