"""The bootstrap of one sandboxed job (run as ``python -I -S -B _sandbox_child.py``).

Standard library only, and it never imports the real ``assay`` package: the child starts with no
application state. It reads one JSON request on stdin, locks itself down, then imports the job's
module and runs the function. Order matters:

1. read the request (stdin is then closed);
2. kernel layers, while still privileged: a new network namespace (``unshare(CLONE_NEWNET)``:
   no route for inet sockets, and the host's abstract unix sockets are out of reach), rlimits,
   Landlock (writes only below the temp dir, reads only below the allowed roots, executing no
   file at all, no TCP bind/connect (ABI >= 4), no signals or abstract unix sockets outside the
   sandbox (ABI >= 6), no connecting to named unix sockets made outside it (ABI >= 9)), a seccomp
   filter (below), and dropping every capability;
3. the in-process layer, which also works where the kernel offers none of the above: an audit
   hook (it cannot be removed) that refuses socket connect/bind/send/resolve, sockets other than
   inet and netlink (so no unix sockets), writes outside the temp dir, opening ``/proc/<pid>`` of
   other processes, creating or replacing processes, and ``ctypes`` (its import and its calls)
   unless the job opted in and every kernel layer is in place;
4. a stand-in ``assay`` module (``job``, ``current_job``, ``JobCancelled``) so job modules that
   ``from assay import job`` import without loading the application;
5. run the job and write ONE final JSON line on the message fd (progress lines before it).

The seccomp filter makes these calls fail with ``EPERM``: ``fork``, ``vfork``, ``clone`` without
``CLONE_THREAD`` or with any ``CLONE_NEW*`` flag (threads keep working; ``clone3`` reports
``ENOSYS`` so libc falls back to ``clone``), ``execve``/``execveat``, ``unshare``/``setns`` (no user
namespace, no way out of the network namespace), ``socket``/``socketpair`` of any family but
``AF_INET``, ``AF_INET6`` and ``AF_NETLINK`` (so no ``AF_UNIX``: a named socket such as PostgreSQL's
``/var/run/postgresql/.s.PGSQL.5432`` is found through the file system, which the network namespace
does not cover and Landlock only covers from ABI 9), ``io_uring_*`` (its operations would bypass
this filter), ``ptrace``, ``process_vm_readv``/``_writev`` and ``pidfd_getfd``.

``ctypes`` is the child's own tool for the kernel layers; once they are on, unless the job opted in,
it is dropped from ``sys.modules`` and the audit hook refuses importing it (ImportError) and its
``dlopen``/``dlsym``/call/``from_address`` events. That refusal is defence in depth, not the
boundary: Python code that really wants native code can still reach the already loaded ``_ctypes``
types, which is why every escape above is also stopped by the kernel layers, with or without
``ctypes``.

The parent trusts nothing that comes back; this file only makes honest jobs easy to report.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import json
import os
import resource
import struct
import sys
import traceback
import types
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
CLONE_THREAD = 0x00010000
CLONE_NEW_ANY = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
AF_UNIX, AF_INET, AF_INET6, AF_NETLINK = 1, 2, 10, 16
_SOCKET_FAMILIES = (AF_INET, AF_INET6, AF_NETLINK)  # the only ones the child may create
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

_COMMON_SYSCALLS = {  # the same number on every architecture (as are Landlock's)
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "clone3": 435,
    "pidfd_getfd": 438,
}
_SYSCALLS = {  # machine -> (audit arch, {name: number})
    "x86_64": (
        0xC000003E,
        {
            "socket": 41,
            "socketpair": 53,
            "clone": 56,
            "fork": 57,
            "vfork": 58,
            "execve": 59,
            "ptrace": 101,
            "unshare": 272,
            "setns": 308,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "execveat": 322,
            **_COMMON_SYSCALLS,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97,
            "ptrace": 117,
            "socket": 198,
            "socketpair": 199,
            "clone": 220,
            "execve": 221,
            "setns": 268,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "execveat": 281,
            **_COMMON_SYSCALLS,
        },
    ),
}
_DENIED_SYSCALLS = (  # always EPERM once the filter is on
    "fork",
    "vfork",
    "execve",
    "execveat",
    "unshare",
    "setns",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
)
_LANDLOCK_CREATE, _LANDLOCK_ADD_RULE, _LANDLOCK_RESTRICT = 444, 445, 446

_LIBC: list[Any] = []


def _libc_call() -> Any:
    if not _LIBC:
        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    return _LIBC[0]


def _syscall(*args: Any) -> int:
    libc = _libc_call()
    libc.syscall.restype = ctypes.c_long
    return int(libc.syscall(*args))


def _err(what: str) -> str:
    code = ctypes.get_errno()
    return f"{what}: {os.strerror(code)} (errno {code})"


# -- kernel layers ---------------------------------------------------------------------------------


def new_network_namespace() -> str | None:
    """None on success, else why not."""
    if _libc_call().unshare(CLONE_NEWNET) != 0:
        return _err("unshare(CLONE_NEWNET)")
    return None


def set_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        if name == "RLIMIT_NPROC" and os.geteuid() == 0:
            continue  # root is exempt from NPROC; the seccomp filter covers process creation
        soft = hard = int(value)
        if name == "RLIMIT_CPU":
            hard = soft + 1  # SIGXCPU at the soft limit, SIGKILL a second later
        _, old_hard = resource.getrlimit(which)
        if old_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, old_hard), min(hard, old_hard)
        resource.setrlimit(which, (soft, hard))


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_FS_EXECUTE, _FS_READ_FILE, _FS_READ_DIR = 1, 4, 8
_FS_RESOLVE_UNIX = 1 << 16  # ABI 9: connect/sendmsg to a named unix socket
# Rights that apply to a file (not only to a directory): execute, write, read, truncate,
# ioctl_dev, resolve_unix.
_FS_FILE_ONLY = 1 | 2 | 4 | (1 << 14) | (1 << 15) | _FS_RESOLVE_UNIX


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock."""
    return max(_syscall(_LANDLOCK_CREATE, None, 0, 1), 0)  # LANDLOCK_CREATE_RULESET_VERSION


def landlock(write_root: str, read_roots: list[str], write_files: list[str]) -> str | None:
    """Confine the file system (and TCP, signals, unix sockets where the ABI has them); None on
    success. Every handled right but execute is granted below ``write_root``; reads below
    ``read_roots``; execute nowhere (no ``execve``, while ``dlopen`` only needs read)."""
    abi = landlock_abi()
    if abi < 1:
        return _err("landlock unavailable")
    fs_bits = 13 if abi == 1 else 14 if abi == 2 else 15 if abi <= 4 else 16 if abi <= 8 else 17
    handled_fs = (1 << fs_bits) - 1
    granted_fs = handled_fs & ~_FS_EXECUTE
    attr = _RulesetAttr(handled_fs, 0b11 if abi >= 4 else 0, 0b11 if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(_LANDLOCK_CREATE, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        return _err("landlock_create_ruleset")
    read = _FS_READ_FILE | _FS_READ_DIR
    rules = [(root, read) for root in read_roots] + [(write_root, granted_fs)]
    rules += [(path, granted_fs & _FS_FILE_ONLY) for path in write_files]
    try:
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a root that does not exist here
            try:
                allowed = access if os.path.isdir(path) else access & _FS_FILE_ONLY
                rule = _PathBeneathAttr(allowed & handled_fs, fd)
                if _syscall(_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0) != 0:
                    return _err(f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        if _libc_call().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return _err("prctl(NO_NEW_PRIVS)")
        if _syscall(_LANDLOCK_RESTRICT, ruleset, 0) != 0:
            return _err("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return None


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_filter() -> str | None:
    """Install the filter described in the module docstring; None on success."""
    machine = os.uname().machine
    table = _SYSCALLS.get(machine)
    if table is None:
        return f"no seccomp table for {machine}"
    arch, nr = table
    ld_w, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
    arg0 = 16  # the low 32 bits of the first argument (little-endian)
    allow, eperm = 0x7FFF0000, 0x00050000 | errno.EPERM
    enosys = 0x00050000 | errno.ENOSYS
    prog = [_bpf(ld_w, 4), _bpf(jeq, arch, 1, 0), _bpf(ret, eperm), _bpf(ld_w, 0)]
    prog += [_bpf(jge, 0x40000000, 0, 1), _bpf(ret, eperm)]  # x32 syscalls
    prog += [_bpf(jeq, nr["clone3"], 0, 1), _bpf(ret, enosys)]
    for name in _DENIED_SYSCALLS:
        if name in nr:
            prog += [_bpf(jeq, nr[name], 0, 1), _bpf(ret, eperm)]
    # socket() and socketpair(): allowed families only (the domain is the first argument).
    inet, inet6, netlink = _SOCKET_FAMILIES
    prog += [_bpf(jeq, nr["socket"], 1, 0), _bpf(jeq, nr["socketpair"], 0, 6), _bpf(ld_w, arg0)]
    prog += [_bpf(jeq, inet, 3, 0), _bpf(jeq, inet6, 2, 0), _bpf(jeq, netlink, 1, 0)]
    prog += [_bpf(ret, eperm), _bpf(ret, allow)]
    # clone(): threads only, and never into a new namespace.
    prog += [_bpf(jeq, nr["clone"], 1, 0), _bpf(ret, allow), _bpf(ld_w, arg0)]
    prog += [_bpf(jset, CLONE_NEW_ANY, 2, 0), _bpf(jset, CLONE_THREAD, 0, 1)]
    prog += [_bpf(ret, allow), _bpf(ret, eperm)]
    code = b"".join(prog)
    buf = ctypes.create_string_buffer(code, len(code))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = _Fprog(len(prog), ctypes.addressof(buf))
    libc = _libc_call()
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return _err("prctl(NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        return _err("prctl(PR_SET_SECCOMP)")
    return None


def drop_capabilities() -> str | None:
    """Empty the bounding, ambient, effective, permitted and inheritable sets (uid 0 stays, but
    without any capability it is an ordinary owner of root's files, which Landlock confines)."""
    libc = _libc_call()
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    if libc.capset(header, data) != 0:
        return _err("capset")
    return None


# -- in-process layer ------------------------------------------------------------------------------

_NET_EVENTS = {
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
}
_PROCESS_EVENTS = {
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "os.spawn",
    "os.system",
    "os.exec",
    "subprocess.Popen",
    "pty.spawn",
}
_NAMESPACE_EVENTS = {"os.unshare", "os.setns"}  # Python >= 3.12
_CTYPES_EVENTS = {
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.dlsym/handle",
    "ctypes.call_function",
    "ctypes.cdata",  # from_address: any memory
    "ctypes.string_at",
    "ctypes.wstring_at",
    "ctypes.PyObj_FromPtr",
}
_CTYPES_MODULES = ("ctypes", "_ctypes")
CTYPES_REFUSED = (
    "sandbox: no native calls ({}): ctypes is refused unless the job is listed in the sandbox "
    "executor option allow_ctypes, which takes effect only with every kernel layer in place"
)
_PATH_EVENTS = {  # event -> indexes of path arguments that are modified
    "os.remove": (0,),
    "os.rename": (0, 1),
    "os.mkdir": (0,),
    "os.rmdir": (0,),
    "os.symlink": (1,),
    "os.link": (1,),
    "os.chmod": (0,),
    "os.chown": (0,),
    "os.truncate": (0,),
    "os.utime": (0,),
    "os.mkfifo": (0,),
    "os.mknod": (0,),
    "shutil.rmtree": (0,),
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def install_audit_hook(tmp: str, *, block_ctypes: bool, writable: tuple[str, ...]) -> None:
    """The in-process fallback. It works on any OS but is bypassable by native code, hence
    ``block_ctypes`` (see :func:`forget_ctypes`)."""
    root = os.path.realpath(tmp)

    def outside(path: object) -> bool:
        if isinstance(path, int):  # an fd: it was opened under the same rules
            return False
        if not isinstance(path, (str, bytes, os.PathLike)):
            return True
        real = os.path.realpath(os.fsdecode(path))
        return real not in writable and real != root and not real.startswith(root + os.sep)

    def other_process(path: object) -> bool:
        """/proc/<pid>/... of another process (its environ holds the server's secrets)."""
        if not isinstance(path, (str, bytes)):
            return False
        parts = os.path.realpath(os.fsdecode(path)).split(os.sep)
        return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != me

    me = str(os.getpid())

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _NET_EVENTS:
            raise PermissionError(f"sandbox: no network ({event})")
        if event in _PROCESS_EVENTS:
            raise PermissionError(f"sandbox: no new processes ({event})")
        if event in _NAMESPACE_EVENTS:
            raise PermissionError(f"sandbox: no namespaces ({event})")
        if event == "socket.__new__" and len(args) >= 2:
            family = args[1]
            if family not in _SOCKET_FAMILIES and family != -1:  # -1: from an existing fd
                kind = "unix" if family == AF_UNIX else f"family {family}"
                raise PermissionError(f"sandbox: no {kind} sockets ({event})")
        if block_ctypes:
            if event in _CTYPES_EVENTS:
                raise PermissionError(CTYPES_REFUSED.format(event))
            if event == "import" and args and str(args[0]).split(".")[0] in _CTYPES_MODULES:
                # ImportError, so ``try: import ctypes / except ImportError`` degrades.
                raise ImportError(CTYPES_REFUSED.format(f"import {args[0]}"))
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            if other_process(path):
                raise PermissionError(f"sandbox: no access to other processes ({path!r})")
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & _WRITE_FLAGS
            )
            if writes and path is not None and outside(path):
                raise PermissionError(f"sandbox: writes only below {root} (not {path!r})")
        elif event in _PATH_EVENTS:
            for index in _PATH_EVENTS[event]:
                if index < len(args) and outside(args[index]):
                    raise PermissionError(f"sandbox: writes only below {root} ({event})")

    sys.addaudithook(hook)


def forget_ctypes() -> None:
    """Drop the child's ctypes from ``sys.modules``, so that a job's ``import ctypes`` is a real
    import, which the audit hook refuses."""
    _LIBC.clear()
    for name in [n for n in sys.modules if n.split(".")[0] in _CTYPES_MODULES]:
        del sys.modules[name]


# -- the stand-in assay module ---------------------------------------------------------------------


class JobCancelled(Exception):
    pass


class SandboxJobContext:
    """What ``current_job()`` returns in the sandbox: the job's id, attempt and params, and
    progress reports to the parent. Cancellation is by force (the process group is killed)."""

    def __init__(self, request: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
        self.job_id: str = request["job_id"]
        self.attempt: int = request["attempt"]
        self.params: dict[str, Any] = request["params"]
        self._emit = emit

    @property
    def cancelled(self) -> bool:
        return False

    def check_cancelled(self) -> None:
        return None

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        import time

        time.sleep(timeout if timeout is not None else 1e9)
        return False

    def progress(
        self, completed: float, total: float | None = None, message: str | None = None
    ) -> None:
        self._emit({"type": "progress", "completed": completed, "total": total, "message": message})


def _stand_in(ctx: SandboxJobContext, layers: dict[str, Any]) -> types.ModuleType:
    module = types.ModuleType("assay", "Stand-in for assay inside the sandbox.")

    def job(fn: Any = None, /, **_options: Any) -> Any:
        return fn if fn is not None else (lambda f: f)

    module.job = job  # type: ignore[attr-defined]
    module.current_job = lambda: ctx  # type: ignore[attr-defined]
    module.JobCancelled = JobCancelled  # type: ignore[attr-defined]
    module.SANDBOX = layers  # type: ignore[attr-defined]
    return module


# -- main ------------------------------------------------------------------------------------------


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def main() -> None:
    request = json.loads(sys.stdin.buffer.read())
    sys.stdin.close()
    fd = int(request["message_fd"])
    out = os.fdopen(fd, "w", encoding="utf-8", closefd=True)

    def emit(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, allow_nan=False) + "\n")
        out.flush()

    tmp: str = request["tmp"]
    layers: dict[str, Any] = {}
    problems: list[str] = []
    wanted = request["layers"]
    if wanted.get("netns"):
        why = new_network_namespace()
        layers["netns"] = why is None
        if why:
            problems.append(why)
    set_rlimits(request["rlimits"])
    if wanted.get("landlock"):
        why = landlock(tmp, request["read_roots"], request["write_files"])
        layers["landlock"] = why is None
        layers["landlock_abi"] = landlock_abi()
        if why:
            problems.append(why)
    if wanted.get("seccomp"):
        why = seccomp_filter()
        layers["seccomp"] = why is None
        if why:
            problems.append(why)
    if os.geteuid() == 0:
        why = drop_capabilities()
        layers["capabilities_dropped"] = why is None
        if why:
            problems.append(why)
    if wanted.get("audit_hook"):
        kernel = all(layers.get(k) for k in ("netns", "landlock", "seccomp"))
        block_ctypes = not (kernel and request.get("allow_ctypes"))
        install_audit_hook(tmp, block_ctypes=block_ctypes, writable=tuple(request["write_files"]))
        if block_ctypes:
            forget_ctypes()
        layers["audit_hook"] = True
        layers["ctypes_blocked"] = block_ctypes
    if problems:
        print("sandbox: " + "; ".join(problems), file=sys.stderr, flush=True)

    ctx = SandboxJobContext(request, emit)
    sys.modules["assay"] = _stand_in(ctx, layers)
    sys.path[:0] = request["sys_path"]
    try:
        fn = _resolve(request["module"], request["qualname"])
        retry_on = []
        for module, qualname in request["retry_on"]:
            try:
                retry_on.append(_resolve(module, qualname))
            except Exception:
                print(f"sandbox: cannot resolve retry_on {module}.{qualname}", file=sys.stderr)
        try:
            value = fn(**request["params"])
        except BaseException as exc:
            transient = isinstance(exc, tuple(c for c in retry_on if isinstance(c, type)))
            emit({"type": "error", "error": traceback.format_exc(), "transient": transient})
            return
        try:
            text = json.dumps({"type": "result", "value": value}, allow_nan=False)
        except (TypeError, ValueError) as exc:
            emit({"type": "error", "error": f"the result is not JSON: {exc}", "transient": False})
            return
        out.write(text + "\n")
        out.flush()
    except BaseException:
        emit({"type": "error", "error": traceback.format_exc(), "transient": False})


if __name__ == "__main__":
    try:
        main()
    finally:
        # Exit at once: no atexit hooks or non-daemon threads of the job keep the process alive.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)
