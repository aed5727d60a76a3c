"""Drives dropgate's explicit FTPS listener with Python's stdlib ftplib.FTP_TLS.

Usage: ftps_client.py HOST PORT USER PASSWORD MODE

MODE:
  reuse            a subclass that resumes the control session on every data
                   connection (what servers requiring session reuse need):
                   uploads, downloads, resume, listings must all work.
  noreuse-refused  plain FTP_TLS (new TLS session per data connection) against
                   a server that requires reuse: every transfer gets 425, the
                   control connection stays usable.
  noreuse-ok       plain FTP_TLS against a server that does not require reuse.

Exits non-zero (with a traceback) on the first failed check; prints OK at the end.
"""
import ftplib
import io
import os
import ssl
import sys


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's session."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(
                conn, server_hostname=self.host, session=self.sock.session
            )
            assert conn.session_reused, "data connection did not resume the session"
        return conn, size


def fetch(ftp, cmd, rest=None):
    buf = io.BytesIO()
    ftp.retrbinary(cmd, buf.write, rest=rest)
    return buf.getvalue()


def expect_not_resumed(ftp, action):
    """`action` is a transfer that must end with 425 (session not resumed)."""

    def check(e):
        assert str(e).startswith("425"), e
        assert "not resumed" in str(e), e

    try:
        action()
    except ftplib.error_temp as e:
        return check(e)
    except OSError:
        # The server closed the data connection after the handshake; the
        # client failed on it before reading the reply, which is still due.
        try:
            resp = ftp.getresp()
        except ftplib.error_temp as e:
            return check(e)
        raise AssertionError(resp)
    raise AssertionError("a transfer without session reuse was accepted")


def round_trip(ftp):
    data = os.urandom(3 * 1024 * 1024 + 321)
    ftp.storbinary("STOR big.bin", io.BytesIO(data))
    assert ftp.size("big.bin") == len(data)
    assert fetch(ftp, "RETR big.bin") == data
    assert fetch(ftp, "RETR big.bin", rest=4321) == data[4321:]
    # REST + STOR: resume an interrupted upload.
    ftp.storbinary("STOR part.bin", io.BytesIO(data[:70000]))
    ftp.storbinary("STOR part.bin", io.BytesIO(data[70000:]), rest=70000)
    assert fetch(ftp, "RETR part.bin") == data
    ftp.storbinary("APPE part.bin", io.BytesIO(b"tail"))
    assert fetch(ftp, "RETR part.bin") == data + b"tail"
    names = ftp.nlst()
    assert "big.bin" in names and "part.bin" in names, names
    entries = dict(ftp.mlsd())
    assert int(entries["big.bin"]["size"]) == len(data), entries
    lines = []
    ftp.retrlines("LIST", lines.append)
    assert any(line.endswith(" big.bin") for line in lines), lines


def main():
    host, port, user, password, mode = sys.argv[1:6]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    cls = ReusingFTP_TLS if mode == "reuse" else ftplib.FTP_TLS
    ftp = cls(context=ctx, timeout=30)
    ftp.encoding = "utf-8"
    ftp.connect(host, int(port))
    feat = ftp.sendcmd("FEAT")
    for f in ("AUTH TLS", "PBSZ", "PROT"):
        assert f in feat, (f, feat)
    ftp.login(user, password)  # AUTH TLS, then USER/PASS over TLS
    assert isinstance(ftp.sock, ssl.SSLSocket)
    ftp.prot_p()

    if mode == "noreuse-refused":
        for attempt in (
            lambda: ftp.storbinary("STOR nope.bin", io.BytesIO(b"x" * 100000)),
            lambda: fetch(ftp, "RETR exists.bin"),
            lambda: ftp.nlst(),
        ):
            expect_not_resumed(ftp, attempt)
        assert ftp.sendcmd("NOOP").startswith("200")
        stat = ftp.sendcmd("STAT .")
        assert "exists.bin" in stat and "nope.bin" not in stat, stat
    else:
        round_trip(ftp)

    ftp.quit()
    print("OK")


if __name__ == "__main__":
    main()
