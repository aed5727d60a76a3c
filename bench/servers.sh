#!/usr/bin/env bash
# Start/stop the benchmarked servers by hand, loopback only, with the configs in ./configs
# (adapted from the project's shared peer set-up; bench/run drives it).
# usage: servers.sh render
#        servers.sh start|stop|status|pids  dropgate|dropgate-cache|vsftpd|pureftpd|proftpd|unftp|sshd ...
# `@PERFBASE@` in the configs stands for the scratch folder $PERFBASE; `render` copies them
# into $PERFBASE/conf. Each server runs in the foreground (&), never as a system service; its
# launcher PID is kept in $PERFBASE/run/<name>.launch.pid and `stop` kills that PID and its
# descendants by PID. dropgate is $DROPGATE_BIN (default: the release build in
# $CARGO_TARGET_DIR); Pure-FTPd and ProFTPD are the binaries bench/run unpacked into
# $PERFBASE/pkg; unFTP is $UNFTP_BIN (default: bench/run's copy in $PERFBASE/bin, else the
# cargo install in /var/tmp/dropgate-bench-tools) and runs as the user mftbench, with the
# credentials, certificate and key bench/run put into $PERFBASE/unftp.
# EXTRA_CONF="opt=val\nopt2=val2" is appended to the rendered vsftpd.conf (variant runs).
set -euo pipefail
BASE=${PERFBASE:?set PERFBASE to a scratch folder}
HERE=$(cd "$(dirname "$0")" && pwd)
CONF=$BASE/conf
RUN=$BASE/run
LOGS=$BASE/logs
PKG=$BASE/pkg
DROPGATE_BIN=${DROPGATE_BIN:-${CARGO_TARGET_DIR:-/var/tmp/dropgate-target}/release/dropgate}
if [[ -z ${UNFTP_BIN:-} ]]; then
  UNFTP_BIN=/var/tmp/dropgate-bench-tools/bin/unftp
  if [[ -x $BASE/bin/unftp ]]; then UNFTP_BIN=$BASE/bin/unftp; fi
fi
BENCH_USER=mftbench
mkdir -p "$CONF" "$RUN" "$LOGS" "$BASE/empty"
chmod 755 "$BASE/empty"

# descendants of a PID (recursive), printed one per line, parent first
descendants() {
  local p=$1 c
  echo "$p"
  # shellcheck disable=SC2013 # the children files hold space-separated PIDs
  for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do descendants "$c"; done
}

launch_pid() { cat "$RUN/$1.launch.pid" 2>/dev/null || true; }

render() {
  local f
  for f in "$HERE"/configs/*; do sed "s#@PERFBASE@#$BASE#g" "$f" >"$CONF/${f##*/}"; done
  chmod 600 "$CONF"/*
  if [[ -n ${EXTRA_CONF:-} ]]; then printf '%b\n' "$EXTRA_CONF" >>"$CONF/vsftpd.conf"; fi
}

start() {
  local name=$1 pid
  if [[ -n "$(launch_pid "$name")" ]] && kill -0 "$(launch_pid "$name")" 2>/dev/null; then
    echo "$name already running (pid $(launch_pid "$name"))"; return 0; fi
  render
  case $name in
    vsftpd)
      /usr/sbin/vsftpd "$CONF/vsftpd.conf" >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    pureftpd)
      # shellcheck disable=SC2046 # one option per line, no spaces inside values
      "$PKG/pure-ftpd/usr/sbin/pure-ftpd" $(grep -v '^#' "$CONF/pure-ftpd.args") >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    proftpd)
      # -n: standalone in the foreground (its sessions are forked children of this PID)
      "$PKG/proftpd/usr/sbin/proftpd" -n -c "$CONF/proftpd.conf" >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    unftp)
      # as mftbench (setpriv execs, so the PID is unftp's), so that what it writes into the
      # peers' home belongs to the account like with the other peers; umask 022 like theirs
      # shellcheck disable=SC2046 # one option per line, no spaces inside values
      (umask 022; exec setpriv --reuid="$BENCH_USER" --regid="$BENCH_USER" --init-groups -- \
        "$UNFTP_BIN" $(grep -v '^#' "$CONF/unftp.args")) >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    sshd)
      mkdir -p /run/sshd; chmod 755 /run/sshd
      /usr/sbin/sshd -D -e -f "$CONF/sshd_config" >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    dropgate|dropgate-cache)
      "$DROPGATE_BIN" --config "$CONF/$name.toml" serve >"$LOGS/$name.out" 2>&1 &
      pid=$! ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  echo "$pid" >"$RUN/$name.launch.pid"
  sleep 1
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "$name failed to start:" >&2; tail -20 "$LOGS/$name.out" >&2; rm -f "$RUN/$name.launch.pid"; exit 1; fi
  echo "$name started pid $pid"
}

stop() {
  local name=$1 pid pids p
  pid=$(launch_pid "$name")
  [[ -z "$pid" ]] && { echo "$name not started by us"; return 0; }
  pids=$(descendants "$pid" | tac | tr '\n' ' ')
  # shellcheck disable=SC2086 # a list of PIDs
  kill -TERM $pids 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10 11 12; do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  # leftovers (per-session children that ignored TERM), by PID only
  for p in $pids; do if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi; done
  rm -f "$RUN/$name.launch.pid"
  echo "$name stopped (pids: $pids)"
}

cmd=${1:-}; shift || true
case $cmd in
  render) render ;;
  start) for n in "$@"; do start "$n"; done ;;
  stop) for n in "$@"; do stop "$n"; done ;;
  pids) for n in "$@"; do p=$(launch_pid "$n"); if [[ -n "$p" ]]; then descendants "$p"; fi; done ;;
  status) for n in "$@"; do p=$(launch_pid "$n"); if [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; then echo "$n up pid $p procs $(descendants "$p" | wc -l)"; else echo "$n down"; fi; done ;;
  *) echo "usage: $0 render | start|stop|status|pids NAME... (dropgate vsftpd pureftpd proftpd unftp sshd)" >&2; exit 2 ;;
esac
