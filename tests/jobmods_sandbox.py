"""Jobs for the sandbox tests: each tries one thing the sandbox must block and reports what it saw.

In the sandbox this module is imported by a fresh interpreter where ``assay`` is a stand-in
(``job``, ``current_job``, ``SANDBOX``); in the test process it is the real package.
"""

from __future__ import annotations

import ctypes
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
    """Writes raw bytes to the result pipe (found by scanning fds) and exits without a result."""
    for fd in range(3, 64):
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
