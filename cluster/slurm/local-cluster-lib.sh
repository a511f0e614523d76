# shellcheck shell=bash
# Shared by start-local-cluster.sh and stop-local-cluster.sh (sourced, not run).

SLURM_LOCAL_WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"

say() { printf '[slurm-local] %s\n' "$*"; }

die() {
  printf '[slurm-local] ERROR: %s\n' "$*" >&2
  exit 1
}

# The script is meant for a whole machine: it installs packages and starts system daemons.
become_root() {
  if [[ $EUID -eq 0 ]]; then
    return
  fi
  command -v sudo >/dev/null || die "run this as root (sudo is not installed)"
  say "re-running with sudo"
  exec sudo --preserve-env=SLURM_LOCAL_WAIT_S bash "$0" "$@"
}

# The same test sd_booted() makes: on a systemd host the daemons are its units; elsewhere
# (containers) this script starts and stops them itself.
systemd_booted() { [[ -d /run/systemd/system ]]; }

# A pid file counts only while its process is alive and is still the named program, so a
# stale file whose pid was reused by something else is never mistaken for the daemon.
pid_of_running() {
  local pidfile=$1 program=$2 pid
  [[ -r $pidfile ]] || return 1
  pid=$(tr -dc '0-9' <"$pidfile")
  [[ -n $pid ]] || return 1
  [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$program" ]] || return 1
  echo "$pid"
}

# Repeats a command every half second until it succeeds or SLURM_LOCAL_WAIT_S pass.
wait_until() {
  local deadline=$((SECONDS + SLURM_LOCAL_WAIT_S))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

stop_by_pidfile() {
  local name=$1 pidfile=$2 program=$3 pid
  if ! pid=$(pid_of_running "$pidfile" "$program"); then
    say "$name is not running"
    return
  fi
  say "stopping $name (pid $pid)"
  kill -TERM "$pid"
  if ! wait_until test ! -d "/proc/$pid"; then
    die "$name (pid $pid) did not exit within ${SLURM_LOCAL_WAIT_S}s after SIGTERM"
  fi
  # slurmctld and slurmdbd run as the user slurm and cannot delete their pid files in /run;
  # a stale one makes Debian's package scripts believe the daemon still runs.
  rm -f "$pidfile"
}
