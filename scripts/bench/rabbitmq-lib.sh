# Shared by scripts/bench/rabbitmq (one node) and scripts/bench/rabbitmq-cluster (three):
# throw-away RabbitMQ 3.10 nodes (Debian's package) on loopback, each configured only
# through environment variables and files under its own directory, so they never touch
# the system instance (/etc/rabbitmq, /var/lib/rabbitmq, its cookie or its node name).
# Sourced, not run. Needs root: the nodes run as the rabbitmq user (Debian's layout).

RABBIT_BIN=/usr/lib/rabbitmq/bin
RABBIT_USER=rabbitmq
RABBIT_AUTH=guest:guest

rabbit_install() {
  if ! command -v rabbitmq-server >/dev/null || ! command -v jq >/dev/null; then
    apt-get update -qq && apt-get install -y -qq rabbitmq-server jq curl >/dev/null
  fi
}

# rabbit_node_env NODEDIR NODENAME AMQP_PORT MGMT_PORT DIST_PORT EPMD_PORT
# Sets (and exports) everything a node and the CLI tools aimed at it need. The node
# registers with a private epmd on EPMD_PORT (loopback), started by the first node that
# needs it, not with the machine's on 4369.
rabbit_node_env() {
  local dir=$1
  export RABBITMQ_NODENAME=$2
  export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
  export RABBITMQ_NODE_PORT=$3
  RABBIT_MGMT=$4
  export RABBITMQ_DIST_PORT=$5
  export ERL_EPMD_PORT=$6 ERL_EPMD_ADDRESS=127.0.0.1
  export RABBITMQ_MNESIA_BASE=$dir/mnesia
  export RABBITMQ_LOG_BASE=$dir/log
  export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
  export RABBITMQ_CONFIG_FILE=$dir/rabbitmq # .conf is appended
  export RABBITMQ_ADVANCED_CONFIG_FILE=$dir/advanced.config
  export RABBITMQ_CONF_ENV_FILE=$dir/rabbitmq-env.conf # absent: /etc's is not read
  export RABBITMQ_PID_FILE=$RABBITMQ_MNESIA_BASE/$RABBITMQ_NODENAME.pid
  # Distribution listens on loopback only.
  export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
  export ERL_CRASH_DUMP=$dir/erl_crash.dump
  RABBIT_NODEDIR=$dir
}

# rabbit_prepare_node: fresh directory, configuration and Erlang cookie for the node
# set by rabbit_node_env. COOKIE_FILE is shared by the nodes of one cluster.
rabbit_prepare_node() {
  local cookie=$1
  mkdir -p "$RABBITMQ_MNESIA_BASE" "$RABBITMQ_LOG_BASE"
  echo '[rabbitmq_amqp1_0,rabbitmq_management].' >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  cat >"$RABBITMQ_CONFIG_FILE.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_NODE_PORT
management.tcp.port = $RABBIT_MGMT
management.tcp.ip = 127.0.0.1
loopback_users = none
CONF
  if [ ! -s "$cookie" ]; then
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n' | tr a-f A-F >"$cookie" # 32 hex digits
  fi
  cp "$cookie" "$RABBIT_NODEDIR/.erlang.cookie"
  chmod 400 "$cookie" "$RABBIT_NODEDIR/.erlang.cookie"
  # Debian's layout runs the server as the rabbitmq user.
  chown -R "$RABBIT_USER:$RABBIT_USER" "$RABBIT_NODEDIR" "$cookie"
}

# rabbit_as_user TOOL ARGS...: a RabbitMQ tool (rabbitmq-server, rabbitmqctl, ...) as the
# rabbitmq user, with HOME at the node's directory so that its private cookie is used
# (Debian's /usr/sbin wrappers would reset HOME to /var/lib/rabbitmq, the system's).
# Bounded by $RABBIT_CLI_TIMEOUT seconds (default 120).
rabbit_as_user() {
  local tool=$1
  shift
  (cd "$RABBIT_NODEDIR" && timeout "${RABBIT_CLI_TIMEOUT:-120}" runuser -u "$RABBIT_USER" -- \
    env HOME="$RABBIT_NODEDIR" "$RABBIT_BIN/$tool" "$@")
}

rabbit_ctl() { rabbit_as_user rabbitmqctl -n "$RABBITMQ_NODENAME" "$@"; }

# rabbit_start_node: starts the node in the background; does not wait.
rabbit_start_node() {
  rabbit_as_user rabbitmq-server -detached >"$RABBIT_NODEDIR/startup.log" 2>&1
}

# True when process PID is the node set by rabbit_node_env (its environment names this
# node and this directory, so a recycled pid or another instance never passes).
rabbit_is_node() {
  local env
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = beam.smp ] || return 1
  env=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null) || return 1
  grep -qxF "RABBITMQ_NODENAME=$RABBITMQ_NODENAME" <<<"$env" &&
    grep -qxF "RABBITMQ_MNESIA_BASE=$RABBITMQ_MNESIA_BASE" <<<"$env"
}

# The node's OS pid, if it runs: from its pid file, or (still booting, or its directory
# removed) by looking for the process with its environment among the rabbitmq user's.
rabbit_node_pid() {
  local pid
  pid=$(cat "$RABBITMQ_PID_FILE" 2>/dev/null) || true
  if [ -n "$pid" ] && rabbit_is_node "$pid"; then
    echo "$pid"
    return 0
  fi
  for pid in $(pgrep -u "$RABBIT_USER" 2>/dev/null); do
    if rabbit_is_node "$pid"; then
      echo "$pid"
      return 0
    fi
  done
  return 1
}

# rabbit_wait SECONDS WHAT COMMAND...: polls COMMAND (quietly) until it succeeds or
# SECONDS pass; then says what did not happen and fails.
rabbit_wait() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + limit))
  # A RabbitMQ tool polled here gets the time left as its own limit (rabbit_as_user).
  until RABBIT_CLI_TIMEOUT=$((deadline > SECONDS ? deadline - SECONDS : 1)) "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "rabbitmq: timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.3 # poll interval; the deadline bounds the wait
  done
}

# True when the AMQP port speaks AMQP 1.0: our SASL protocol header is answered
# with a 1.0 SASL header (a 0-9-1-only listener answers AMQP 0-9-1's).
rabbit_amqp10_ready() {
  local port=$1 reply
  reply=$(timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port &&
    printf 'AMQP\\003\\001\\000\\000' >&3 && head -c 8 <&3 | od -An -tx1" 2>/dev/null) || return 1
  [ "$(echo $reply)" = "41 4d 51 50 03 01 00 00" ]
}

# rabbit_api MGMT_PORT METHOD PATH [JSON]: the management HTTP API; fails on HTTP errors.
rabbit_api() {
  local port=$1 method=$2 path=$3
  if [ -n "${4:-}" ]; then
    curl -fsS --max-time 10 -u "$RABBIT_AUTH" -X "$method" -H 'content-type: application/json' \
      -d "$4" "http://127.0.0.1:$port/api/$path"
  else
    curl -fsS --max-time 10 -u "$RABBIT_AUTH" -X "$method" "http://127.0.0.1:$port/api/$path"
  fi
}

# True when something on this machine accepts TCP connections on PORT.
rabbit_port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# rabbit_stop_node: stops the node set by rabbit_node_env, if it runs: politely through
# rabbitmqctl, then by its pid (checked to be this node) if it lingers.
rabbit_stop_node() {
  local pid
  pid=$(rabbit_node_pid) || return 0
  # The VM shuts down cleanly on SIGTERM too (when rabbitmqctl cannot reach the node).
  RABBIT_CLI_TIMEOUT=60 rabbit_ctl stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  rabbit_wait 60 "$RABBITMQ_NODENAME (pid $pid) to exit" \
    bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
}

# rabbit_stop_epmd PORT: stops the private epmd on PORT (never the machine's on 4369);
# it refuses while a node is still registered with it.
rabbit_stop_epmd() {
  local port=${1:?epmd port}
  [ "$port" != 4369 ] || return 0
  if command -v epmd >/dev/null; then
    ERL_EPMD_PORT=$port timeout 10 epmd -kill >/dev/null 2>&1 || true
  fi
}
