"""Drives dropgate's FTP listener with Python's stdlib ftplib.

Usage: ftplib_client.py HOST PORT USER PASSWORD passive|active [CAPABILITIES]

CAPABILITIES lists what the server's storage can do, comma-separated
(default: everything); without `set_times`, MFMT must be left out of FEAT and
refused with the README's words.

Exits non-zero (with a traceback) on the first failed check; prints OK at the end.
The Rust test then checks what landed on disk.
"""
import ftplib
import hashlib
import io
import os
import sys


def fetch(ftp, cmd, rest=None):
    buf = io.BytesIO()
    ftp.retrbinary(cmd, buf.write, rest=rest)
    return buf.getvalue()


def main():
    host, port, user, password, mode = sys.argv[1:6]
    caps = set(sys.argv[6].split(",")) if len(sys.argv) > 6 else {"set_times"}
    ftp = ftplib.FTP()
    ftp.encoding = "utf-8"
    ftp.connect(host, int(port), timeout=30)
    ftp.login(user, password)
    ftp.set_pasv(mode == "passive")

    assert ftp.sendcmd("SYST") == "215 UNIX Type: L8"
    feat = ftp.sendcmd("FEAT")
    for f in ("EPSV", "EPRT", "MLST type*;size*;modify*;perm*;unique*;", "REST STREAM", "UTF8", "HASH SHA-256*"):
        assert f in feat, (f, feat)
    assert ftp.sendcmd("OPTS UTF8 ON").startswith("200")

    # Binary round trip.
    data = os.urandom(3 * 1024 * 1024 + 123)
    ftp.storbinary("STOR big.bin", io.BytesIO(data))
    assert ftp.size("big.bin") == len(data)
    assert fetch(ftp, "RETR big.bin") == data

    # REST + RETR.
    assert fetch(ftp, "RETR big.bin", rest=1000) == data[1000:]
    assert fetch(ftp, "RETR big.bin", rest=len(data)) == b""

    # REST + STOR: resume an interrupted upload.
    ftp.storbinary("STOR part.bin", io.BytesIO(data[:5000]))
    ftp.storbinary("STOR part.bin", io.BytesIO(data[5000:]), rest=5000)
    assert fetch(ftp, "RETR part.bin") == data

    # APPE.
    ftp.storbinary("STOR app.txt", io.BytesIO(b"hello "))
    ftp.storbinary("APPE app.txt", io.BytesIO(b"world"))
    assert fetch(ftp, "RETR app.txt") == b"hello world"
    ftp.storbinary("APPE new-by-appe.txt", io.BytesIO(b"fresh"))
    assert fetch(ftp, "RETR new-by-appe.txt") == b"fresh"

    # Non-ASCII names: folder, file, listings, download.
    name = "données-日本.txt"
    content = "contenu en français, 日本語\n".encode("utf-8") * 100
    assert ftp.mkd("répertoire") == "/répertoire"
    ftp.cwd("répertoire")
    assert ftp.pwd() == "/répertoire"
    ftp.storbinary("STOR " + name, io.BytesIO(content))
    assert name in ftp.nlst(), ftp.nlst()
    entries = dict(ftp.mlsd())
    assert entries[name]["type"] == "file", entries
    assert int(entries[name]["size"]) == len(content), entries
    lines = []
    ftp.retrlines("LIST", lines.append)
    assert any(line.endswith(" " + name) for line in lines), lines
    assert fetch(ftp, "RETR " + name) == content
    ftp.cwd("..")

    # MLSD facts at the root.
    entries = dict(ftp.mlsd(facts=["type", "size", "modify", "perm", "unique"]))
    assert entries["big.bin"]["type"] == "file"
    assert int(entries["big.bin"]["size"]) == len(data)
    assert "r" in entries["big.bin"]["perm"] and "w" in entries["big.bin"]["perm"]
    assert len(entries["big.bin"]["modify"]) == 14
    assert entries["big.bin"]["unique"]
    assert entries["répertoire"]["type"] == "dir"
    assert "c" in entries["répertoire"]["perm"] and "l" in entries["répertoire"]["perm"]
    resp = ftp.sendcmd("MLST big.bin")
    assert "size=%d;" % len(data) in resp and "/big.bin" in resp, resp

    # OPTS MLST narrows the facts.
    assert ftp.sendcmd("OPTS MLST type;size;") == "200 MLST OPTS type;size;"
    entries = dict(ftp.mlsd())
    assert set(entries["big.bin"].keys()) == {"type", "size"}, entries["big.bin"]
    ftp.sendcmd("OPTS MLST type;size;modify;perm;unique;")

    # ASCII mode: CR LF on the wire, LF on disk.
    ftp.storlines("STOR text.txt", io.BytesIO(b"line1\nline2\n"))
    lines = []
    ftp.retrlines("RETR text.txt", lines.append)
    assert lines == ["line1", "line2"], lines
    assert fetch(ftp, "RETR text.txt") == b"line1\nline2\n"

    # Rename, delete, folders.
    ftp.rename("app.txt", "app2.txt")
    ftp.delete("app2.txt")
    try:
        ftp.delete("app2.txt")
        raise AssertionError("deleting a missing file worked")
    except ftplib.error_perm as e:
        assert str(e).startswith("550"), e
    ftp.mkd("empty")
    ftp.rmd("empty")

    # MFMT, MDTM, HASH.
    if "set_times" in caps:
        assert ftp.sendcmd("MFMT 20200102030405 big.bin") == "213 Modify=20200102030405; big.bin"
        assert ftp.sendcmd("MDTM big.bin") == "213 20200102030405"
    else:
        assert " MFMT" not in feat, feat
        try:
            ftp.sendcmd("MFMT 20200102030405 big.bin")
            raise AssertionError("MFMT worked on storage that keeps no times")
        except ftplib.error_perm as e:
            assert str(e) == "550 Setting file times is not supported by this storage (S3).", e
        assert ftp.sendcmd("MDTM big.bin").startswith("213 20"), "MDTM still answers"
    resp = ftp.sendcmd("HASH big.bin")
    assert resp == "213 SHA-256 0-%d %s big.bin" % (len(data), hashlib.sha256(data).hexdigest()), resp

    ftp.quit()
    print("OK")


if __name__ == "__main__":
    main()
