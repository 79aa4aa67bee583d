"""Jobs for the sandbox tests: each tries one thing the sandbox must block and reports what it saw.

In the sandbox this module is imported by a fresh interpreter where ``assay`` is a stand-in
(``job``, ``current_job``, ``SANDBOX``); in the test process it is the real package.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import time
from typing import Any

import assay
from assay import current_job, job


class Transient(Exception):
    pass


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@job(name="sb_add", executor="sandbox")
def sb_add(a: int, b: int) -> dict[str, Any]:
    current_job().progress(1, 1, "added")
    return {
        "sum": a + b,
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": sorted(os.environ),
        "layers": getattr(assay, "SANDBOX", None),
    }


@job(name="sb_noop", executor="sandbox")
def sb_noop() -> None:
    return None


@job(name="sb_env", executor="sandbox")
def sb_env() -> dict[str, Any]:
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as fh:
            parent_env: str = "SECRET" if b"ASSAY_TEST_SECRET" in fh.read() else "readable"
    except OSError as exc:
        parent_env = _error(exc)
    return {
        "secret": os.environ.get("ASSAY_TEST_SECRET"),
        "parent_environ": parent_env,
        "layers": getattr(assay, "SANDBOX", None),
    }


@job(name="sb_connect", executor="sandbox")
def sb_connect(port: int) -> dict[str, Any]:
    """Three ways to reach 127.0.0.1:port: the socket module, the C module, raw libc."""
    seen: dict[str, Any] = {}
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        seen["socket"] = "connected"
    except OSError as exc:
        seen["socket"] = _error(exc)
    import _socket

    try:
        raw = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        raw.settimeout(2)
        raw.connect(("127.0.0.1", port))
        seen["_socket"] = "connected"
    except OSError as exc:
        seen["_socket"] = _error(exc)
    try:
        import ctypes  # refused in the sandbox unless the job opts in

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)
        addr = struct.pack("!HH4s8x", socket.AF_INET, port, socket.inet_aton("127.0.0.1"))
        addr = struct.pack("=H", socket.AF_INET) + addr[2:]
        rc = libc.connect(fd, addr, len(addr))
        seen["libc"] = "connected" if rc == 0 else errno.errorcode[ctypes.get_errno()]
    except Exception as exc:
        seen["libc"] = _error(exc)
    seen["interfaces"] = sorted(name for _, name in socket.if_nameindex())
    seen["layers"] = getattr(assay, "SANDBOX", None)
    return seen


@job(name="sb_write", executor="sandbox")
def sb_write(outside: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    with open("inside.txt", "w") as fh:
        fh.write("ok")
    with open("inside.txt") as fh:
        seen["inside"] = fh.read()
    try:
        with open(outside, "w") as fh:
            fh.write("escaped")
        seen["outside"] = "written"
    except OSError as exc:
        seen["outside"] = _error(exc)
    try:
        import ctypes  # refused in the sandbox unless the job opts in

        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.open(outside.encode() + b".libc", os.O_WRONLY | os.O_CREAT, 0o644)
        seen["libc"] = "written" if fd >= 0 else errno.errorcode[ctypes.get_errno()]
    except Exception as exc:
        seen["libc"] = _error(exc)
    seen["layers"] = getattr(assay, "SANDBOX", None)
    return seen


@job(name="sb_fork_bomb", executor="sandbox")
def sb_fork_bomb() -> dict[str, Any]:
    seen: dict[str, Any] = {}
    children = 0
    try:
        while children < 200:  # bounded even if every defence failed
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children += 1
        seen["fork"] = f"forked {children}"
    except OSError as exc:
        seen["fork"] = f"{_error(exc)} after {children}"
    try:
        import ctypes  # refused in the sandbox unless the job opts in

        libc = ctypes.CDLL(None, use_errno=True)
        pid = libc.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        seen["libc"] = f"forked {pid}" if pid > 0 else errno.errorcode[ctypes.get_errno()]
    except Exception as exc:
        seen["libc"] = _error(exc)
    import threading

    box: list[int] = []
    thread = threading.Thread(target=lambda: box.append(1))
    thread.start()
    thread.join()
    seen["thread"] = box == [1]
    seen["layers"] = getattr(assay, "SANDBOX", None)
    if seen["fork"].startswith("forked") or seen["libc"].startswith("forked"):
        return seen
    raise RuntimeError(f"fork bomb defused: {seen}")


@job(name="sb_memory", executor="sandbox")
def sb_memory() -> int:
    hog = []
    while True:
        hog.append(bytearray(50 * 1024 * 1024))


@job(name="sb_loop", executor="sandbox", timeout=1.0)
def sb_loop() -> None:
    print(f"pid {os.getpid()}", flush=True)
    while True:
        pass


@job(name="sb_sleep", executor="sandbox")
def sb_sleep(seconds: float) -> str:
    print(f"pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return "slept"


@job(name="sb_spam", executor="sandbox")
def sb_spam() -> None:
    line = "x" * 1023 + "\n"
    while True:
        print(line, end="")


@job(name="sb_big_result", executor="sandbox")
def sb_big_result(size: int) -> str:
    return "y" * size


@job(name="sb_not_json", executor="sandbox")
def sb_not_json() -> object:
    return object()


@job(name="sb_forged", executor="sandbox")
def sb_forged(payload: str) -> None:
    """Writes raw bytes to the result pipe (found by scanning fds) and exits without a result.

    The pipe keeps the parent's fd number, which is high in a long-lived test process."""
    for fd in range(3, 4096):  # above RLIMIT_NOFILE too: the fd was inherited
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, payload.encode())
        except OSError:
            continue
    os._exit(0)


@job(name="sb_flaky", executor="sandbox", max_retries=2, retry_on=(Transient,))
def sb_flaky(fail_times: int) -> int:
    attempt = current_job().attempt
    if attempt <= fail_times:
        raise Transient(f"attempt {attempt}")
    return attempt


@job(name="sb_fail", executor="sandbox", max_retries=2, retry_on=(Transient,))
def sb_fail() -> None:
    raise ValueError("permanent")


@job(name="sb_limits", executor="sandbox")
def sb_limits(file_bytes: int, files: int) -> dict[str, Any]:
    """Tries a file bigger than RLIMIT_FSIZE and more open files than RLIMIT_NOFILE."""
    seen: dict[str, Any] = {}
    try:
        with open("big.bin", "wb") as fh:
            fh.write(b"z" * file_bytes)
        seen["file"] = "written"
    except OSError as exc:
        seen["file"] = _error(exc)
    handles = []
    try:
        for i in range(files):
            handles.append(open(f"f{i}", "w"))  # noqa: SIM115 - kept open on purpose
        seen["files"] = f"opened {len(handles)}"
    except OSError as exc:
        seen["files"] = f"{_error(exc)} after {len(handles)}"
    for fh in handles:
        fh.close()
    return seen


@job(name="sb_exit", executor="sandbox")
def sb_exit() -> None:
    os._exit(3)


# -- escapes through the kernel (tests/hostile/test_hostile_sandbox.py) ----------------------------
# Each job tries one escape two ways: the Python API, and raw libc calls through ctypes (the way
# the custom scorer reached PostgreSQL's unix socket). Each way reports "connected",
# "created"... when it got through, else the error it met.

_CLONE_NR = {"x86_64": 56, "aarch64": 220}
_SETNS_NR = {"x86_64": 308, "aarch64": 268}
_IO_URING_SETUP = 425
CLONE_VM, CLONE_SIGHAND, CLONE_THREAD = 0x100, 0x800, 0x10000
CLONE_NEWUSER = 0x10000000


def _libc() -> Any:
    import ctypes  # refused in the sandbox unless the job opts in

    return ctypes.CDLL(None, use_errno=True)


def _errno() -> str:
    import ctypes

    return errno.errorcode[ctypes.get_errno()]


def _unix_address(path: str) -> bytes:
    """A sockaddr_un: a file path, or an abstract name when ``path`` starts with NUL."""
    return struct.pack("=H", socket.AF_UNIX) + path.encode()


@job(name="sb_unix_connect", executor="sandbox")
def sb_unix_connect(path: str) -> dict[str, Any]:
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            seen["socket"] = "connected"
    except OSError as exc:
        seen["socket"] = _error(exc)
    try:
        libc = _libc()
        fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
        if fd < 0:
            seen["libc"] = f"socket: {_errno()}"
        else:
            address = _unix_address(path)
            connected = libc.connect(fd, address, len(address)) == 0
            seen["libc"] = "connected" if connected else f"connect: {_errno()}"
            os.close(fd)
    except Exception as exc:
        seen["libc"] = _error(exc)
    return seen


@job(name="sb_unix_bind", executor="sandbox")
def sb_unix_bind(outside: str) -> dict[str, Any]:
    """Creates a named socket outside its temp dir, and one inside (its cwd)."""
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    for key, path in (("outside", outside), ("inside", "inside.sock")):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.bind(path)
                seen[key] = "bound"
        except OSError as exc:
            seen[key] = _error(exc)
    try:
        libc = _libc()
        fd = libc.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
        if fd < 0:
            seen["libc"] = f"socket: {_errno()}"
        else:
            address = _unix_address(outside + ".libc")
            bound = libc.bind(fd, address, len(address)) == 0
            seen["libc"] = "bound" if bound else f"bind: {_errno()}"
            os.close(fd)
    except Exception as exc:
        seen["libc"] = _error(exc)
    return seen


@job(name="sb_socketpair", executor="sandbox")
def sb_socketpair() -> dict[str, Any]:
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    try:
        first, second = socket.socketpair()
        first.close()
        second.close()
        seen["socket"] = "created"
    except OSError as exc:
        seen["socket"] = _error(exc)
    try:
        import ctypes

        fds = (ctypes.c_int * 2)()
        rc = _libc().socketpair(socket.AF_UNIX, socket.SOCK_STREAM, 0, fds)
        seen["libc"] = "created" if rc == 0 else _errno()
    except Exception as exc:
        seen["libc"] = _error(exc)
    return seen


@job(name="sb_namespaces", executor="sandbox")
def sb_namespaces() -> dict[str, Any]:
    """unshare(CLONE_NEWUSER), setns() and clone() with CLONE_NEWUSER. The clone also has
    CLONE_THREAD, which the kernel refuses with EINVAL before creating anything: the seccomp
    filter must say EPERM first."""
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    unshare = getattr(os, "unshare", None)  # Python >= 3.12
    if unshare is not None:
        try:
            unshare(CLONE_NEWUSER)
            seen["os"] = "unshared"
        except OSError as exc:
            seen["os"] = _error(exc)
    try:
        import ctypes

        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        seen["unshare"] = "unshared" if libc.unshare(CLONE_NEWUSER) == 0 else _errno()
        machine = os.uname().machine
        rc = libc.syscall(_SETNS_NR[machine], -1, CLONE_NEWUSER)
        seen["setns"] = "joined" if rc == 0 else _errno()
        flags = CLONE_VM | CLONE_SIGHAND | CLONE_THREAD | CLONE_NEWUSER
        rc = libc.syscall(_CLONE_NR[machine], flags, 0, 0, 0, 0)
        seen["clone"] = f"cloned {rc}" if rc >= 0 else _errno()
    except Exception as exc:
        seen["unshare"] = _error(exc)
    return seen


@job(name="sb_exec", executor="sandbox")
def sb_exec() -> dict[str, Any]:
    """Replaces itself with a shell (no fork needed): on success the job ends without a result
    and its log says EXECUTED."""
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    try:
        os.execv("/bin/sh", ["sh", "-c", "echo EXECUTED by os.execv"])
    except OSError as exc:
        seen["os"] = _error(exc)
    try:
        import ctypes

        argv = (ctypes.c_char_p * 4)(b"sh", b"-c", b"echo EXECUTED by libc", None)
        _libc().execv(b"/bin/sh", argv)
        seen["libc"] = _errno()
    except Exception as exc:
        seen["libc"] = _error(exc)
    return seen


@job(name="sb_io_uring", executor="sandbox")
def sb_io_uring() -> dict[str, Any]:
    """io_uring_setup(): its socket/connect operations would not pass the seccomp filter."""
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None)}
    try:
        import ctypes

        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
        fd = libc.syscall(_IO_URING_SETUP, 4, params)
        if fd >= 0:
            os.close(fd)
        seen["libc"] = "created" if fd >= 0 else _errno()
    except Exception as exc:
        seen["libc"] = _error(exc)
    return seen


@job(name="sb_ctypes", executor="sandbox")
def sb_ctypes() -> dict[str, Any]:
    seen: dict[str, Any] = {"layers": getattr(assay, "SANDBOX", None), "pid": os.getpid()}
    try:
        import ctypes

        seen["import"] = "imported"
        seen["call"] = ctypes.CDLL(None).getpid()
    except Exception as exc:
        seen.setdefault("import", _error(exc))
        seen["call"] = _error(exc)
    try:
        import __main__  # the sandbox's bootstrap, which loaded ctypes for the kernel layers

        seen["leftover"] = __main__.ctypes.CDLL(None).getpid()
    except Exception as exc:
        seen["leftover"] = _error(exc)
    return seen
