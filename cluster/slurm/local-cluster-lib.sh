# shellcheck shell=bash
# Shared by start-local-cluster.sh and stop-local-cluster.sh (sourced, not run).

SLURM_LOCAL_WAIT_S="${SLURM_LOCAL_WAIT_S:-60}"

# The nodes after the first are network namespaces named NETNS_PREFIX<k>, each joined by a veth
# pair to the bridge BRIDGE on the machine. The link has a /28 of its own in IPv4's link-local
# range, which is never routed: node k has LINK_PREFIX.k, and no namespace has a route anywhere
# else, so all traffic between the nodes stays on these links.
NETNS_PREFIX="cmroberta-node"
BRIDGE="cmroberta0"
VETH_PREFIX="cmroberta-v"
LINK_PREFIX="169.254.100"
LINK_BITS=28
MAX_NODES=8

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
    rm -f "$pidfile"
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

# Every slurmd this script may have started: one pid file per node (/run/slurmd-<node>.pid), and
# /run/slurmd.pid of the single-node layout that earlier versions wrote.
stop_all_slurmd() {
  local pidfile
  for pidfile in /run/slurmd.pid /run/slurmd-*.pid; do
    [[ -e $pidfile ]] || continue
    stop_by_pidfile "slurmd ($(basename "$pidfile" .pid))" "$pidfile" slurmd
  done
}

# Removes the namespaces, veth pairs and bridge of the further nodes; quiet when there are none.
remove_node_links() {
  local netns name pids
  for netns in /var/run/netns/"$NETNS_PREFIX"*; do
    [[ -e $netns ]] || continue
    name=$(basename "$netns")
    # Job steps and Ray processes of that node outlive its slurmd; they would keep the namespace alive.
    pids=$(ip netns pids "$name" 2>/dev/null || true)
    if [[ -n $pids ]]; then
      say "stopping the processes left in node namespace $name: $(tr '\n' ' ' <<<"$pids")"
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      sleep 1
      pids=$(ip netns pids "$name" 2>/dev/null || true)
      # shellcheck disable=SC2086
      [[ -z $pids ]] || kill -KILL $pids 2>/dev/null || true
    fi
    say "removing node namespace $name"
    ip netns delete "$name"
  done
  local link
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$VETH_PREFIX" || true); do
    ip link delete "$link" 2>/dev/null || true
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "removing bridge $BRIDGE"
    ip link delete "$BRIDGE"
  fi
}

# The further nodes' names resolve to their link addresses, as cluster nodes resolve each other's
# names: programs that look up their own hostname (torch.distributed, Ray) find it. The lines sit
# between two markers in /etc/hosts, rewritten in place (it may be a bind mount), and go on stop.
HOSTS_BEGIN="# cmroberta local cluster nodes: begin"
HOSTS_END="# cmroberta local cluster nodes: end"

remove_node_hosts() {
  [[ -f /etc/hosts ]] && grep -qxF "$HOSTS_BEGIN" /etc/hosts || return 0
  say "removing the nodes' names from /etc/hosts"
  local kept
  kept=$(awk -v begin="$HOSTS_BEGIN" -v end="$HOSTS_END" '$0 == begin {skip = 1} !skip {print} $0 == end {skip = 0}' /etc/hosts)
  printf '%s\n' "$kept" >/etc/hosts
}

# $@: "address name" pairs of the nodes after the first.
write_node_hosts() {
  remove_node_hosts
  (($# > 0)) || return 0
  say "naming the nodes in /etc/hosts: $*"
  {
    echo "$HOSTS_BEGIN"
    local entry
    for entry in "$@"; do
      echo "$entry"
    done
    echo "$HOSTS_END"
  } >>/etc/hosts
}
