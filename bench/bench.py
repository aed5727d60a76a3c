#!/usr/bin/env python3
"""Measuring and tabulating half of bench/run (Python 3 stdlib + paramiko).

    bench.py prepare CLIENT_DIR HOME...   generate the client files and the same data in each home
    bench.py unftp-credentials FILE       write unFTP's JSON user file (the account mftbench)
    bench.py wait                         wait for every server's listeners (exit 1 if one stays down)
    bench.py measure                      run the measurements, print and save the markdown table

Everything is read from the environment that bench/run exports (PERFBASE, SERVERS, ROUNDS,
BIG_MB, ...). Clients: curl (FTP/FTPS bulk), lftp (FTP small files), OpenSSH sftp (SFTP bulk,
small files, listing), ftplib and paramiko (sessions, idle memory, FTP listing).
"""

import base64
import ftplib
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import platform
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

MiB = 1024 * 1024
USER = "mftbench"


def env_int(name, default):
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"bench.py: {name} must be an integer")


BASE = os.environ.get("PERFBASE", "")
ROUNDS = env_int("ROUNDS", 3)
BIG_MB = env_int("BIG_MB", 1024)
SMALL_FILES = env_int("SMALL_FILES", 2000)
SMALL_KB = env_int("SMALL_KB", 4)
SESSIONS = env_int("SESSIONS", 200)
MEM_FTP_SESSIONS = env_int("MEM_FTP_SESSIONS", 500)
MEM_SFTP_SESSIONS = env_int("MEM_SFTP_SESSIONS", 200)
LIST_FILES = env_int("LIST_FILES", 100000)
STEP_TIMEOUT = env_int("STEP_TIMEOUT", 600)
SESSION_TIMEOUT = env_int("SESSION_TIMEOUT", 60)
# clients of the concurrent-session test are spread over this many processes (GIL)
CLIENT_PROCS = env_int("CLIENT_PROCS", os.cpu_count() or 2)
SERVERS = os.environ.get("SERVERS", "dropgate dropgate-cache vsftpd pureftpd proftpd unftp sshd").split()
ONLY = os.environ.get("ONLY", "ftp ftps sftp small sessions memory listing").split()
SFTP_KEX = "curve25519-sha256"
SESS_FILE = "sess/f4k.bin"
SESS_FILE_SIZE = 4096

PEER_HOME = os.path.join(BASE, "home", USER)
SERVER_INFO = {
    "dropgate": {"label": "dropgate", "ftp": 21024, "sftp": 22024,
                 "home": os.path.join(BASE, "dropgate", "files", USER), "mode": "durable"},
    # the same server with `durable_uploads = false`: upload rows only, into an empty home
    "dropgate-cache": {"label": "dropgate (page cache)", "ftp": 21027, "sftp": 22027,
                       "home": os.path.join(BASE, "dropgate-cache", "files", USER),
                       "mode": "page cache", "uploads_only": True},
    "vsftpd": {"label": "vsftpd", "ftp": 21021, "home": PEER_HOME},
    "pureftpd": {"label": "Pure-FTPd", "ftp": 21023, "home": PEER_HOME},
    # one process serves both: FTP/FTPS (mod_tls) and, in a virtual host, SFTP (mod_sftp)
    "proftpd": {"label": "ProFTPD", "label_sftp": "ProFTPD mod_sftp", "ftp": 21025, "sftp": 22025,
                "home": PEER_HOME},
    "unftp": {"label": "unFTP", "ftp": 21026, "home": PEER_HOME},
    "sshd": {"label": "OpenSSH sshd", "sftp": 22022, "home": PEER_HOME},
}


def label(server, proto=None):
    """The server's name in the table; a protocol may have its own (ProFTPD's mod_sftp)."""
    info = SERVER_INFO[server]
    return info.get(f"label_{proto}", info["label"]) if proto else info["label"]


logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def say(*a):
    print(*a, file=sys.stderr, flush=True)


def human_size(nbytes):
    if nbytes % (1024 * MiB) == 0:
        return f"{nbytes // (1024 * MiB)} GiB"
    if nbytes % MiB == 0:
        return f"{nbytes // MiB} MiB"
    return f"{nbytes // 1024} KiB"


# ----------------------------------------------------------------------------------------
# prepare

def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n


def dir_ok(path, count, size=None):
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return False
    if len(names) != count:
        return False
    if size is not None:
        return all(os.path.getsize(os.path.join(path, n)) == size for n in names)
    return True


def prepare(client, homes):
    big_size = BIG_MB * MiB
    small_size = SMALL_KB * 1024
    os.makedirs(client, exist_ok=True)
    big = os.path.join(client, "big.bin")
    if not (os.path.isfile(big) and os.path.getsize(big) == big_size):
        write_random(big, big_size)
    small = os.path.join(client, "small")
    if not dir_ok(small, SMALL_FILES, small_size):
        shutil.rmtree(small, ignore_errors=True)
        os.makedirs(small)
        for i in range(SMALL_FILES):
            with open(os.path.join(small, f"f{i:05d}.bin"), "wb") as f:
                f.write(os.urandom(small_size))
    shutil.rmtree(os.path.join(client, "dl"), ignore_errors=True)
    os.makedirs(os.path.join(client, "dl"))
    sess = os.path.join(client, "sess")
    if not dir_ok(sess, 10):
        shutil.rmtree(sess, ignore_errors=True)
        os.makedirs(sess)
        write_random(os.path.join(sess, "f4k.bin"), SESS_FILE_SIZE)
        for i in range(1, 10):
            write_random(os.path.join(sess, f"other{i}.bin"), SESS_FILE_SIZE)
    for home in homes:
        os.makedirs(home, exist_ok=True)
        hb = os.path.join(home, "big.bin")
        if not (os.path.isfile(hb) and os.path.getsize(hb) == big_size):
            shutil.copyfile(big, hb)
        for name, sub_size in (("small", small_size), ("sess", None)):
            dst = os.path.join(home, name)
            src = os.path.join(client, name)
            if not dir_ok(dst, len(os.listdir(src)), sub_size):
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst)
        lst = os.path.join(home, "list")
        if not dir_ok(lst, LIST_FILES):
            shutil.rmtree(lst, ignore_errors=True)
            os.makedirs(lst)
            for i in range(LIST_FILES):
                open(os.path.join(lst, f"entry-{i:06d}.txt"), "wb").close()
        up = os.path.join(home, "up")
        shutil.rmtree(up, ignore_errors=True)
        os.makedirs(up)
    # one flush so the first measurement does not pay for the writeback of the data set
    os.sync()


def unftp_credentials(path):
    """unFTP's JSON user file for its json authenticator: the account mftbench with the run's
    password as PBKDF2-HMAC-SHA256 (base64 salt and key, UNFTP_PBKDF2_ITER iterations; 0 =
    the password in plain text, which that authenticator also accepts)."""
    iterations = env_int("UNFTP_PBKDF2_ITER", 70000)
    if iterations > 0:
        salt = os.urandom(16)
        key = hashlib.pbkdf2_hmac("sha256", password().encode(), salt, iterations, 32)
        entry = {"username": USER, "pbkdf2_salt": base64.b64encode(salt).decode(),
                 "pbkdf2_key": base64.b64encode(key).decode(), "pbkdf2_iter": iterations}
    else:
        entry = {"username": USER, "password": password()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump([entry], f)
        f.write("\n")


# ----------------------------------------------------------------------------------------
# processes and memory

def launch_pid(name):
    try:
        with open(os.path.join(BASE, "run", f"{name}.launch.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def tree(pid):
    out = [pid]
    for path in _children_files(pid):
        try:
            with open(path) as f:
                for c in f.read().split():
                    out.extend(tree(int(c)))
        except OSError:
            pass
    return out


def _children_files(pid):
    try:
        return [f"/proc/{pid}/task/{t}/children" for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def server_cpu_ticks(name):
    """CPU time (clock ticks) used so far by the server's process tree."""
    pid = launch_pid(name)
    total = 0
    for p in tree(pid) if pid is not None else []:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except (OSError, ValueError, IndexError):
            pass
    return total


def settle(name, limit=20.0):
    """Waits until the server is idle (at most `limit` s): work a server does after answering
    (dropgate hashes each upload for its audit log) must not slow the next measurement, which
    is usually another server's. Idle = under 2% of one CPU over 0.25 s."""
    deadline = time.monotonic() + limit
    hz = os.sysconf("SC_CLK_TCK")
    last = server_cpu_ticks(name)
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = server_cpu_ticks(name)
        if (now - last) / hz < 0.005:
            return
        last = now
    say(f"   {name}: still busy {limit:.0f} s after the step (the next step shares the CPU with it)")


def server_mem(name):
    """(PSS kB, RSS kB, processes) summed over the server's process tree."""
    pid = launch_pid(name)
    if pid is None:
        return (0, 0, 0)
    pss = rss = n = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
            n += 1
        except (OSError, ValueError):
            pass
    return (pss, rss, n)


class PeakSampler:
    """Samples the server's summed PSS every 20 ms in a thread; .peak in kB."""

    def __init__(self, name):
        self.name = name
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, server_mem(self.name)[0])
            self._stop.wait(0.02)

    def __enter__(self):
        self.start = self.peak = server_mem(self.name)[0]
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, server_mem(self.name)[0])


def restart(server):
    """Stops and starts one server (bench/servers.sh) and waits for its listeners.

    Memory is measured on a fresh process: a long-lived single-process server keeps freed heap
    from earlier tests, which would make later sessions look free.
    """
    sh = os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers.sh")
    for action in ("stop", "start"):
        try:
            p = subprocess.run([sh, action, server], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise StepError(f"servers.sh {action} {server} timed out")
        if p.returncode != 0:
            raise StepError(f"servers.sh {action} {server} failed: {(p.stderr or p.stdout).strip()[-300:]}")
    for proto in ("ftp", "sftp"):
        if proto in SERVER_INFO[server]:
            why = probe(SERVER_INFO[server][proto], proto, wait=60)
            if why:
                raise StepError(f"{server} {proto} did not come back after a restart: {why}")


# ----------------------------------------------------------------------------------------
# clients

class StepError(Exception):
    pass


def password():
    with open(os.path.join(BASE, "password")) as f:
        return f.read().strip()


def key_path():
    return os.path.join(BASE, "ssh", "client_ed25519")


def run(cmd, timeout=None, **kw):
    """Runs a client; returns (seconds, stdout). Raises StepError on failure or timeout."""
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or STEP_TIMEOUT, **kw)
    except subprocess.TimeoutExpired:
        raise StepError(f"{os.path.basename(cmd[0])} timed out after {timeout or STEP_TIMEOUT}s")
    dt = time.monotonic() - t0
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise StepError(f"{os.path.basename(cmd[0])} exited {p.returncode}: {' | '.join(tail)}")
    return dt, p.stdout


def netrc():
    path = os.path.join(BASE, "client", "netrc")
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"machine 127.0.0.1 login {USER} password {password()}\n")
    return path


def curl(port, tls, args):
    cmd = ["curl", "-sS", "--fail", "--netrc-file", netrc(), "--max-time", str(STEP_TIMEOUT)]
    if tls:
        cmd += ["--ssl-reqd", "-k"]
    return run(cmd + args(f"ftp://127.0.0.1:{port}/"))


def sftp_cmd(port, batch, cipher="aes128-gcm@openssh.com"):
    return ["sftp", "-q", "-b", batch, "-P", str(port), "-i", key_path(), "-F", "/dev/null",
            "-c", cipher, "-o", f"KexAlgorithms={SFTP_KEX}",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-o", f"ConnectTimeout={SESSION_TIMEOUT}", "-o", "ServerAliveInterval=30",
            f"{USER}@127.0.0.1"]


def sftp_batch(port, lines, cipher="aes128-gcm@openssh.com"):
    path = os.path.join(BASE, "client", "batch.sftp")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return run(sftp_cmd(port, path, cipher))


def lftp(port, command):
    path = os.path.join(BASE, "client", "script.lftp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join([
            "set cmd:fail-exit yes",
            "set ftp:ssl-allow no",              # plain FTP; lftp's GnuTLS is not what is measured
            "set net:timeout 30",
            "set net:max-retries 2",
            "set net:reconnect-interval-base 1",
            "set ftp:use-pret no",               # PRET (Pure-FTPd) is pointless on loopback
            "set ftp:use-site-chmod no",         # no SITE CHMOD fix-ups (also mirror --no-perms);
            "set ftp:use-site-utime no",         # lftp still sends MFMT after each upload to servers
            "set ftp:use-site-utime2 no",        # whose FEAT lists it (4.9 has no switch for that)
            "set mirror:set-permissions no",
            f"open -u {USER},{password()} ftp://127.0.0.1:{port}",
            command,
            "quit",
        ]) + "\n")
    return run(["lftp", "-f", path])


def count_files(path):
    n = 0
    for _root, _dirs, files in os.walk(path):
        n += len(files)
    return n


def clear_dir(path):
    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass


def ftp_login(port):
    f = ftplib.FTP(timeout=SESSION_TIMEOUT)
    f.connect("127.0.0.1", port)
    f.login(USER, password())
    return f


_PKEY = None


def load_pkey():
    """Imports paramiko and loads the client key once (before forking client processes)."""
    import paramiko
    global _PKEY
    if _PKEY is None:
        _PKEY = paramiko.Ed25519Key.from_private_key_file(key_path())
    return _PKEY


def ssh_connect(port, open_sftp=True):
    import paramiko
    load_pkey()
    sock = socket.create_connection(("127.0.0.1", port), timeout=SESSION_TIMEOUT)
    t = paramiko.Transport(sock)
    t.banner_timeout = t.auth_timeout = t.handshake_timeout = SESSION_TIMEOUT
    opts = t.get_security_options()
    # the same kex as the OpenSSH runs (curve25519-sha256@libssh.org is its older name)
    opts.kex = ("curve25519-sha256@libssh.org",)
    opts.ciphers = tuple(c for c in ("aes128-gcm@openssh.com", "aes128-ctr") if c in opts.ciphers)
    try:
        t.start_client(timeout=SESSION_TIMEOUT)
        t.auth_publickey(USER, _PKEY)
        sftp = paramiko.SFTPClient.from_transport(t) if open_sftp else None
        if sftp is not None:
            sftp.get_channel().settimeout(SESSION_TIMEOUT)
    except Exception:
        t.close()
        raise
    return t, sftp


def ftp_session(port):
    f = ftp_login(port)
    try:
        lines = []
        f.retrlines("LIST sess", lines.append)
        if not lines:
            raise StepError("empty LIST")
        buf = bytearray()
        f.retrbinary(f"RETR {SESS_FILE}", buf.extend)
        if len(buf) != SESS_FILE_SIZE:
            raise StepError(f"RETR got {len(buf)} bytes")
        f.quit()
    finally:
        f.close()


def sftp_session(port):
    t, sftp = ssh_connect(port)
    try:
        if not sftp.listdir("sess"):
            raise StepError("empty listing")
        with sftp.open(SESS_FILE, "rb") as fh:
            data = fh.read()
        if len(data) != SESS_FILE_SIZE:
            raise StepError(f"read {len(data)} bytes")
        sftp.close()
    finally:
        t.close()


def _session_worker(kind, port, nthreads, t_start, queue):
    fn = ftp_session if kind == "ftp" else sftp_session
    out = []
    lock = threading.Lock()

    def one():
        delay = t_start - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t0 = time.monotonic()
        err = ""
        try:
            fn(port)
        except Exception as e:  # noqa: BLE001 -- every failure is one error of the run
            err = f"{type(e).__name__}: {e}"[:200]
        with lock:
            out.append((err, t0, time.monotonic()))

    threads = [threading.Thread(target=one, daemon=True) for _ in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(STEP_TIMEOUT)
    with lock:
        queue.put(list(out))


def concurrent_sessions(kind, port, n):
    """n clients start together, each does one session.

    Returns (sessions/s, p99 ms, errors, sample error, client CPU ms per session). The rate is
    successful sessions over the time from the common start to the end of the last successful
    one (a failed session that waits for its timeout does not stretch it; errors are counted apart).
    """
    import resource
    if kind == "sftp":
        load_pkey()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    nprocs = max(1, min(CLIENT_PROCS, n))
    share = [n // nprocs + (1 if i < n % nprocs else 0) for i in range(nprocs)]
    t_start = time.monotonic() + 1.0 + n * 0.002
    procs = [ctx.Process(target=_session_worker, args=(kind, port, k, t_start, queue)) for k in share]
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + STEP_TIMEOUT + 30
    for _ in procs:
        try:
            results.extend(queue.get(timeout=max(1, deadline - time.monotonic())))
        except Exception:  # noqa: BLE001 -- queue.Empty: a worker hung; its sessions count as errors
            break
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join()
    missing = n - len(results)
    errors = [r[0] for r in results if r[0]] + ["no result (client hung)"] * missing
    ok = [r for r in results if not r[0]]
    end = max((r[2] for r in ok), default=time.monotonic())
    wall = max(end - t_start, 1e-6)
    lat = sorted((r[2] - r[1]) * 1000 for r in ok)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_ms = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) * 1000 / n
    return len(ok) / wall, p99, len(errors), (errors[0] if errors else ""), client_ms


# ----------------------------------------------------------------------------------------
# the measurements

class Metric:
    def __init__(self, key, title, unit, better, proto, agg="median"):
        self.key, self.title, self.unit, self.better, self.proto, self.agg = key, title, unit, better, proto, agg


class Bench:
    def __init__(self):
        self.metrics = []          # ordered Metric list
        self.values = {}           # key -> server -> [values]
        self.failed = {}           # key -> server -> message
        self.na = {}               # key -> server -> reason
        self.notes = []
        self.down = {}             # (server, proto) -> message
        self.client_cpu = {}       # (server, proto) -> [client CPU ms per session]
        self.steal = {}            # key -> server -> [% of CPU time stolen by the hypervisor]
        self.limits = {}           # what disk_limits measured
        self.commit_samples = []   # the per-file commit's files/s, before each durable small-file round

    def metric(self, *a, **kw):
        m = Metric(*a, **kw)
        self.metrics.append(m)
        self.values.setdefault(m.key, {})
        return m

    def servers(self, proto, uploads=False):
        """The servers that speak `proto`; those that take part in upload rows only
        (dropgate-cache) when `uploads`."""
        return [s for s in SERVERS if proto in SERVER_INFO.get(s, {})
                and (uploads or not SERVER_INFO[s].get("uploads_only"))]

    def reachable(self, server, proto):
        key = (server, proto)
        if key not in self.down:
            self.down[key] = probe(SERVER_INFO[server][proto], proto)
        return self.down[key] is None

    def record(self, key, server, fn):
        """fn() -> value or dict key->value; a StepError/any exception marks the cell failed."""
        proto = next(m.proto for m in self.metrics if m.key == key)
        if not self.reachable(server, proto):
            self.failed.setdefault(key, {}).setdefault(server, f"{proto} listener down: {self.down[(server, proto)]}")
            return
        if server in self.failed.get(key, {}) or server in self.na.get(key, {}):
            return
        # Every step starts with no dirty data in the page cache: otherwise a server that
        # syncs (dropgate's durable mode) waits behind the write-back of whatever the steps
        # before it left unsynced, and any server shares the CPU and the disk with the
        # flusher writing back what the previous step's client downloaded (after unFTP's
        # 90-second small-file round, the files of its last 30 s).
        os.sync()
        if key in BULK_UPLOAD_KEYS:
            prime_page_cache()
        try:
            before = cpu_times()
            try:
                v = fn()
            finally:
                stolen = steal_pct(before, cpu_times())
                settle(server)
        except NotSupported as e:
            self.na.setdefault(key, {})[server] = str(e)
            return
        except Exception as e:  # noqa: BLE001 -- recorded as a failed cell, the run goes on
            msg = str(e) or type(e).__name__
            say(f"   {server}: {key} FAILED: {msg}")
            self.failed.setdefault(key, {})[server] = msg
            return
        items = v if isinstance(v, dict) else {key: v}
        for k, val in items.items():
            self.values.setdefault(k, {}).setdefault(server, []).append(val)
            self.steal.setdefault(k, {}).setdefault(server, []).append(stolen)
        shown = ", ".join(f"{k}={val if isinstance(val, int) else fmt(val)}" for k, val in items.items())
        say(f"   {server}: {shown} (CPU steal {stolen:.0f}%)")

    def mark_failed_group(self, keys, server):
        """Copy a failure of the first key of a multi-value measurement to its other keys."""
        first = self.failed.get(keys[0], {}).get(server)
        if first:
            for k in keys[1:]:
                self.failed.setdefault(k, {})[server] = first
        na = self.na.get(keys[0], {}).get(server)
        if na:
            for k in keys[1:]:
                self.na.setdefault(k, {})[server] = na


class NotSupported(Exception):
    pass


# A step with this much CPU steal is flagged in the notes.
STEAL_WARN = 10


def cpu_times():
    """(all CPU time, stolen CPU time) in ticks since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return sum(fields[:8]), (fields[7] if len(fields) > 7 else 0)


def steal_pct(before, after):
    """Share of the machine's CPU time the hypervisor gave to other guests meanwhile: on a
    shared host a step with much steal measured the neighbours as much as the server."""
    total = after[0] - before[0]
    return 100.0 * (after[1] - before[1]) / total if total > 0 else 0.0


def probe(port, proto, wait=0.0):
    """None when the listener answers with its greeting, else the reason."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.settimeout(10)
                greeting = s.recv(256)
            expect = b"220" if proto == "ftp" else b"SSH-"
            if greeting.startswith(expect):
                return None
            why = f"unexpected greeting {greeting[:40]!r}"
        except OSError as e:
            why = f"port {port}: {e.strerror or e}"
        if time.monotonic() >= deadline:
            return why
        time.sleep(0.5)


_SSH_CIPHERS = {}


def ssh_ciphers(port):
    """The client-to-server ciphers the SSH server on port offers (name-list of its KEXINIT),
    or None when that cannot be read. Looked up once per port."""
    if port in _SSH_CIPHERS:
        return _SSH_CIPHERS[port]
    offered = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.settimeout(10)
            f = s.makefile("rb")
            s.sendall(b"SSH-2.0-bench_probe\r\n")
            while True:  # a server may send other lines before its version
                line = f.readline(512)
                if not line or line.startswith(b"SSH-"):
                    break
            length = int.from_bytes(f.read(4), "big")
            packet = f.read(min(length, 65536))
            # byte padding length, byte SSH_MSG_KEXINIT (20), 16 bytes cookie, then the name-lists
            # kex, host key, ciphers client-to-server, ...
            if line and len(packet) > 18 and packet[1] == 20:
                pos, lists = 18, []
                for _ in range(3):
                    n = int.from_bytes(packet[pos:pos + 4], "big")
                    lists.append(packet[pos + 4:pos + 4 + n].decode("ascii", "replace"))
                    pos += 4 + n
                offered = lists[2].split(",")
    except (OSError, ValueError, IndexError):
        offered = None
    _SSH_CIPHERS[port] = offered
    return offered


def fmt(v):
    if isinstance(v, str):
        return v
    if v != v:  # NaN
        return "—"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


# Seed of the servers' order in rounds 2 and later (see round_orders).
ORDER_SEED = os.environ.get("ORDER_SEED", "16")


def round_orders(servers, rounds):
    """The order of the servers in each round. Round 1 keeps the given order; each later
    round is the shuffle (seeded, so a rerun repeats it) in which the fewest servers follow
    the same server as in an earlier round, the previous round's last counting as the first's
    predecessor. A server measured right after another inherits what that one leaves behind
    (session 39: the FTP small-file download round right after unFTP's 90-second round ran
    0.7x, the same server 0.97x without unFTP); a fixed order puts that on one server in
    every round, a changing one spreads it over the rounds, where the median sees it."""
    if not servers:
        return [[] for _ in range(rounds)]
    rng = random.Random(f"{ORDER_SEED}:{' '.join(servers)}")
    orders, seen, last = [list(servers)], set(), None
    for r in range(rounds):
        if r > 0:
            best = None
            for _ in range(500):
                cand = list(servers)
                rng.shuffle(cand)
                repeats = len(set(zip([last] + cand[:-1], cand)) & seen)
                if best is None or repeats < best[0]:
                    best = (repeats, cand)
                if repeats == 0:
                    break
            orders.append(best[1])
        order = orders[r]
        seen |= set(zip([last] + order[:-1], order))
        last = order[-1]
    return orders[:rounds]


def rounds_over(servers):
    for r, order in enumerate(round_orders(servers, ROUNDS), 1):
        for s in order:
            yield r, s


def bench_bulk(b, tls):
    proto = "ftp"
    name = "FTPS (explicit TLS, PROT P)" if tls else "FTP"
    pre = "ftps" if tls else "ftp"
    size = BIG_MB * MiB
    flags = "curl --ssl-reqd -k" if tls else "curl"
    dl = b.metric(f"{pre}_dl", f"{name} download {human_size(size)}, {flags}", "MB/s", "higher", proto)
    ul = b.metric(f"{pre}_ul", f"{name} upload {human_size(size)}, {flags}", "MB/s", "higher", proto)
    servers = b.servers(proto)
    client_big = os.path.join(BASE, "client", "big.bin")

    def download(port):
        dt, out = curl(port, tls, lambda url: ["-o", "/dev/null", "-w", "%{size_download}", url + "big.bin"])
        if int(float(out.strip() or 0)) != size:
            raise StepError(f"downloaded {out.strip()} bytes, expected {size}")
        return size / dt / 1e6

    def upload(server, port, r):
        home = SERVER_INFO[server]["home"]
        name = f"big-{pre}-{r}.bin"
        try:
            dt, _ = curl(port, tls, lambda url: ["-T", client_big, url + "up/" + name])
            got = os.path.getsize(os.path.join(home, "up", name)) if os.path.exists(os.path.join(home, "up", name)) else -1
            if got != size:
                raise StepError(f"uploaded file has {got} bytes, expected {size}")
            return size / dt / 1e6
        finally:
            clear_dir(os.path.join(home, "up"))

    say(f"-- {dl.title}")
    for _r, s in rounds_over(servers):
        b.record(dl.key, s, lambda s=s: download(SERVER_INFO[s]["ftp"]))
    say(f"-- {ul.title}")
    for r, s in rounds_over(b.servers(proto, uploads=True)):
        b.record(ul.key, s, lambda s=s, r=r: upload(s, SERVER_INFO[s]["ftp"], r))


def bench_sftp(b):
    size = BIG_MB * MiB
    client_big = os.path.join(BASE, "client", "big.bin")
    servers = b.servers("sftp")
    for cipher, short in (("aes128-gcm@openssh.com", "aes128-gcm"), ("chacha20-poly1305@openssh.com", "chacha20-poly1305")):
        dl = b.metric(f"sftp_dl_{short}", f"SFTP download {human_size(size)}, OpenSSH sftp, {short}", "MB/s", "higher", "sftp")
        ul = b.metric(f"sftp_ul_{short}", f"SFTP upload {human_size(size)}, OpenSSH sftp, {short}", "MB/s", "higher", "sftp")

        def offered(port, cipher=cipher):
            ciphers = ssh_ciphers(port)
            if ciphers is not None and cipher not in ciphers:
                raise NotSupported(f"the server does not offer {cipher} (its ciphers: {','.join(ciphers)})")

        def download(port, cipher=cipher):
            offered(port, cipher)
            dt, _ = sftp_batch(port, ["get big.bin /dev/null"], cipher)
            return size / dt / 1e6

        def upload(server, port, r, cipher=cipher, short=short):
            offered(port, cipher)
            home = SERVER_INFO[server]["home"]
            name = f"big-sftp-{short}-{r}.bin"
            try:
                dt, _ = sftp_batch(port, [f"put {client_big} up/{name}"], cipher)
                p = os.path.join(home, "up", name)
                got = os.path.getsize(p) if os.path.exists(p) else -1
                if got != size:
                    raise StepError(f"uploaded file has {got} bytes, expected {size}")
                return size / dt / 1e6
            finally:
                clear_dir(os.path.join(home, "up"))

        say(f"-- {dl.title}")
        for _r, s in rounds_over(servers):
            b.record(dl.key, s, lambda s=s, f=download: f(SERVER_INFO[s]["sftp"]))
        say(f"-- {ul.title}")
        for r, s in rounds_over(b.servers("sftp", uploads=True)):
            b.record(ul.key, s, lambda s=s, r=r, f=upload: f(s, SERVER_INFO[s]["sftp"], r))


def bench_small(b):
    n = SMALL_FILES
    what = f"{n:,} files x {SMALL_KB} KiB"
    client_small = os.path.join(BASE, "client", "small")
    dl_dir = os.path.join(BASE, "client", "dl")

    def check_upload(server, sub):
        got = count_files(os.path.join(SERVER_INFO[server]["home"], "up", sub))
        if got != n:
            raise StepError(f"{got} files arrived, expected {n}")

    def check_download(sub):
        got = count_files(os.path.join(dl_dir, sub))
        if got != n:
            raise StepError(f"{got} files downloaded, expected {n}")

    # Every step writes into a folder of its own (named for the server: the peers share one
    # home) and nothing is deleted until the whole group has run. ext4 skips every inode freed
    # in the last minute when it allocates one, a buffer-cache lookup each: deleting a step's
    # 2,000 files right after it made the next step's creates pay for them (up to half of a
    # server's CPU per file, measured; docs/benchmarks.md, session 17), and how much depended
    # on which folders shared a block group.
    def ftp_up(server, par, r):
        sub = f"{server}-ftp-p{par}-{r}"
        dt, _ = lftp(SERVER_INFO[server]["ftp"], f"mirror -R --no-perms --parallel={par} {client_small} up/{sub}")
        check_upload(server, sub)
        return n / dt

    def ftp_down(server, par, r):
        sub = f"{server}-ftp-p{par}-{r}"
        dt, _ = lftp(SERVER_INFO[server]["ftp"], f"mirror --no-perms --parallel={par} small {os.path.join(dl_dir, sub)}")
        check_download(sub)
        return n / dt

    def sftp_up(server, r):
        # `put -r` asks for the REALPATH of its target before it creates it, and ProFTPD's
        # mod_sftp answers that only for a path that exists: every server gets the folders made
        # first (in the same session) and `put -r small up/SUB` then fills up/SUB/small
        sub = f"{server}-sftp-{r}"
        dt, _ = sftp_batch(SERVER_INFO[server]["sftp"],
                           [f"mkdir up/{sub}", f"mkdir up/{sub}/small", f"put -r {client_small} up/{sub}"])
        check_upload(server, f"{sub}/small")
        return n / dt

    def sftp_down(server, r):
        sub = f"{server}-sftp-{r}"
        dt, _ = sftp_batch(SERVER_INFO[server]["sftp"], [f"get -r small {os.path.join(dl_dir, sub)}"])
        check_download(sub)
        return n / dt

    try:
        measure_small(b, what, ftp_up, ftp_down, sftp_up, sftp_down)
    finally:
        clear_dir(dl_dir)
        for home in {SERVER_INFO[s]["home"] for s in b.servers("ftp", uploads=True) + b.servers("sftp", uploads=True)}:
            clear_dir(os.path.join(home, "up"))
        shutil.rmtree(os.path.join(BASE, "commit"), ignore_errors=True)


def measure_small(b, what, ftp_up, ftp_down, sftp_up, sftp_down):
    for par in (1, 8):
        up = b.metric(f"small_ftp_up_p{par}", f"{what} upload, FTP, lftp mirror -R --parallel={par}", "files/s", "higher", "ftp")
        down = b.metric(f"small_ftp_down_p{par}", f"{what} download, FTP, lftp mirror --parallel={par}", "files/s", "higher", "ftp")
        say(f"-- {up.title}")
        for r, s in rounds_over(b.servers("ftp", uploads=True)):
            if par == 1 and SERVER_INFO[s].get("mode") == "durable":
                commit_sample(b, r)
            b.record(up.key, s, lambda s=s, r=r, par=par: ftp_up(s, par, r))
        say(f"-- {down.title}")
        for r, s in rounds_over(b.servers("ftp")):
            b.record(down.key, s, lambda s=s, r=r, par=par: ftp_down(s, par, r))
    up = b.metric("small_sftp_up", f"{what} upload, SFTP, OpenSSH sftp put -r", "files/s", "higher", "sftp")
    down = b.metric("small_sftp_down", f"{what} download, SFTP, OpenSSH sftp get -r", "files/s", "higher", "sftp")
    say(f"-- {up.title}")
    for r, s in rounds_over(b.servers("sftp", uploads=True)):
        b.record(up.key, s, lambda s=s, r=r: sftp_up(s, r))
    say(f"-- {down.title}")
    for r, s in rounds_over(b.servers("sftp")):
        b.record(down.key, s, lambda s=s, r=r: sftp_down(s, r))


def commit_sample(b, r):
    """The per-file commit's rate (disk_limits' small_sync) right before a durable server's
    one-at-a-time small-file round: the disk then is in the state that round meets, which it
    may not be when disk_limits runs after every group (session 40: dropgate's round ran
    0.86x "peer + commit" in a full run, 1.09x with the small-file group alone). The files
    stay until the group ends, as the servers' do."""
    d = os.path.join(BASE, "commit", str(r))
    os.makedirs(d, exist_ok=True)
    os.sync()
    rate = commit_files(d, True, keep=True)
    b.commit_samples.append(rate)
    say(f"   (the per-file commit before round {r}: {rate:.0f} files/s)")


def bench_sessions(b):
    n = SESSIONS
    for proto, client, auth in (("ftp", "python ftplib", "password"),
                                ("sftp", "paramiko", "ed25519 key, curve25519")):
        steps = "login+LIST+RETR 4 KiB+QUIT" if proto == "ftp" else "login+readdir+read 4 KiB+close"
        base = f"{proto.upper()} sessions, {n} concurrent ({steps}; {client}, {auth})"
        rate = b.metric(f"sess_{proto}_rate", base, "sessions/s", "higher", proto)
        p99 = b.metric(f"sess_{proto}_p99", f"{proto.upper()} sessions: p99 latency", "ms", "lower", proto)
        errs = b.metric(f"sess_{proto}_errors", f"{proto.upper()} sessions: errors (sum of rounds)", "count", "lower", proto, agg="sum")

        def measure(server, proto=proto, rate=rate, p99=p99, errs=errs):
            r, p, e, sample, client_ms = concurrent_sessions(proto, SERVER_INFO[server][proto], n)
            b.client_cpu.setdefault((server, proto), []).append(client_ms)
            if e:
                b.notes.append(f"{label(server, proto)} {proto.upper()} sessions: {e} error(s), e.g. {sample}")
            if e == n:
                raise StepError(f"every session failed, e.g. {sample}")
            return {rate.key: r, p99.key: p, errs.key: e}

        say(f"-- {base}")
        for _r, s in rounds_over(b.servers(proto)):
            b.record(rate.key, s, lambda s=s, measure=measure: measure(s))
        for s in b.servers(proto):
            b.mark_failed_group([rate.key, p99.key, errs.key], s)


def open_many(opener, n, workers=16):
    """Opens n sessions with a bounded number of concurrent logins; returns (sessions, errors)."""
    done, errors = [], []
    lock = threading.Lock()

    def one(_):
        try:
            sess = opener()
            with lock:
                done.append(sess)
        except Exception as e:  # noqa: BLE001
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, range(n)))
    return done, errors


def settle_mem(server, seconds=2.0):
    time.sleep(seconds)
    return server_mem(server)


def close_all(proto, sessions):
    def close(sess):
        try:
            if proto == "ftp":
                sess.close()
            else:
                sess[0].close()
        except Exception:  # noqa: BLE001
            pass
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(close, sessions))


def bench_memory(b):
    for proto, n in (("ftp", MEM_FTP_SESSIONS), ("sftp", MEM_SFTP_SESSIONS)):
        what = "logged in" if proto == "ftp" else "key login, sftp subsystem open"
        per = b.metric(f"mem_{proto}_per_session", f"memory per idle {proto.upper()} session ({n} sessions, {what}); "
                       "PSS growth / sessions, after a warm-up", "kB", "lower", proto)
        total = b.metric(f"mem_{proto}_total", f"server memory with the {n} idle {proto.upper()} sessions (PSS, all processes)",
                         "MiB", "lower", proto)

        def measure(server, proto=proto, n=n, per=per, total=total):
            port = SERVER_INFO[server][proto]
            opener = (lambda: ftp_login(port)) if proto == "ftp" else (lambda: ssh_connect(port))
            restart(server)
            # Warm-up: the same kind of login burst, closed again, so that one-time growth (an
            # allocator keeping the scratch memory of concurrent password checks) is in the
            # baseline and the per-session figure is what each held session costs.
            warm, _ = open_many(opener, 32)
            close_all(proto, warm)
            before = settle_mem(server, 2.0)[0]
            sessions, errors = open_many(opener, n)
            try:
                if errors:
                    raise StepError(f"{len(errors)} of {n} sessions failed to open, e.g. {errors[0]}")
                after = settle_mem(server, 2.0)[0]
            finally:
                close_all(proto, sessions)
            return {per.key: (after - before) / n, total.key: after / 1024}

        say(f"-- {per.title}")
        for _r, s in rounds_over(b.servers(proto)):
            b.record(per.key, s, lambda s=s, measure=measure: measure(s))
        for s in b.servers(proto):
            b.mark_failed_group([per.key, total.key], s)


def bench_listing(b):
    n = LIST_FILES

    def ftp_list(server, verb):
        f = ftp_login(SERVER_INFO[server]["ftp"])
        f.sock.settimeout(STEP_TIMEOUT)
        count = 0

        def line(text):
            nonlocal count
            if verb == "LIST":
                if not text.startswith("total "):
                    count += 1
            elif "type=file" in text.lower():
                count += 1
        try:
            with PeakSampler(server) as ps:  # after the login: the listing's own cost
                t0 = time.monotonic()
                try:
                    f.retrlines(f"{verb} list", line)
                except ftplib.error_perm as e:
                    if verb == "MLSD" and str(e)[:3] in ("500", "501", "502", "504"):
                        raise NotSupported(f"MLSD not supported ({str(e).strip()})")
                    raise
                dt = time.monotonic() - t0
            f.quit()
        finally:
            f.close()
        if count != n:
            raise StepError(f"{verb} returned {count} entries, expected {n}")
        return dt, ps.peak, ps.peak - ps.start

    def sftp_list(server):
        with PeakSampler(server) as ps:  # includes the session set-up
            dt, out = sftp_batch(SERVER_INFO[server]["sftp"], ["ls -1 list"])
        count = sum(1 for line in out.splitlines() if "entry-" in line)
        if count != n:
            raise StepError(f"ls returned {count} entries, expected {n}")
        return dt, ps.peak, ps.peak - ps.start

    runs = [("ftp", "LIST", f"FTP LIST of a folder of {n:,} files (ftplib)", lambda s: ftp_list(s, "LIST")),
            ("ftp", "MLSD", f"FTP MLSD of a folder of {n:,} files (ftplib)", lambda s: ftp_list(s, "MLSD")),
            ("sftp", "readdir", f"SFTP readdir of a folder of {n:,} files (OpenSSH sftp ls -1)", sftp_list)]
    for proto, short, title, fn in runs:
        t = b.metric(f"list_{short.lower()}_time", f"{title}: time", "s", "lower", proto)
        pk = b.metric(f"list_{short.lower()}_peak", f"{title}: peak server memory (PSS, all processes)", "MiB", "lower", proto)
        gr = b.metric(f"list_{short.lower()}_growth", f"{title}: peak growth over the PSS before it", "MiB", "lower", proto)

        def measure(server, fn=fn, t=t, pk=pk, gr=gr):
            restart(server)
            dt, peak, growth = fn(server)
            return {t.key: dt, pk.key: peak / 1024, gr.key: growth / 1024}

        say(f"-- {title}")
        for _r, s in rounds_over(b.servers(proto)):
            b.record(t.key, s, lambda s=s, measure=measure: measure(s))
        for s in b.servers(proto):
            b.mark_failed_group([t.key, pk.key, gr.key], s)


# ----------------------------------------------------------------------------------------
# report

def aggregate(m, vals):
    if m.agg == "sum":
        return sum(vals)
    return statistics.median(vals)


# The rows durable_uploads plays a part in (dropgate-cache is measured in these only).
UPLOAD_KEYS = {"ftp_ul", "ftps_ul", "sftp_ul_aes128-gcm", "sftp_ul_chacha20-poly1305",
               "small_ftp_up_p1", "small_ftp_up_p8", "small_sftp_up"}
BULK_UPLOAD_KEYS = {"ftp_ul", "ftps_ul", "sftp_ul_aes128-gcm", "sftp_ul_chacha20-poly1305"}


def prime_page_cache():
    """Writes a file of the big upload's size into the data's filesystem and deletes it, so
    that the upload measured next gets page-cache pages just freed, whoever ran before it.

    On these VMs the host takes back guest memory that stays free for a moment (free page
    reporting), and the first touch of such a page costs a host fault: a buffered write of
    1 GiB ran at ~350 MB/s into fresh pages and ~4,000 MB/s into pages freed a moment before
    (docs/benchmarks.md, session 14). Without this, each server's 1 GiB upload ran as fast as
    the *previous* step left memory: after a server that wrote around the page cache
    (dropgate's durable mode) the next one found no recycled pages. On bare metal page
    allocation is cheap either way; this gives every server that condition."""
    path = os.path.join(BASE, "prime.bin")
    block = b"\0" * MiB
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(BIG_MB + BIG_MB // 16):
            os.write(fd, block)
    finally:
        os.close(fd)
        os.unlink(path)


def cell(b, m, server):
    if server in b.failed.get(m.key, {}):
        return "FAIL", None
    if server in b.na.get(m.key, {}):
        return "n/a", None
    vals = b.values.get(m.key, {}).get(server)
    if not vals:
        return "—", None
    v = aggregate(m, vals)
    return (str(int(v)) if m.unit == "count" else fmt(v)), v


def cmd_out(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "?"


def versions():
    v = {}
    dpkg = lambda pkg: cmd_out(["dpkg-query", "-W", "-f", "${Version}", pkg])  # noqa: E731
    if "dropgate" in SERVERS:
        v["dropgate"] = cmd_out([os.environ.get("DROPGATE_BIN", "dropgate"), "--version"])
    if "vsftpd" in SERVERS:
        v["vsftpd"] = "vsftpd " + dpkg("vsftpd")
    if "pureftpd" in SERVERS:
        debs = [d for d in os.listdir(os.path.join(BASE, "pkg")) if d.startswith("pure-ftpd_")] if os.path.isdir(os.path.join(BASE, "pkg")) else []
        v["pureftpd"] = "pure-ftpd " + (debs[0].split("_")[1] if debs else "?")
    if "proftpd" in SERVERS:
        debs = [d for d in os.listdir(os.path.join(BASE, "pkg")) if d.startswith("proftpd-core_")] if os.path.isdir(os.path.join(BASE, "pkg")) else []
        v["proftpd"] = "proftpd " + (debs[0].split("_")[1] if debs else "?") + " (mod_tls, mod_sftp)"
    if "unftp" in SERVERS:
        # "unFTP 0.16.0" and build details on later lines, among them " - libunftp:\tv0.24.0"
        try:
            out = subprocess.run([os.environ.get("UNFTP_BIN", "unftp"), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        lib = re.search(r"libunftp:\s*v?(\S+)", out)
        v["unftp"] = (out.strip().splitlines() or ["unFTP ?"])[0] + (f" (libunftp {lib.group(1)})" if lib else "")
    if "sshd" in SERVERS:
        v["sshd"] = "openssh-server " + dpkg("openssh-server")
    try:
        import paramiko
        pv = paramiko.__version__
    except ImportError:
        pv = "?"
    v["clients"] = "; ".join([cmd_out(["curl", "--version"]).split(" (")[0], re.sub(r"^LFTP \| Version ([^ ]+).*", r"lftp \1", cmd_out(["lftp", "--version"])),
                              cmd_out(["ssh", "-V"]).split(",")[0], f"Python {platform.python_version()}", f"paramiko {pv}"])
    return v


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except OSError:
        mem_kb = 0
    return f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1024 / 1024:.1f} GiB RAM, Linux {platform.release()}"


def password_note():
    """Who checks the FTP password against what."""
    parts = []
    shadow = [label(s) for s in SERVERS if s in ("vsftpd", "pureftpd", "proftpd", "sshd")]
    if shadow:
        parts.append(f"{', '.join(shadow)} check /etc/shadow ({os.environ.get('PEER_HASH_NAME', '?')})")
    if "unftp" in SERVERS:
        n = env_int("UNFTP_PBKDF2_ITER", 70000)
        parts.append("unFTP its JSON user file (" + (f"PBKDF2-HMAC-SHA256, {n:,} iterations" if n > 0 else "plain text") + ")")
    if "dropgate" in SERVERS:
        parts.append("dropgate its argon2id hash")
    return ", ".join(parts) or "—"


def ftp_features(port):
    """The FEAT lines of an FTP server after login (upper-case first words), or None."""
    try:
        f = ftp_login(port)
    except (OSError, EOFError, ftplib.Error):
        return None
    try:
        reply = f.sendcmd("FEAT")
        f.quit()
    except (OSError, EOFError, ftplib.Error):
        return None
    finally:
        f.close()
    return {line.split()[0].upper() for line in reply.splitlines()[1:-1] if line.strip()}


def mfmt_note():
    yes, no = [], []
    for s in SERVERS:
        if "ftp" in SERVER_INFO[s]:
            feats = ftp_features(SERVER_INFO[s]["ftp"])
            if feats is not None:
                (yes if "MFMT" in feats else no).append(label(s))
    return ", ".join(yes or ["none"]) + ("; not " + ", ".join(no) if no else "")


def report(b, started, finished):
    dgs = [s for s in SERVERS if s.startswith("dropgate")] or ["dropgate"]
    peers = [s for s in SERVERS if not s.startswith("dropgate")]
    lines = [
        f"## dropgate vs peers — {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}"
        f"{' (--quick smoke run: sizes too small to compare)' if os.environ.get('QUICK') == '1' else ''}",
        "",
        f"Medians of {ROUNDS} round(s), servers measured in turn (round 1 in the listed order, later rounds in a seeded shuffle that changes who follows whom) on 127.0.0.1 with the same "
        "account, data and clients. MB = 10^6 bytes. **Ratio = dropgate / peer**: for MB/s, files/s and "
        "sessions/s higher is better, so a ratio above 1 favours dropgate; for ms, s, kB, MiB and error "
        "counts lower is better, so a ratio below 1 favours dropgate.",
        "",
        "**dropgate mode**: `durable` answers an upload only once its data, rename and folder are on disk "
        "(`durable_uploads = true`, the default); `page cache` answers from the page cache "
        "(`durable_uploads = false`), as the peers do; rows where the setting plays no part say `either`.",
        "",
        "| measurement | unit (better) | dropgate mode | dropgate | peer | peer value | dropgate / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, dg in ((m, dg) for m in b.metrics for dg in dgs):
        servers = [s for s in SERVERS if m.proto in SERVER_INFO[s]]
        measured_cache = m.key in b.values and "dropgate-cache" in b.values[m.key] \
            or "dropgate-cache" in b.failed.get(m.key, {}) or "dropgate-cache" in b.na.get(m.key, {})
        if dg == "dropgate-cache" and not measured_cache:
            continue
        if m.key in UPLOAD_KEYS or measured_cache:
            mode = SERVER_INFO.get(dg, {}).get("mode", "—")
        else:
            mode = "either"
        dg_txt, dg_v = cell(b, m, dg) if dg in SERVERS else ("not run", None)
        row_peers = [s for s in peers if s in servers] or [None]
        for p in row_peers:
            if p is None:
                p_label, p_txt, p_v = "—", "—", None
            else:
                p_label = label(p, m.proto)
                p_txt, p_v = cell(b, m, p)
            if dg_v is not None and p_v is not None and p_v != 0 and dg_v == dg_v and p_v == p_v:
                r = dg_v / p_v
                ratio = f"{r:.0f}" if abs(r) >= 100 else f"{r:.3g}" if abs(r) < 0.1 else f"{r:.2f}"
            else:
                ratio = "—"
            lines.append(f"| {m.title} | {m.unit} ({m.better}) | {mode} | {dg_txt} | {p_label} | {p_txt} | {ratio} |")
    lines += limits_table(b)
    v = versions()
    lines += ["", "Notes:", "",
              f"- Machine: {machine()}; client and servers share the CPUs.",
              "- Servers: " + "; ".join(v[s] for s in SERVERS if s in v)
              + (f" (dropgate built from {os.environ['BENCH_COMMIT']})" if "dropgate" in SERVERS and os.environ.get("BENCH_COMMIT") else "")
              + ".",
              f"- Clients: {v['clients']}.",
              f"- Sizes: big file {human_size(BIG_MB * MiB)}, {SMALL_FILES} small files of {SMALL_KB} KiB, "
              f"{SESSIONS} concurrent sessions, {MEM_FTP_SESSIONS} idle FTP / {MEM_SFTP_SESSIONS} idle SFTP sessions, "
              f"{LIST_FILES} listing entries; run took {(finished - started) / 60:.1f} min.",
              f"- Passwords: {password_note()}; FTP logins pay that cost, SFTP logins use the ed25519 key.",
              f"- SFTP: kex forced to {SFTP_KEX} for OpenSSH sftp and paramiko; bulk runs name the cipher, "
              "small files and listing use aes128-gcm; paramiko sessions use aes128-gcm (or aes128-ctr).",
              "- FTP small files: lftp with TLS, PRET and SITE CHMOD/UTIME off; it still sends MFMT after each "
              f"upload to servers whose FEAT lists it ({mfmt_note()}).",
              "- Sessions/s = successful sessions / time from the common start to the end of the last successful "
              "one; failed sessions (e.g. connect timeouts on a full listen backlog) are counted as errors."
              + (" Client CPU per session (median): " + ", ".join(
                  f"{label(s, p)} {p.upper()} {statistics.median(v):.1f} ms"
                  for (s, p), v in b.client_cpu.items() if v) + "." if b.client_cpu else ""),
              "- Memory is PSS from /proc/PID/smaps_rollup summed over the server's whole process tree "
              "(per-session processes included)."]
    said = set()
    for kind, table in (("FAIL", b.failed), ("n/a", b.na)):
        for key, per in table.items():
            for s, msg in per.items():
                if (kind, s, msg) in said:
                    continue
                said.add((kind, s, msg))
                m = next((m for m in b.metrics if m.key == key), None)
                lines.append(f"- {kind} {label(s, m.proto if m else None)}: {m.title if m else key}: {msg}")
    steals = [(v, key, s) for key, per in b.steal.items() for s, vs in per.items() for v in vs]
    if steals:
        worst = max(steals)
        noisy = sum(1 for v, _, _ in steals if v >= STEAL_WARN)
        lines.append(
            f"- CPU steal (time the hypervisor gave other guests) during the measured steps: median "
            f"{statistics.median(v for v, _, _ in steals):.0f}%, max {worst[0]:.0f}% "
            f"({label(worst[2])}, {worst[1]}); {noisy} of {len(steals)} steps at "
            f"{STEAL_WARN}% or more" + (" -- compare such runs with care, or repeat them on a quiet host." if noisy else "."))
    seen = set()
    for note in b.notes:
        if note not in seen:
            seen.add(note)
            lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def limits_table(b):
    """dropgate's upload rows against what this machine allows, measured in the same run by
    disk_limits: `durable` 1 GiB uploads against one write + fdatasync and against a hashing
    receiver (whichever is lower binds), `page cache` ones against the hashing receiver (FTPS:
    the TLS receiver, which does not hash: a page-cache upload is hashed after its reply), and
    `durable` small files against the per-file commit with dropgate's two syncs."""
    lim = b.limits
    if not lim:
        return []
    rows = []
    # one at a time only: parallel uploads overlap their syncs, and SFTP's ciphers are not in
    # the plain-TCP receiver, so neither would be set against a real limit
    for key in ("ftp_ul", "ftps_ul", "small_ftp_up_p1", "small_sftp_up"):
        m = next((m for m in b.metrics if m.key == key), None)
        if m is None:
            continue
        for dg in (s for s in SERVERS if s.startswith("dropgate")):
            txt, v = cell(b, m, dg)
            if v is None:
                continue
            durable = SERVER_INFO[dg]["mode"] == "durable"
            extra = None
            if key.startswith("small"):
                if not durable:
                    # without syncs the file system is no limit (thousands of files/s): the
                    # target there is the best peer, in the table above
                    continue
                name, limit = "create + write + fdatasync + rename + folder fsync", lim["small_sync"]
                if lim.get("small_sync_group"):
                    # measured in the small-file group (before each durable FTP round): the
                    # disk as these rounds met it
                    name, limit = name + ", in the small-file group", lim["small_sync_group"]
                # One file at a time, a durable server cannot beat the fastest peer's per-file
                # time with this client (the protocol's round trips, the client's own work; the
                # peers answer from the page cache) plus the two syncs: both measured in this run.
                peer_values = (cell(b, m, s)[1] for s in SERVERS if not s.startswith("dropgate"))
                peers = [pv for pv in peer_values if pv is not None and pv > 0]
                if peers and limit > 0:
                    best = max(peers)
                    both = 1 / (1 / best + 1 / limit)
                    extra = (f"| {m.title} | {SERVER_INFO[dg]['mode']} | {txt} | the fastest peer's "
                             f"per-file time ({best:.0f} files/s) + the commit above | {both:.0f} | "
                             f"{v / both:.2f} |")
            elif durable:
                # hashed before its reply: the hashing receiver, or the disk if it is slower
                name, limit = (("loopback TLS receive + SHA-256 + write", lim["receive_tls_hash"])
                               if key == "ftps_ul" else
                               ("loopback receive + SHA-256 + write", lim["receive_hash"]))
                if lim["big_sync"] < limit:
                    name, limit = "write + one fdatasync", lim["big_sync"]
            elif key == "ftps_ul":
                # hashed after its reply
                name, limit = "loopback TLS receive + write", lim["receive_tls"]
            else:
                name, limit = "loopback receive + SHA-256 + write", lim["receive_hash"]
            if durable and not key.startswith("small") and lim.get("big_behind", 0) > 0:
                # what the disk takes the way dropgate writes durable uploads (written behind)
                d = lim["big_behind"]
                extra = (f"| {m.title} | {SERVER_INFO[dg]['mode']} | {txt} | write-behind + one "
                         f"fdatasync | {d:.0f} | {v / d:.2f} |")
            if not limit > 0:
                continue
            rows.append(f"| {m.title} | {SERVER_INFO[dg]['mode']} | {txt} | {name} | {limit:.0f} | "
                        f"{v / limit:.2f} |")
            if extra:
                rows.append(extra)
    if not rows:
        return []
    return ["", "dropgate's uploads against this machine's limits, measured in the same run (notes below):", "",
            "| measurement | dropgate mode | dropgate | limit | limit value | dropgate / limit |",
            "|---|---|---|---|---|---|", *rows]


def sync_file_range(fd, offset, length, flags):
    """sync_file_range(2), which Python's os module lacks."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    if libc.sync_file_range(fd, offset, length, flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def commit_files(d, sync, keep=False):
    """files/s of SMALL_FILES x SMALL_KB KiB created in folder `d` one at a time: create, write,
    rename, and with `sync` dropgate's fdatasync + folder fsync per file (its durable commit).
    The files are removed again (not timed) unless `keep`."""
    data = os.urandom(SMALL_KB * 1024)
    dirfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    t = time.perf_counter()
    for i in range(SMALL_FILES):
        tmp, final = os.path.join(d, f".t{i}"), os.path.join(d, f"f{i}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
        os.rename(tmp, final)
        if sync:
            os.fsync(dirfd)
        os.close(fd)
    dt = time.perf_counter() - t
    os.close(dirfd)
    if not keep:
        for i in range(SMALL_FILES):
            os.unlink(os.path.join(d, f"f{i}"))
    return SMALL_FILES / dt


def disk_limits(b):
    """Measures, on the filesystem that holds the servers' data, what durable uploads can reach
    at best: the rate of one big sequential write with and without a final fdatasync, and of
    the small-file commit dropgate performs (create, write, fdatasync, rename, fsync folder)
    with and without the two syncs. Reported as a note; the peers answer without syncing."""
    d = os.path.join(BASE, "limits")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    chunk = os.urandom(MiB)

    def big(sync, behind=False, direct=False):
        # behind: what dropgate does with a durable upload's 1 MiB chunks (crates/vfs/src/
        # writeback.rs): every 8 MiB its dirty pages are queued for writing and those more than
        # 32 MiB behind the end waited for and dropped from the page cache; then the one fdatasync.
        # direct: O_DIRECT writes (around the page cache) from an aligned buffer, as dropgate
        # wrote durable uploads until session 37; kept as a note, for comparing disks.
        path = os.path.join(d, "big")
        buf = chunk
        if direct:
            buf = mmap.mmap(-1, MiB)
            buf.write(chunk)
        else:
            prime_page_cache()  # as before every upload step
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0), 0o600)
        except OSError:
            if not direct:
                raise
            return 0.0  # the file system refuses O_DIRECT
        window, lag, settled = 8 * MiB, 32 * MiB, 0
        t = time.perf_counter()
        for i in range(BIG_MB):
            os.pwrite(fd, buf, i * MiB)
            end = (i + 1) * MiB
            if behind and end % window == 0:
                sync_file_range(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE
                upto = max(0, end - lag) // window * window
                if upto > settled:
                    sync_file_range(fd, settled, upto - settled, 1 | 2 | 4)  # WAIT_BEFORE|WRITE|WAIT_AFTER
                    os.posix_fadvise(fd, settled, upto - settled, os.POSIX_FADV_DONTNEED)
                    settled = upto
        if sync:
            os.fdatasync(fd)
        os.close(fd)
        dt = time.perf_counter() - t
        os.unlink(path)
        os.sync()
        return BIG_MB * MiB / dt / 1e6

    def small(sync):
        return commit_files(d, sync)

    def sha256():
        # OpenSSL's SHA-256 (hashlib), one core, 1 MiB updates: what hashing an upload
        # while it streams can reach at best on this CPU (dropgate answers an upload only
        # with its SHA-256; the peers do not hash).
        h = hashlib.sha256()
        t = time.perf_counter()
        for _ in range(BIG_MB):
            h.update(chunk)
        h.hexdigest()
        return BIG_MB * MiB / (time.perf_counter() - t) / 1e6

    def receive(hashing, tls=False):
        # The least a server does to take an upload over loopback: one process sends the file
        # with sendfile (less CPU than curl), another receives it in 1 MiB reads and writes it
        # (pwrite) into the data's filesystem, hashing it first with OpenSSL's SHA-256 when
        # `hashing`. Client and receiver share the CPUs as in the measurements, so this is
        # the upload rate a hashing (dropgate) or non-hashing (the peers) server can reach
        # here; no sync. `tls`: the same over TLS 1.3 with the peers' certificate (Python's
        # ssl, OpenSSL on both ends, the cipher curl gets); the sender reads the file in 1 MiB
        # pieces and encrypts them as curl does: the FTPS rows' limits.
        src = os.path.join(BASE, "client", "big.bin")
        path = os.path.join(d, "received")
        prime_page_cache()  # as before every upload step
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        pid = os.fork()
        if pid == 0:  # the sender
            code = 1
            try:
                with socket.create_connection(srv.getsockname()) as c, open(src, "rb") as f:
                    if tls:
                        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                        ctx.check_hostname = False
                        ctx.verify_mode = ssl.CERT_NONE
                        with ctx.wrap_socket(c) as t:
                            piece = bytearray(MiB)
                            while n := f.readinto(piece):
                                t.sendall(memoryview(piece)[:n])
                            try:
                                t.unwrap()  # our close_notify; the receiver closes without one
                            except OSError:
                                pass
                    else:
                        c.sendfile(f)
                code = 0
            finally:
                os._exit(code)
        conn, _ = srv.accept()
        srv.close()
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(os.path.join(BASE, "tls", "cert.pem"), os.path.join(BASE, "tls", "key.pem"))
            conn = ctx.wrap_socket(conn, server_side=True)
        buf = bytearray(MiB)
        view = memoryview(buf)
        h = hashlib.sha256()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        t = time.perf_counter()
        off = 0
        try:
            while True:
                n = 0
                while n < MiB:
                    try:
                        k = conn.recv_into(view[n:])
                    except ssl.SSLZeroReturnError:  # the sender's close_notify
                        k = 0
                    if k == 0:
                        break
                    n += k
                if n == 0:
                    break
                if hashing:
                    h.update(view[:n])
                os.pwrite(fd, view[:n], off)
                off += n
                if n < MiB:
                    break
            dt = time.perf_counter() - t
        finally:
            conn.close()
            os.close(fd)
            _, status = os.waitpid(pid, 0)
            os.unlink(path)
        if status != 0 or off != BIG_MB * MiB:
            raise StepError("the loopback sender failed")
        return off / dt / 1e6

    cpus = sorted(os.sched_getaffinity(0))

    def wakeup(cpu_b, rounds=5000):
        # One byte back and forth through two pipes between this process (on the first CPU it
        # may use) and a child (on `cpu_b`): microseconds a round trip, two wake-ups. Every
        # hand-off between threads (a server's network reader, its hashing and writing
        # threads, the client) pays one; on a VM whose idle CPUs must be woken by the host it
        # is many times the cost on one CPU.
        from_parent, to_child = os.pipe()
        from_child, to_parent = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(to_child)
                os.close(from_child)
                os.sched_setaffinity(0, {cpu_b})
                # the parent's end closing (it failed) ends this with EOF, not a hang
                while os.read(from_parent, 1):
                    os.write(to_parent, b"x")
                code = 0
            finally:
                os._exit(code)
        os.close(from_parent)
        os.close(to_parent)
        mask = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {cpus[0]})
            time.sleep(0.05)
            t = time.perf_counter()
            for _ in range(rounds):
                os.write(to_child, b"x")
                os.read(from_child, 1)
            dt = time.perf_counter() - t
        finally:
            os.sched_setaffinity(0, mask)
            os.close(to_child)
            os.close(from_child)
            os.waitpid(pid, 0)
        return dt / rounds * 1e6

    say("== disk and hash limits (same filesystem as the servers' data)")
    r = {k: statistics.median(f() for _ in range(3)) for k, f in (
        ("big", lambda: big(False)), ("big_sync", lambda: big(True)), ("big_behind", lambda: big(True, behind=True)),
        ("big_direct", lambda: big(True, direct=True)),
        ("small", lambda: small(False)), ("small_sync", lambda: small(True)),
        ("sha256", sha256), ("receive", lambda: receive(False)),
        ("receive_hash", lambda: receive(True)), ("receive_tls", lambda: receive(False, tls=True)),
        ("receive_tls_hash", lambda: receive(True, tls=True)),
        ("wake_same_us", lambda: wakeup(cpus[0])),
        *((("wake_cross_us", lambda: wakeup(cpus[1])),) if len(cpus) > 1 else ()))}
    shutil.rmtree(d, ignore_errors=True)
    say(f"   {r}")
    b.notes.append(
        f"Disk limits in this run (same filesystem as the data, medians of 3, no network): "
        f"writing {human_size(BIG_MB * MiB)} in 1 MiB writes {r['big']:.0f} MB/s into the page cache, "
        f"{r['big_sync']:.0f} MB/s with one fdatasync at the end, {r['big_behind']:.0f} MB/s written "
        f"behind (every 8 MiB queued for writing, 32 MiB behind waited for and dropped from the cache, "
        f"as dropgate writes durable uploads) with one fdatasync, {r['big_direct']:.0f} MB/s written O_DIRECT "
        f"(around the page cache) with one fdatasync; {SMALL_FILES} x {SMALL_KB} KiB "
        f"create+write+rename {r['small']:.0f} files/s, {r['small_sync']:.0f} files/s with dropgate's "
        f"fdatasync + folder fsync per file (dropgate answers an upload only after them; the peers do not sync). "
        f"SHA-256 on one core (OpenSSL, 1 MiB updates): {r['sha256']:.0f} MB/s, the most a single "
        f"upload can reach here while dropgate hashes it as it streams. Receiving {human_size(BIG_MB * MiB)} "
        f"over loopback (a sendfile client; a receiver that reads 1 MiB at a time and writes it, "
        f"client and receiver on the same CPUs): {r['receive']:.0f} MB/s, {r['receive_hash']:.0f} MB/s "
        f"when the receiver also hashes every chunk (SHA-256) as dropgate does: the upload limits of a "
        f"non-hashing and of a hashing server on this machine. The same over TLS 1.3 (OpenSSL on both "
        f"ends, the sender reading and encrypting 1 MiB pieces as curl does): {r['receive_tls']:.0f} MB/s, "
        f"{r['receive_tls_hash']:.0f} MB/s hashing: the FTPS uploads' limits. A wake-up (a pipe round "
        f"trip between two processes): {r['wake_same_us']:.1f} us on one CPU"
        + (f", {r['wake_cross_us']:.1f} us between two CPUs, paid by every hand-off between "
           f"threads on different CPUs" if "wake_cross_us" in r else "") + ".")
    if b.commit_samples:
        r["small_sync_group"] = statistics.median(b.commit_samples)
        b.notes.append(
            f"The same per-file commit measured right before each durable one-at-a-time FTP small-file "
            f"upload round (the disk as that round met it): "
            f"{', '.join(f'{v:.0f}' for v in b.commit_samples)} files/s, median "
            f"{r['small_sync_group']:.0f}; the limits table sets the durable small-file rows against this median.")
    b.limits = r


def measure():
    unknown = [s for s in SERVERS if s not in SERVER_INFO]
    if unknown:
        sys.exit(f"bench.py: unknown server(s) {unknown}; known: {list(SERVER_INFO)}")
    started = time.time()
    b = Bench()
    for proto in ("ftp", "sftp"):
        for s in b.servers(proto):
            if not b.reachable(s, proto):
                say(f"!! {s} {proto} is down: {b.down[(s, proto)]}")
    groups = {"ftp": lambda: bench_bulk(b, tls=False), "ftps": lambda: bench_bulk(b, tls=True),
              "sftp": lambda: bench_sftp(b), "small": lambda: bench_small(b),
              "sessions": lambda: bench_sessions(b), "memory": lambda: bench_memory(b),
              "listing": lambda: bench_listing(b)}
    for g in ONLY:
        if g not in groups:
            sys.exit(f"bench.py: unknown measurement group {g!r}; known: {' '.join(groups)}")
    for g in ("ftp", "ftps", "sftp", "small", "sessions", "memory", "listing"):
        if g in ONLY:
            groups[g]()
    if {"ftp", "ftps", "small"} & set(ONLY):
        try:
            disk_limits(b)
        except Exception as e:  # noqa: BLE001 -- the table is printed without the limits
            say(f"!! disk limits not measured: {e}")
            b.notes.append(f"Disk limits: not measured ({e}).")
    text = report(b, started, time.time())
    print(text)
    with open(os.path.join(BASE, "results.md"), "w") as f:
        f.write(text)
    raw = {"config": {k: os.environ.get(k) for k in ("ROUNDS", "BIG_MB", "SMALL_FILES", "SMALL_KB", "SESSIONS",
                                                     "MEM_FTP_SESSIONS", "MEM_SFTP_SESSIONS", "LIST_FILES", "SERVERS")},
           "values": b.values, "steal_pct": b.steal, "failed": b.failed, "na": b.na, "notes": b.notes,
           "limits": b.limits}
    with open(os.path.join(BASE, "results.json"), "w") as f:
        json.dump(raw, f, indent=1)
    return 1 if any(b.failed.values()) else 0


def wait(seconds=60):
    """Waits (at most `seconds` in all) for every listener; 1 if one stays down."""
    pending = [(s, proto, SERVER_INFO[s][proto]) for s in SERVERS for proto in ("ftp", "sftp")
               if proto in SERVER_INFO.get(s, {})]
    deadline = time.monotonic() + seconds
    why = {}
    while pending:
        for item in list(pending):
            why[item] = probe(item[2], item[1])
            if why[item] is None:
                say(f"   {item[0]} {item[1]} on 127.0.0.1:{item[2]}: up")
                pending.remove(item)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    for s, proto, port in pending:
        say(f"   {s} {proto} on 127.0.0.1:{port}: DOWN ({why[(s, proto, port)]})")
    return 1 if pending else 0


def main(argv):
    if not BASE:
        sys.exit("bench.py: set PERFBASE")
    if len(argv) >= 3 and argv[0] == "prepare":
        prepare(argv[1], argv[2:])
        return 0
    if len(argv) == 2 and argv[0] == "unftp-credentials":
        unftp_credentials(argv[1])
        return 0
    if argv == ["wait"]:
        return wait()
    if argv == ["measure"]:
        return measure()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
