#!/usr/bin/env bash
# Start a real single-node SLURM cluster, with accounting, on this machine (Debian or Ubuntu).
#
#   sudo bash cluster/slurm/start-local-cluster.sh     # start (or check) the cluster
#   sudo bash cluster/slurm/stop-local-cluster.sh      # stop the SLURM daemons
#   sudo bash cluster/slurm/stop-local-cluster.sh --all   # ... and MariaDB and munged too
#
# What it does, printing each step:
#   1. installs Debian's slurm-wlm, slurmdbd, munge and mariadb-server with apt-get if missing;
#   2. creates the munge key if absent and starts munged;
#   3. starts MariaDB and creates the database user `slurm` (authenticated as the Unix user
#      `slurm`, so no password exists);
#   4. writes /etc/slurm/slurm.conf and slurmdbd.conf from the templates beside this script,
#      with this host's name and CPU layout (`slurmd -C`); one partition, `debug`;
#   5. starts slurmdbd, registers the cluster with accounting, starts slurmctld and slurmd;
#   6. waits until the node is idle and `sacct` answers, then prints `sinfo`.
# Running it again is safe: daemons that run with an unchanged config are left alone, the
# others are (re)started. On a systemd host the daemons are its units; elsewhere (containers)
# the script starts them itself. Each wait is bounded by SLURM_LOCAL_WAIT_S (default 60 s);
# on failure it exits non-zero and prints the end of the daemon's log.
#
# Logs: /var/log/slurm/{slurmctld,slurmd,slurmdbd}.log, /var/log/munge/munged.log,
# /var/log/mysql/error.log. Try it: sinfo; sbatch --wrap hostname; sacct.
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
  install -d -o root -g root -m 0755 /var/spool/slurmd /etc/slurm
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
  local host layout cpus real_memory usable_memory node_cpus rendered
  host=$(hostname -s)
  layout=$(slurmd -C) || die "'slurmd -C' cannot describe this node"
  layout=$(head -n 1 <<<"$layout")
  cpus=$(node_field "$layout" CPUs)
  real_memory=$(node_field "$layout" RealMemory)
  [[ -n $cpus && -n $real_memory ]] || die "cannot read CPUs and RealMemory from 'slurmd -C': $layout"
  usable_memory=$((real_memory * (100 - RESERVED_MEMORY_PERCENT) / 100))
  node_cpus="CPUs=$cpus"
  local field value
  for field in Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
    value=$(node_field "$layout" "$field")
    [[ -z $value ]] || node_cpus+=" $field=$value"
  done
  say "node $host: $node_cpus RealMemory=$usable_memory (slurmd -C reports $real_memory MB)"

  rendered=$(mktemp)
  sed -e "s/@CLUSTER_NAME@/$CLUSTER_NAME/g" -e "s/@HOST@/$host/g" -e "s/@NODE_CPUS@/$node_cpus/" \
    -e "s/@REAL_MEMORY@/$usable_memory/" -e "s/@JOBS_PER_CORE@/$JOBS_PER_CORE/" -e "s/@DEF_MEM_PER_CPU@/$((usable_memory / (cpus * JOBS_PER_CORE)))/" \
    "$SCRIPT_DIR/slurm.conf.in" >"$rendered"
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
slurmd_running() { pid_of_running /run/slurmd.pid slurmd >/dev/null; }
stop_slurmdbd() { stop_by_pidfile slurmdbd /run/slurmdbd.pid slurmdbd; }
stop_slurmctld() { stop_by_pidfile slurmctld /run/slurmctld.pid slurmctld; }
stop_slurmd() { stop_by_pidfile slurmd /run/slurmd.pid slurmd; }
start_slurmdbd() { /usr/sbin/slurmdbd; }
start_slurmctld() { /usr/sbin/slurmctld; }
start_slurmd() { /usr/sbin/slurmd; }

cluster_registered() { sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; }
controller_registered() { [[ -n "$(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=ControlHost)" ]]; }
node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null || true; }
node_usable() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

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

  ensure_daemon slurmctld "$SLURM_CONF_CHANGED" slurmctld_running start_slurmctld
  wait_until bash -c 'scontrol ping | grep -q UP' ||
    fail_with_logs "slurmctld does not answer (scontrol ping)" /var/log/slurm/slurmctld.log
  ensure_daemon slurmd "$SLURM_CONF_CHANGED" slurmd_running start_slurmd
}

wait_for_node() {
  local host state resumed="" deadline=$((SECONDS + SLURM_LOCAL_WAIT_S))
  host=$(hostname -s)
  say "waiting for node $host to be idle"
  until node_usable; do
    state=$(node_state)
    # A drained node stays drained across restarts (ReturnToService=2 returns only DOWN nodes).
    if [[ -z $resumed && ($state == drain* || $state == down) ]]; then
      say "node $host is $state (reason: $(sinfo -h -n "$host" -o %E)): resuming it"
      scontrol update NodeName="$host" State=RESUME
      resumed=yes
    fi
    if ((SECONDS >= deadline)); then
      sinfo -R >&2 || true
      fail_with_logs "node $host did not become idle within ${SLURM_LOCAL_WAIT_S}s (state: $state)" \
        /var/log/slurm/slurmd.log /var/log/slurm/slurmctld.log
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

main() {
  become_root "$@"
  install_packages
  prepare_directories
  setup_munge
  setup_mariadb
  write_configs
  start_slurm
  wait_for_node
  wait_for_accounting
  sinfo
  say "SLURM cluster $CLUSTER_NAME is up ($((SECONDS - STARTED_AT)) s); stop it with: bash $SCRIPT_DIR/stop-local-cluster.sh"
}

main "$@"
