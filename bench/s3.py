#!/usr/bin/env python3
"""S3 rows of docs/benchmarks.md: 1 GiB up and down through dropgate on its
S3 backend (FTP with curl, SFTP with OpenSSH), against moto's S3 server on
loopback, next to the limit the same moto gives a direct S3 client in the
same run (uploads: boto3 with dropgate's part size and concurrency;
downloads: one GET signed by curl), and next to the FTP peer: libunftp with
unftp-sbe-opendal, the OpenDAL back end of unFTP (bench/unftp-s3; the unFTP
binary offers OpenDAL only for Azure Blob), on the same moto.

    python3 bench/s3.py [--mb 1024] [--rounds 3] [--bin target/release/dropgate]
                        [--unftp-bin PATH | --no-unftp]

The peer is built once with `cargo install --path bench/unftp-s3 --locked`
into /var/tmp/dropgate-bench-tools (a few minutes on first use). Needs
moto[server] and boto3 (scripts/test installs moto), curl and OpenSSH.
Everything binds to 127.0.0.1 and stops when the script ends.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import boto3
from boto3.s3.transfer import TransferConfig

PART = 8 << 20  # dropgate's part size (crates/vfs/src/s3.rs)
PASSWORD = "Bench-pass-1"
HERE = os.path.dirname(os.path.abspath(__file__))
TOOLS = "/var/tmp/dropgate-bench-tools"


def unftp_peer(path):
    """The peer binary, built from bench/unftp-s3 when missing or older than
    its sources; None (the peer is left out, said in the table) when the
    build fails."""
    if path:
        return path
    binary = os.path.join(TOOLS, "bin", "unftp-s3-peer")
    src = os.path.join(HERE, "unftp-s3")
    newest = max(
        os.path.getmtime(os.path.join(d, f)) for d, _, fs in os.walk(src) for f in fs
        if "target" not in d
    )
    if not os.path.exists(binary) or os.path.getmtime(binary) < newest:
        print("building the unFTP S3 peer (bench/unftp-s3, once)", file=sys.stderr)
        built = subprocess.run(
            ["cargo", "install", "--quiet", "--locked", "--force", "--path", src, "--root", TOOLS],
            env={**os.environ, "CARGO_TARGET_DIR": os.path.join(TOOLS, "unftp-s3-target")},
        )
        if built.returncode != 0:
            return None
    return binary


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def start_moto():
    p = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stderr.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if m:
            # keep draining its log so it never blocks
            import threading

            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))
    p.kill()
    sys.exit("moto_server did not start")


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--unftp-bin", default="", help="the unFTP S3 peer (default: built once)")
    ap.add_argument("--no-unftp", action="store_true", help="leave the unFTP peer out")
    ap.add_argument(
        "--bin",
        default=os.path.join(
            os.environ.get("CARGO_TARGET_DIR", "/var/tmp/dropgate-target"), "release/dropgate"
        ),
    )
    args = ap.parse_args()
    size = args.mb << 20
    # Built before anything runs, so that a build does not compete.
    peer = None if args.no_unftp else unftp_peer(args.unftp_bin)
    work = tempfile.mkdtemp(prefix="dropgate-s3bench-")
    procs = []
    try:
        moto, port = start_moto()
        procs.append(moto)
        endpoint = f"http://127.0.0.1:{port}"
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench-secret",
        )
        s3.create_bucket(Bucket="bench")
        data = os.path.join(work, "data.bin")
        with open(data, "wb") as f:
            for _ in range(args.mb):
                f.write(os.urandom(1 << 20))

        cfg = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=2)
        limit_up, limit_down = [], []

        # dropgate on the same moto.
        conf = os.path.join(work, "dropgate.toml")
        with open(conf, "w") as f:
            f.write(
                f"""data_dir = "{work}/data"
[ftp]
listen = "127.0.0.1:0"
passive_ports = "47000-47099"
[sftp]
listen = "127.0.0.1:0"
[admin]
enabled = false
[storage]
backend = "s3"
[storage.s3]
bucket = "bench"
prefix = "homes"
endpoint = "{endpoint}"
path_style = true
access_key_id = "bench"
secret_access_key = "bench-secret"
"""
            )
        key = os.path.join(work, "id")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
        subprocess.run(
            [args.bin, "--config", conf, "user", "add", "bench", "--password-stdin", "--key", key + ".pub"],
            input=PASSWORD + "\n",
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        gw = subprocess.Popen(
            [args.bin, "--config", conf, "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RUST_LOG": "info"},
        )
        procs.append(gw)
        addrs = {}
        deadline = time.time() + 30
        while time.time() < deadline and len(addrs) < 2:
            line = re.sub(r"\x1b\[[0-9;]*m", "", gw.stderr.readline())
            m = re.search(r'listening protocol="(s?ftp)" address=(\S+)', line)
            if m:
                addrs[m.group(1)] = m.group(2)
        if len(addrs) < 2:
            sys.exit(f"dropgate did not start: {addrs}")
        import threading

        threading.Thread(target=lambda: [None for _ in gw.stderr], daemon=True).start()
        ftp = f"ftp://bench:{PASSWORD}@{addrs['ftp']}"
        sftp_port = addrs["sftp"].rsplit(":", 1)[1]
        ssh = [
            "sftp", "-q", "-P", sftp_port, "-i", key, "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "Ciphers=aes128-gcm@openssh.com",
            "-b", "-", "bench@127.0.0.1",
        ]
        unftp = None
        if peer:
            uport = free_port()
            uproc = subprocess.Popen(
                [peer, f"127.0.0.1:{uport}", endpoint, "bench", "unftp", "47100", "47199"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "AWS_ACCESS_KEY_ID": "bench",
                     "AWS_SECRET_ACCESS_KEY": "bench-secret"},
            )
            procs.append(uproc)
            wait_port(uport, uproc, "unftp-s3-peer")
            unftp = f"ftp://bench:{PASSWORD}@127.0.0.1:{uport}"
        rows = {k: [] for k in ("ftp_up", "ftp_down", "sftp_up", "sftp_down", "unftp_up", "unftp_down")}
        failed = []
        # Each round measures the limit and dropgate one after the other, so
        # both see moto in the same state (it keeps every object in memory).
        for _ in range(args.rounds):
            t = time.perf_counter()
            s3.upload_file(data, "bench", "direct/data.bin", Config=cfg)
            limit_up.append(time.perf_counter() - t)
            # curl signs with SigV4 itself: one streamed GET, as dropgate reads.
            limit_down.append(
                timed(
                    [
                        "curl", "-s", "-S", "-f", "--aws-sigv4", "aws:amz:us-east-1:s3",
                        "--user", "bench:bench-secret", "-o", "/dev/null",
                        f"{endpoint}/bench/direct/data.bin",
                    ]
                )
            )
            rows["ftp_up"].append(timed(["curl", "-s", "-S", "-T", data, f"{ftp}/f.bin"]))
            rows["ftp_down"].append(timed(["curl", "-s", "-S", "-o", "/dev/null", f"{ftp}/f.bin"]))
            rows["sftp_up"].append(timed(ssh, input=f"put {data} /s.bin\n", text=True))
            rows["sftp_down"].append(timed(ssh, input="get /s.bin /dev/null\n", text=True))
            if unftp:
                # A failing peer is reported, not fatal: "where it runs".
                limit = ["--max-time", "600"]
                try:
                    rows["unftp_up"].append(timed(["curl", "-s", "-S", *limit, "-T", data, f"{unftp}/u.bin"]))
                    rows["unftp_down"].append(
                        timed(["curl", "-s", "-S", *limit, "-o", "/dev/null", f"{unftp}/u.bin"])
                    )
                except subprocess.CalledProcessError as e:
                    failed.append(f"curl exit {e.returncode}")

        def mbs(times):
            return size / statistics.median(times) / 1e6

        print(f"| row ({args.mb} MiB, median of {args.rounds}) | MB/s | share of the limit | dropgate ÷ unFTP |")
        print("|---|---|---|---|")
        up, down = mbs(limit_up), mbs(limit_down)
        print(f"| limit: boto3 straight to moto, upload (8 MiB parts, 2 in flight) | {up:.0f} | 1.00 | |")
        print(f"| limit: curl straight to moto, download (one GET) | {down:.0f} | 1.00 | |")
        peer_of = {"ftp_up": "unftp_up", "ftp_down": "unftp_down"}
        for k, label, lim in (
            ("ftp_up", "dropgate FTP upload (curl)", up),
            ("sftp_up", "dropgate SFTP upload (OpenSSH, aes128-gcm)", up),
            ("ftp_down", "dropgate FTP download (curl)", down),
            ("sftp_down", "dropgate SFTP download (OpenSSH, aes128-gcm)", down),
        ):
            peer_rows = rows.get(peer_of.get(k, ""), [])
            ratio = f"{mbs(rows[k]) / mbs(peer_rows):.2f}" if peer_rows else ""
            print(f"| {label} | {mbs(rows[k]):.0f} | {mbs(rows[k]) / lim:.2f} | {ratio} |")
        for k, label, lim in (
            ("unftp_up", "unFTP (libunftp + unftp-sbe-opendal) FTP upload (curl)", up),
            ("unftp_down", "unFTP (libunftp + unftp-sbe-opendal) FTP download (curl)", down),
        ):
            if rows[k]:
                n = f" (median of {len(rows[k])})" if len(rows[k]) != args.rounds else ""
                print(f"| {label}{n} | {mbs(rows[k]):.0f} | {mbs(rows[k]) / lim:.2f} | |")
        if not args.no_unftp and not peer:
            print("| unFTP peer: bench/unftp-s3 did not build | | | |")
        for f in failed:
            print(f"| unFTP peer failed in a round: {f} | | | |")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
