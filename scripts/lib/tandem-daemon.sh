# Shell functions shared by Tandem's resource-manager scripts:
#   scripts/init.d/tandemd          (per-node broker, LSB init script)
#   scripts/init.d/tandemd-primary  (promotes the local broker, LSB init script)
#   scripts/ocf/tandem              (Pacemaker OCF agent, promotable clone)
# Install it as /usr/lib/tandem/tandem-daemon.sh (docs/resource-managers.md).
#
# POSIX sh plus `local` (dash, bash, busybox). The caller sets these variables
# first (the init scripts read them from /etc/default/tandemd, the OCF agent
# from its parameters), then calls tandem_settle_defaults:
#
#   TANDEMD                 broker binary
#   TANDEM_HA               tandem-ha binary
#   TANDEMD_CONFIG          broker config file (TOML)
#   TANDEMD_OPTIONS         extra tandemd flags, split on blanks (they win over the file)
#   TANDEMD_PIDFILE         where the broker's pid is kept
#   TANDEMD_LOG             where the broker's stderr (its log) goes
#   TANDEMD_USER            run the broker as this user (only when started as root)
#   TANDEM_HA_BROKER        address tandem-ha uses for the local broker
#                           ([amqps:][user[/password]@]host:port; default from the
#                           config file: see tandem_local_address)
#   TANDEM_PASSWORD         the password of a user@ TANDEM_HA_BROKER (default: the
#                           config file's ha-password when the user is its ha-username)
#   TANDEM_SSL_TRUSTFILE    CA tandem-ha verifies an amqps: broker against (default:
#                           the config file's ssl-ca-file)
#   TANDEM_SSL_CERTIFICATE  certificate and key tandem-ha shows an amqps: broker
#   TANDEM_SSL_KEY          (default: the config file's ssl-cert-file and ssl-key-file)
#   TANDEM_HA_TIMEOUT       seconds a status check may take
#   TANDEMD_START_TIMEOUT   seconds the broker may take to answer after start
#   TANDEMD_STOP_TIMEOUT    seconds the broker may take to exit after SIGTERM
#
# The functions report through tandem_note (stderr); the OCF agent redefines it.

tandem_note() {
    echo "${0##*/}: $*" >&2
}

# Fills in whatever the caller left unset.
tandem_settle_defaults() {
    : "${TANDEMD:=$(command -v tandemd || echo /usr/sbin/tandemd)}"
    : "${TANDEM_HA:=$(command -v tandem-ha || echo /usr/bin/tandem-ha)}"
    : "${TANDEMD_CONFIG:=/etc/tandem/tandemd.toml}"
    : "${TANDEMD_OPTIONS:=}"
    : "${TANDEMD_PIDFILE:=/run/tandem/tandemd.pid}"
    : "${TANDEMD_LOG:=/var/log/tandem/tandemd.log}"
    : "${TANDEMD_USER:=}"
    : "${TANDEM_HA_TIMEOUT:=5}"
    : "${TANDEMD_START_TIMEOUT:=30}"
    : "${TANDEMD_STOP_TIMEOUT:=30}"
    : "${TANDEM_HA_BROKER:=$(tandem_local_address)}"
    # tandem-ha reads the password of a `user@host` TANDEM_HA_BROKER from here,
    # which keeps it out of the process list. The cluster's own user, named in
    # the config, is the one status checks and promote need on an auth cluster.
    local ha_user
    ha_user=$(tandem_config_value ha-username)
    if [ -z "${TANDEM_PASSWORD:-}" ] && [ -n "$ha_user" ]; then
        case "$TANDEM_HA_BROKER" in
            "$ha_user"@* | amqps:"$ha_user"@* | amqp:"$ha_user"@*)
                TANDEM_PASSWORD=$(tandem_config_value ha-password)
                ;;
        esac
    fi
    if [ -n "${TANDEM_PASSWORD:-}" ]; then export TANDEM_PASSWORD; fi
    # TLS for an amqps: TANDEM_HA_BROKER: the broker's own files (its CA and
    # certificate) unless given.
    : "${TANDEM_SSL_TRUSTFILE:=$(tandem_config_value ssl-ca-file)}"
    : "${TANDEM_SSL_CERTIFICATE:=$(tandem_config_value ssl-cert-file)}"
    : "${TANDEM_SSL_KEY:=$(tandem_config_value ssl-key-file)}"
    # (An empty one is unset: the tools would read it as a file name.)
    if [ -n "$TANDEM_SSL_TRUSTFILE" ]; then export TANDEM_SSL_TRUSTFILE; else unset TANDEM_SSL_TRUSTFILE; fi
    if [ -n "$TANDEM_SSL_CERTIFICATE" ]; then export TANDEM_SSL_CERTIFICATE; else unset TANDEM_SSL_CERTIFICATE; fi
    if [ -n "$TANDEM_SSL_KEY" ]; then export TANDEM_SSL_KEY; else unset TANDEM_SSL_KEY; fi
}

# The value of a top-level `key = value` line of the TOML config, unquoted
# (empty when the file or the key is missing). Enough for interface and port.
tandem_config_value() {
    [ -r "$TANDEMD_CONFIG" ] || return 0
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$TANDEMD_CONFIG" |
        sed 's/[[:space:]]*#.*$//; s/^"\(.*\)"$/\1/; s/^'"'"'\(.*\)'"'"'$/\1/' |
        head -n 1
}

# The local broker's address, from the config file: interface and port
# (127.0.0.1 when it listens on every address, 5672 by default); with
# require-encryption, amqps: and its ssl-port (5671 by default); with an
# ha-username, unless auth is off, that user@ (the cluster's user: on an auth
# cluster only it may check and promote).
tandem_local_address() {
    local host port user scheme=""
    host=$(tandem_config_value interface)
    port=$(tandem_config_value port)
    port=${port:-5672}
    case "$host" in
        "" | 0.0.0.0 | "::" | "[::]") host=127.0.0.1 ;;
    esac
    if [ "$(tandem_config_value require-encryption)" = true ]; then
        scheme=amqps:
        port=$(tandem_config_value ssl-port)
        port=${port:-5671}
    fi
    user=$(tandem_config_value ha-username)
    case "$(tandem_config_value auth)" in
        false | no) user="" ;;
        *) [ -z "$user" ] || user="$user@" ;;
    esac
    echo "$scheme$user$host:$port"
}

# The pid of the broker this script started, if it is still running: the pid
# file names a live process whose executable is $TANDEMD (a recycled pid is not
# ours, and is never signalled).
tandem_pid() {
    local pid exe want
    [ -r "$TANDEMD_PIDFILE" ] || return 1
    pid=$(head -n 1 "$TANDEMD_PIDFILE" 2>/dev/null)
    case "$pid" in
        "" | *[!0-9]*) return 1 ;;
    esac
    kill -0 "$pid" 2>/dev/null || return 1
    exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
    exe=${exe% (deleted)}
    want=$(readlink -f "$TANDEMD" 2>/dev/null) || want=$TANDEMD
    [ "$exe" = "$want" ] || return 1
    echo "$pid"
}

tandem_running() {
    tandem_pid >/dev/null
}

# tandem-ha against the local broker, with the check timeout.
tandem_ha() {
    "$TANDEM_HA" -b "$TANDEM_HA_BROKER" --timeout "$TANDEM_HA_TIMEOUT" "$@"
}

# Prints the local broker's HA status (joining, catchup, ready, recovering,
# active, standalone); fails when the broker does not answer.
tandem_ha_status() {
    tandem_ha status 2>/dev/null
}

# 0 when this joining broker may be promoted after a total failure: no other
# broker of the cluster has a newer store and every one answered
# (tandem-ha store-status --newest, what promote itself checks).
tandem_has_newest_store() {
    tandem_ha store-status --newest >/dev/null 2>&1
}

# The last lines of the broker's log, for error messages.
tandem_log_tail() {
    [ -r "$TANDEMD_LOG" ] && tail -n "${1:-5}" "$TANDEMD_LOG"
}

# Starts the broker in the background and waits until it answers tandem-ha
# ping. 0 when it answers (or was running already), 1 otherwise.
tandem_start() {
    local as_user group pid waited
    if tandem_running; then
        return 0
    fi
    if [ ! -x "$TANDEMD" ]; then
        tandem_note "tandemd: $TANDEMD is not an executable"
        return 5
    fi
    mkdir -p "$(dirname "$TANDEMD_PIDFILE")" "$(dirname "$TANDEMD_LOG")" || return 1
    as_user=""
    if [ -n "$TANDEMD_USER" ] && [ "$(id -u)" = 0 ]; then
        group=$(id -g "$TANDEMD_USER") || return 1
        chown "$TANDEMD_USER" "$(dirname "$TANDEMD_LOG")"
        as_user="setpriv --reuid=$TANDEMD_USER --regid=$group --init-groups"
    fi
    # A non-interactive shell's background job is no process-group leader, so
    # setsid execs in place and $! is the broker itself.
    # shellcheck disable=SC2086 # TANDEMD_OPTIONS and as_user are word lists
    setsid $as_user "$TANDEMD" --config "$TANDEMD_CONFIG" $TANDEMD_OPTIONS \
        </dev/null >>"$TANDEMD_LOG" 2>&1 &
    pid=$!
    echo "$pid" >"$TANDEMD_PIDFILE"
    waited=0
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            rm -f "$TANDEMD_PIDFILE"
            tandem_note "tandemd exited during start-up; the end of $TANDEMD_LOG:"
            tandem_log_tail 5 >&2
            return 1
        fi
        if "$TANDEM_HA" -b "$TANDEM_HA_BROKER" --timeout 1 ping >/dev/null 2>&1; then
            return 0
        fi
        if [ "$waited" -ge "$((TANDEMD_START_TIMEOUT * 10))" ]; then
            tandem_note "tandemd (pid $pid) does not answer at $TANDEM_HA_BROKER after ${TANDEMD_START_TIMEOUT}s: stopping it; the end of $TANDEMD_LOG:"
            tandem_log_tail 5 >&2
            tandem_stop
            return 1
        fi
        sleep 0.1 # poll until it answers (bounded: TANDEMD_START_TIMEOUT)
        waited=$((waited + 1))
    done
}

# SIGTERM, then SIGKILL after TANDEMD_STOP_TIMEOUT. 0 when no broker of ours
# runs any more (also when none did).
tandem_stop() {
    local pid waited
    if ! pid=$(tandem_pid); then
        rm -f "$TANDEMD_PIDFILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if [ "$waited" -ge "$((TANDEMD_STOP_TIMEOUT * 10))" ]; then
            tandem_note "tandemd (pid $pid) still running ${TANDEMD_STOP_TIMEOUT}s after SIGTERM: killing it"
            kill -KILL "$pid" 2>/dev/null
            break
        fi
        sleep 0.1 # poll until it exits (bounded: TANDEMD_STOP_TIMEOUT)
        waited=$((waited + 1))
    done
    rm -f "$TANDEMD_PIDFILE"
    return 0
}

# Runs every executable file of directory $1 in name order (hidden files and
# editor leftovers ending in ~ are skipped), with the broker's address and
# tools in the environment. Stops at the first that fails and returns 1.
tandem_run_hooks() {
    local dir hook
    dir=$1
    [ -n "$dir" ] && [ -d "$dir" ] || return 0
    for hook in "$dir"/*; do
        case "$hook" in
            *~ | */.*) continue ;;
        esac
        [ -f "$hook" ] && [ -x "$hook" ] || continue
        if ! TANDEM_HA="$TANDEM_HA" TANDEM_HA_BROKER="$TANDEM_HA_BROKER" \
            TANDEMD_CONFIG="$TANDEMD_CONFIG" "$hook"; then
            tandem_note "hook $hook failed"
            return 1
        fi
    done
    return 0
}

# Promotes the local broker to primary, running the hooks of TANDEMD_PRE_PROMOTE_DIR
# first (a failing hook prevents the promotion) and those of
# TANDEMD_POST_PROMOTE_DIR after it (their failure is only reported).
# Returns 0 when the broker is primary at the end.
tandem_promote() {
    local why
    if tandem_ha status --is-primary >/dev/null 2>&1; then
        return 0
    fi
    if ! tandem_run_hooks "${TANDEMD_PRE_PROMOTE_DIR:-}"; then
        tandem_note "not promoting $TANDEM_HA_BROKER: a pre-promote hook failed"
        return 1
    fi
    if ! why=$("$TANDEM_HA" -b "$TANDEM_HA_BROKER" --timeout "${TANDEMD_PROMOTE_TIMEOUT:-10}" \
        --cluster-manager promote 2>&1 >/dev/null); then
        # A promote that timed out may still have happened: ask before failing.
        if ! tandem_ha status --is-primary >/dev/null 2>&1; then
            tandem_note "promoting $TANDEM_HA_BROKER failed: $why"
            return 1
        fi
    fi
    tandem_run_hooks "${TANDEMD_POST_PROMOTE_DIR:-}" ||
        tandem_note "a post-promote hook failed; $TANDEM_HA_BROKER is primary anyway"
    return 0
}
