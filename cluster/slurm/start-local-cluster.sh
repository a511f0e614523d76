#!/usr/bin/env bash
# Start a real SLURM cluster, with accounting, on this machine (Debian or Ubuntu): one node, or
# several nodes on one machine.
#
#   sudo bash cluster/slurm/start-local-cluster.sh             # one node: this machine
#   sudo bash cluster/slurm/start-local-cluster.sh --nodes 2   # this machine and one more node
#   sudo bash cluster/slurm/stop-local-cluster.sh              # stop either kind and remove its nodes
#
# With --nodes N (2..8), node 1 is the machine itself and each further node k is a Linux network
# namespace (cmroberta-node<k>) with a hostname of its own (<host>-node<k>, a UTS namespace for
# its slurmd and everything it starts), joined to the machine by a veth pair on the bridge
# cmroberta0. The link has its own link-local addresses, 169.254.100.<k>/28 (node 1 is .1), and no
# namespace has a route anywhere else, so all traffic between nodes stays on it. Munge, the
# filesystem and the process table are shared, as cluster nodes share a parallel filesystem; the
# nodes also share the machine's cores, each claiming all of them, and split its memory.
#
# What it does, printing each step:
#   1. installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server with apt-get if missing;
#   2. creates the munge key if absent and starts munged;
#   3. starts MariaDB and creates the database user `slurm` (authenticated as the Unix user
#      `slurm`, so no password exists);
#   4. with --nodes N > 1, creates the bridge, the namespaces and their veth pairs, and names the
#      further nodes in /etc/hosts (between marker lines, removed by the stop script);
#   5. writes /etc/slurm/slurm.conf and slurmdbd.conf from the templates beside this script,
#      with this host's CPU layout (`slurmd -C`); one partition, `debug`, holding every node;
#   6. starts slurmdbd, registers the cluster with accounting, starts slurmctld and one slurmd per
#      node (node k's inside its namespace: `nsenter --net=... unshare --uts`, since `ip netns exec`
#      remounts /sys and slurmd then finds no cgroup filesystem);
#   7. waits until every node is idle and `sacct` answers;
#   8. declares success only when `srun -N<nodes> --ntasks-per-node=1 hostname` prints as many
#      distinct hostnames as there are nodes (after restarting every slurmd once if not), then
#      prints `sinfo`.
# Running it again is safe: daemons that run with an unchanged config are left alone, the
# others are (re)started, and so is a node's slurmd that runs outside the node's current
# namespace (one recreated under it); a different --nodes reconfigures the cluster. On a systemd host
# slurmctld, slurmdbd and node 1's slurmd are its units; elsewhere (containers) the script starts
# them itself. Each wait is bounded by SLURM_LOCAL_WAIT_S (default 60 s); on failure it exits
# non-zero and prints the end of the daemon's log.
#
# Logs: /var/log/slurm/{slurmctld,slurmdbd,slurmd-<node>}.log, /var/log/munge/munged.log,
# /var/log/mysql/error.log. Try it: sinfo; srun -N2 hostname; sbatch --wrap hostname; sacct.
set -Eeuo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/slurm/local-cluster-lib.sh
source "$SCRIPT_DIR/local-cluster-lib.sh"

CLUSTER_NAME="cmroberta"
DATABASE="slurm_acct_db"
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)
# Room left for the system when telling SLURM how much memory the node has: a node that
# reports less memory than slurm.conf claims is drained.
RESERVED_MEMORY_PERCENT=10
# Small jobs may share a core (OverSubscribe=FORCE), so a 2-core laptop runs several tests' jobs at once.
JOBS_PER_CORE=4
STARTED_AT=$SECONDS
NODES=1
# Filled by plan_nodes: node k's name and address at index k-1.
NODE_NAMES=()
NODE_ADDRS=()

trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

show_log_tail() {
  local logfile=$1
  if [[ -r $logfile ]]; then
    printf '[slurm-local] --- last lines of %s ---\n' "$logfile" >&2
    tail -n 25 "$logfile" >&2
  fi
}

fail_with_logs() {
  local message=$1
  shift
  local logfile
  for logfile in "$@"; do
    show_log_tail "$logfile"
  done
  die "$message"
}

install_packages() {
  local missing=() package
  for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
  done
  if ((${#missing[@]} == 0)); then
    say "packages already installed: ${PACKAGES[*]}"
    return
  fi
  command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and Ubuntu only"
  say "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

prepare_directories() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  install -d -o mysql -g adm -m 2750 /var/log/mysql
  install -d -o slurm -g slurm -m 0755 /var/log/slurm /var/spool/slurmctld
  install -d -o root -g root -m 0755 /etc/slurm
}

# --- nodes and their links --------------------------------------------------------------

plan_nodes() {
  local host k
  host=$(hostname -s)
  NODE_NAMES=("$host")
  NODE_ADDRS=("$LINK_PREFIX.1")
  for ((k = 2; k <= NODES; k++)); do
    NODE_NAMES+=("$host-node$k")
    NODE_ADDRS+=("$LINK_PREFIX.$k")
  done
}

# Node k >= 2: namespace NETNS_PREFIX<k>, its end of the veth pair renamed eth0 with the node's
# address; the machine's end on the bridge. Only the link's own /28 is routed.
setup_node_links() {
  if ((NODES == 1)); then
    remove_node_links
    remove_node_hosts
    return
  fi
  command -v ip >/dev/null || die "the 'ip' command (iproute2) is needed for a cluster of several nodes"
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "creating bridge $BRIDGE with node 1's address $LINK_PREFIX.1/$LINK_BITS"
    ip link add "$BRIDGE" type bridge
    ip addr add "$LINK_PREFIX.1/$LINK_BITS" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
  local k netns veth
  for ((k = 2; k <= MAX_NODES; k++)); do
    netns="$NETNS_PREFIX$k"
    if ((k > NODES)); then
      if [[ -e /var/run/netns/$netns ]]; then
        say "node $k is no longer asked for: removing $netns"
        ip netns delete "$netns"
      fi
      continue
    fi
    if [[ -e /var/run/netns/$netns ]] && ip -n "$netns" -o addr show dev eth0 2>/dev/null | grep -q "$LINK_PREFIX.$k/"; then
      continue
    fi
    [[ ! -e /var/run/netns/$netns ]] || ip netns delete "$netns"
    veth="$VETH_PREFIX$k"
    say "creating node $k: namespace $netns, address $LINK_PREFIX.$k/$LINK_BITS, veth $veth on $BRIDGE"
    ip netns add "$netns"
    ip link delete "$veth" 2>/dev/null || true
    ip link add "$veth" type veth peer name "${veth}ns"
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
    ip link set "${veth}ns" netns "$netns"
    ip -n "$netns" link set "${veth}ns" name eth0
    ip -n "$netns" addr add "$LINK_PREFIX.$k/$LINK_BITS" dev eth0
    ip -n "$netns" link set eth0 up
    ip -n "$netns" link set lo up
  done
  local entries=()
  for ((k = 2; k <= NODES; k++)); do
    entries+=("${NODE_ADDRS[k - 1]} ${NODE_NAMES[k - 1]}")
  done
  write_node_hosts "${entries[@]}"
}

# Starts one daemon, or restarts it when its config changed; leaves a healthy one alone.
#   $1 name (the systemd unit too)  $2 "changed" or ""  $3 health check  $4 start function
ensure_daemon() {
  local name=$1 changed=$2 is_healthy=$3 start=$4
  if systemd_booted; then
    if [[ -z $changed ]] && systemctl is-active --quiet "$name"; then
      say "$name already running"
    else
      say "starting $name (systemctl restart $name)"
      systemctl enable --quiet "$name"
      systemctl restart "$name"
    fi
    return
  fi
  if "$is_healthy"; then
    if [[ -z $changed ]]; then
      say "$name already running"
      return
    fi
    say "$name config changed: restarting it"
    "stop_$name"
  fi
  say "starting $name"
  "$start"
}

# --- munge ---------------------------------------------------------------------------

munged_running() { pid_of_running /run/munge/munged.pid munged >/dev/null; }
stop_munge() { stop_by_pidfile munged /run/munge/munged.pid munged; }
start_munge() { runuser -u munge -- /usr/sbin/munged; }

setup_munge() {
  local changed=""
  if [[ ! -s /etc/munge/munge.key ]]; then
    say "creating the munge key /etc/munge/munge.key"
    (umask 077 && head -c 1024 /dev/urandom >/etc/munge/munge.key)
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    changed=yes
  fi
  ensure_daemon munge "$changed" munged_running start_munge
  wait_until bash -c 'munge -n | unmunge' ||
    fail_with_logs "munged does not answer (munge -n | unmunge fails)" /var/log/munge/munged.log
}

# --- MariaDB ---------------------------------------------------------------------------

mariadb_running() { mysqladmin --silent ping >/dev/null 2>&1; }
stop_mariadb() { mysqladmin shutdown; }
start_mariadb() {
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql >/dev/null
  fi
  # mysqld_safe stays in the foreground; setsid detaches it from this script's session.
  setsid mysqld_safe --user=mysql --skip-syslog --log-error=/var/log/mysql/error.log \
    </dev/null >>/var/log/mysql/mysqld_safe.log 2>&1 &
}

setup_mariadb() {
  ensure_daemon mariadb "" mariadb_running start_mariadb
  wait_until mariadb_running || fail_with_logs "MariaDB did not start" /var/log/mysql/error.log
  say "granting the database user slurm access to $DATABASE"
  mysql --batch <<SQL || die "cannot create the MariaDB user slurm (see the mysql error above)"
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
GRANT ALL ON \`$DATABASE\`.* TO 'slurm'@'localhost';
SQL
}

# --- configuration ---------------------------------------------------------------------

# `slurmd -C` prints this node as slurm.conf would describe it, e.g.
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=23988".
node_field() {
  local layout=$1 field=$2
  grep -o "\b$field=[0-9]*" <<<"$layout" | cut -d= -f2 || true
}

# Writes a config from its template into place; prints "changed" when the file's content changed.
write_config() {
  local rendered=$1 target=$2 owner=$3 mode=$4
  if [[ -f $target ]] && cmp -s "$rendered" "$target"; then
    rm -f "$rendered"
  else
    install -o "$owner" -g "$owner" -m "$mode" "$rendered" "$target"
    rm -f "$rendered"
    echo changed
  fi
}

SLURM_CONF_CHANGED=""
SLURMDBD_CONF_CHANGED=""

write_configs() {
  local layout cpus real_memory node_memory node_cpus rendered controller node_lines="" node_list k
  layout=$(slurmd -C) || die "'slurmd -C' cannot describe this node"
  layout=$(head -n 1 <<<"$layout")
  cpus=$(node_field "$layout" CPUs)
  real_memory=$(node_field "$layout" RealMemory)
  [[ -n $cpus && -n $real_memory ]] || die "cannot read CPUs and RealMemory from 'slurmd -C': $layout"
  # The nodes share the machine's memory, so each claims its share.
  node_memory=$((real_memory * (100 - RESERVED_MEMORY_PERCENT) / 100 / NODES))
  node_cpus="CPUs=$cpus"
  local field value
  for field in Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
    value=$(node_field "$layout" "$field")
    [[ -z $value ]] || node_cpus+=" $field=$value"
  done
  if ((NODES == 1)); then
    controller=${NODE_NAMES[0]}
    node_lines="NodeName=${NODE_NAMES[0]} $node_cpus RealMemory=$node_memory State=UNKNOWN"
  else
    # Nodes reach the controller and each other at their link addresses, not through name lookups.
    controller="${NODE_NAMES[0]}(${NODE_ADDRS[0]})"
    for ((k = 0; k < NODES; k++)); do
      node_lines+="NodeName=${NODE_NAMES[k]} NodeAddr=${NODE_ADDRS[k]} $node_cpus RealMemory=$node_memory State=UNKNOWN"$'\n'
    done
    node_lines=${node_lines%$'\n'}
  fi
  node_list=$(IFS=, && echo "${NODE_NAMES[*]}")
  say "$NODES node(s) $node_list: $node_cpus RealMemory=$node_memory each (slurmd -C reports $real_memory MB)"

  local template
  template=$(<"$SCRIPT_DIR/slurm.conf.in")
  template=${template//@CLUSTER_NAME@/$CLUSTER_NAME}
  template=${template//@CONTROLLER@/$controller}
  template=${template//@NODE_LINES@/$node_lines}
  template=${template//@NODE_LIST@/$node_list}
  template=${template//@JOBS_PER_CORE@/$JOBS_PER_CORE}
  template=${template//@DEF_MEM_PER_CPU@/$((node_memory / (cpus * JOBS_PER_CORE)))}
  rendered=$(mktemp)
  printf '%s\n' "$template" >"$rendered"
  SLURM_CONF_CHANGED=$(write_config "$rendered" /etc/slurm/slurm.conf root 0644)

  rendered=$(mktemp)
  sed -e "s/@DATABASE@/$DATABASE/" "$SCRIPT_DIR/slurmdbd.conf.in" >"$rendered"
  # slurmdbd refuses a config that others can read.
  SLURMDBD_CONF_CHANGED=$(write_config "$rendered" /etc/slurm/slurmdbd.conf slurm 0600)
  say "wrote /etc/slurm/slurm.conf${SLURM_CONF_CHANGED:+ (changed)} and /etc/slurm/slurmdbd.conf${SLURMDBD_CONF_CHANGED:+ (changed)}"
}

# --- SLURM daemons ---------------------------------------------------------------------

slurmdbd_running() { pid_of_running /run/slurmdbd.pid slurmdbd >/dev/null; }
slurmctld_running() { pid_of_running /run/slurmctld.pid slurmctld >/dev/null; }
stop_slurmdbd() { stop_by_pidfile slurmdbd /run/slurmdbd.pid slurmdbd; }
stop_slurmctld() { stop_by_pidfile slurmctld /run/slurmctld.pid slurmctld; }
start_slurmdbd() { /usr/sbin/slurmdbd; }
start_slurmctld() { /usr/sbin/slurmctld; }
# Node 1's slurmd, as ensure_daemon calls it (its name is the machine's hostname).
slurmd_running() { pid_of_running "/run/slurmd-${NODE_NAMES[0]}.pid" slurmd >/dev/null; }
stop_slurmd() { stop_all_slurmd; }
start_slurmd() { install -d -m 0755 "/var/spool/slurmd-${NODE_NAMES[0]}" && /usr/sbin/slurmd; }

# Whether process $1 runs in node $2's network namespace as it is now. A namespace recreated (by
# setup_node_links, or by hand) under a running slurmd leaves that slurmd in the old one, where the
# controller's address is no longer reachable: it must be restarted.
in_node_namespace() {
  local pid=$1 k=$2 current
  current=$(stat -L -c %i "/var/run/netns/$NETNS_PREFIX$k" 2>/dev/null) || return 1
  [[ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" == "net:[$current]" ]]
}

# Node k >= 2's slurmd, inside its namespace, under its own hostname; the jobs it starts inherit both.
start_node_slurmd() {
  local k=$1 name=${NODE_NAMES[$1 - 1]} pid
  if pid=$(pid_of_running "/run/slurmd-$name.pid" slurmd); then
    if in_node_namespace "$pid" "$k"; then
      say "slurmd of node $name already running"
      return
    fi
    say "slurmd of node $name (pid $pid) runs outside the node's current namespace: restarting it"
    stop_by_pidfile "slurmd ($name)" "/run/slurmd-$name.pid" slurmd
  fi
  say "starting slurmd of node $name in namespace $NETNS_PREFIX$k"
  install -d -m 0755 "/var/spool/slurmd-$name"
  nsenter --net="/var/run/netns/$NETNS_PREFIX$k" unshare --uts \
    sh -c 'hostname "$1" && exec /usr/sbin/slurmd -N "$1"' slurmd-node "$name"
}

cluster_registered() { sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; }
controller_registered() { [[ -n "$(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=ControlHost)" ]]; }
node_state() { sinfo -h -n "$1" -o %T 2>/dev/null || true; }
node_usable() { [[ "$(node_state "$1")" =~ ^(idle|mixed|allocated|completing)$ ]]; }

start_slurm() {
  ensure_daemon slurmdbd "$SLURMDBD_CONF_CHANGED" slurmdbd_running start_slurmdbd
  wait_until sacctmgr -n list cluster ||
    fail_with_logs "slurmdbd does not answer (sacctmgr list cluster fails)" /var/log/slurm/slurmdbd.log
  if cluster_registered; then
    say "cluster $CLUSTER_NAME already registered with accounting"
  else
    say "registering cluster $CLUSTER_NAME with accounting"
    sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "sacctmgr cannot add cluster $CLUSTER_NAME"
  fi

  if [[ -n $SLURM_CONF_CHANGED ]]; then
    # Every slurmd reads slurm.conf, including those of nodes the new config no longer has.
    stop_all_slurmd
  fi
  ensure_daemon slurmctld "$SLURM_CONF_CHANGED" slurmctld_running start_slurmctld
  wait_until bash -c 'scontrol ping | grep -q UP' ||
    fail_with_logs "slurmctld does not answer (scontrol ping)" /var/log/slurm/slurmctld.log
  ensure_daemon slurmd "$SLURM_CONF_CHANGED" slurmd_running start_slurmd
  local k
  for ((k = 2; k <= NODES; k++)); do
    start_node_slurmd "$k"
  done
}

wait_for_node() {
  local host=$1 state resumed="" deadline=$((SECONDS + SLURM_LOCAL_WAIT_S))
  say "waiting for node $host to be idle"
  until node_usable "$host"; do
    state=$(node_state "$host")
    # A drained node stays drained across restarts (ReturnToService=2 returns only DOWN nodes).
    if [[ -z $resumed && ($state == drain* || $state == down) ]]; then
      say "node $host is $state (reason: $(sinfo -h -n "$host" -o %E)): resuming it"
      scontrol update NodeName="$host" State=RESUME
      resumed=yes
    fi
    if ((SECONDS >= deadline)); then
      sinfo -R >&2 || true
      fail_with_logs "node $host did not become idle within ${SLURM_LOCAL_WAIT_S}s (state: $state)" \
        "/var/log/slurm/slurmd-$host.log" /var/log/slurm/slurmctld.log
    fi
    sleep 0.5
  done
}

wait_for_accounting() {
  say "waiting for accounting (slurmctld registered with slurmdbd, sacct answers)"
  wait_until controller_registered ||
    fail_with_logs "slurmctld did not register with slurmdbd (no ControlHost in 'sacctmgr list cluster')" \
      /var/log/slurm/slurmdbd.log /var/log/slurm/slurmctld.log
  wait_until sacct -n -X --starttime now-1minutes ||
    fail_with_logs "sacct does not answer" /var/log/slurm/slurmdbd.log
}

# Distinct hostnames that one task per node of an N-node job reports: the cluster works only when
# every node runs jobs, under its own name. Bounded by SLURM_LOCAL_WAIT_S (a node that cannot
# launch leaves srun waiting).
distinct_job_hosts() {
  timeout "$SLURM_LOCAL_WAIT_S" srun -N"$NODES" --ntasks-per-node=1 --mem=10M --time=1 --job-name=local-cluster-check \
    hostname 2>/dev/null | sort -u | wc -l
}

check_jobs_reach_every_node() {
  local reached
  say "checking that a job reaches all $NODES node(s): srun -N$NODES --ntasks-per-node=1 hostname"
  reached=$(distinct_job_hosts || true)
  if ((reached == NODES)); then
    say "a job ran on $NODES distinct host(s)"
    return
  fi
  say "a job reached $reached of $NODES node(s): restarting every slurmd and checking again"
  stop_all_slurmd
  ensure_daemon slurmd yes slurmd_running start_slurmd
  local k node
  for ((k = 2; k <= NODES; k++)); do
    start_node_slurmd "$k"
  done
  for node in "${NODE_NAMES[@]}"; do
    wait_for_node "$node"
  done
  reached=$(distinct_job_hosts || true)
  ((reached == NODES)) ||
    fail_with_logs "a job reaches $reached of $NODES node(s) (srun -N$NODES --ntasks-per-node=1 hostname); stop the cluster with stop-local-cluster.sh and start it again" \
      /var/log/slurm/slurmctld.log
  say "a job ran on $NODES distinct host(s)"
}

usage() { die "usage: $0 [--nodes N]   (N from 1 to $MAX_NODES; default 1)"; }

parse_arguments() {
  while (($#)); do
    case $1 in
      --nodes)
        (($# >= 2)) || usage
        NODES=$2
        shift 2
        ;;
      --nodes=*)
        NODES=${1#--nodes=}
        shift
        ;;
      *) usage ;;
    esac
  done
  [[ $NODES =~ ^[0-9]+$ ]] && ((NODES >= 1 && NODES <= MAX_NODES)) || usage
}

main() {
  parse_arguments "$@"
  become_root "$@"
  install_packages
  prepare_directories
  setup_munge
  setup_mariadb
  plan_nodes
  setup_node_links
  write_configs
  start_slurm
  local node
  for node in "${NODE_NAMES[@]}"; do
    wait_for_node "$node"
  done
  wait_for_accounting
  check_jobs_reach_every_node
  sinfo
  say "SLURM cluster $CLUSTER_NAME is up with $NODES node(s) ($((SECONDS - STARTED_AT)) s); stop it with: bash $SCRIPT_DIR/stop-local-cluster.sh"
}

main "$@"
