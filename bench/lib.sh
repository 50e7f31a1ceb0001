# shellcheck shell=bash
# Shared helpers of the bench/ harnesses: sourced, not run.
#
# Every process started with `spawn` is recorded and stopped on exit (TERM, then KILL after
# 10 s), and the run's temporary directory is removed, whatever way the script ends.

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$BENCH_DIR/.." && pwd)"
TANSU="${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}"
CLK_TCK="$(getconf CLK_TCK)"

declare -a BENCH_PIDS=()
BENCH_TMP=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# resolves the chatpipe binary: $1, else $CHATPIPE_BIN, else target/release/chatpipe
resolve_bin() {
  local bin="${1:-${CHATPIPE_BIN:-$REPO_DIR/target/release/chatpipe}}"
  [ -x "$bin" ] || die "no chatpipe binary at $bin (build it with cargo build --release -p chatpipe, or pass its path)"
  (cd "$(dirname "$bin")" && echo "$(pwd)/$(basename "$bin")")
}

bench_tmp() {
  BENCH_TMP="$(mktemp -d "${TMPDIR:-/tmp}/chatpipe-bench.XXXXXX")"
}

stop_pid() {
  local pid="$1" i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  # newest first: clients before the broker they talk to
  for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
    stop_pid "${BENCH_PIDS[$i]}"
  done
  if [ -n "$BENCH_TMP" ] && [ -d "$BENCH_TMP" ]; then
    if [ "$rc" != 0 ]; then
      local f
      for f in $(find "$BENCH_TMP" -name '*.log' -newer "$BENCH_TMP" 2>/dev/null; find "$BENCH_TMP" -maxdepth 2 -name '*.log'); do
        [ -s "$f" ] && { echo "---- last lines of ${f#"$BENCH_TMP"/}" >&2; tail -5 "$f" >&2; }
      done | awk '!seen[$0]++' >&2
    fi
    if [ -n "${KEEP_TMP:-}" ]; then
      log "kept $BENCH_TMP (KEEP_TMP set)"
    else
      rm -rf "$BENCH_TMP"
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# spawn LOGFILE CMD ARGS… : runs CMD in the background, logs to LOGFILE, records its pid;
# the pid is left in $SPAWNED (the command itself: exec, no wrapper shell)
spawn() {
  local logfile="$1"
  shift
  "$@" >"$logfile" 2>&1 </dev/null &
  SPAWNED=$!
  BENCH_PIDS+=("$SPAWNED")
}

# interruptible CMD… : runs CMD (a program, not a shell function) to its end, but in the background, so that a signal to this
# script runs the exit trap at once (bash defers traps while a foreground command runs)
interruptible() {
  "$@" &
  local pid=$!
  BENCH_PIDS+=("$pid")
  wait "$pid"
}

# a TCP port nobody listens on now
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_port PORT [SECONDS [PID]] : until something accepts connections on 127.0.0.1:PORT;
# fails at once if PID (the process that should listen) has exited
wait_port() {
  local port="$1" secs="${2:-60}" pid="${3:-}" i
  for i in $(seq 1 $((secs * 5))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      die "process $pid exited before listening on port $port"
    fi
    sleep 0.2
  done
  die "nothing listens on port $port after $secs s"
}

# CPU seconds (user + system, all threads) a live process has used so far
cpu_seconds() {
  local pid="$1" stat
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || { echo "nan"; return; }
  # fields after the ")" that ends the command name: utime is the 12th, stime the 13th
  stat="${stat##*) }"
  # shellcheck disable=SC2086
  set -- $stat
  awk -v u="${12}" -v s="${13}" -v t="$CLK_TCK" 'BEGIN { printf "%.2f", (u + s) / t }'
}

# RSS of a live process in MiB
rss_mib() {
  awk '/^VmRSS:/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || echo "nan"
}

# run_timed OUTFILE CMD… : runs CMD in the foreground, its stdout to OUTFILE and stderr;
# leaves the CPU seconds it used (user + system, its children included) in $TIMED_CPU
run_timed() {
  local out="$1" t
  shift
  t="$( (
    "$@" >"$out"
    rc=$?
    times >"$out.times" # no pipe: a forked `times` would not see the children
    tail -1 "$out.times"
    exit $rc
  ))" || { cat "$out" >&2; die "failed: $*"; }
  cat "$out" >&2
  # `times`: "XmY.YYYs XmY.YYYs" (children's user and system)
  TIMED_CPU="$(echo "$t" | awk '{ n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } printf "%.1f", n }')"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ensure_venv DIR IMPORT PACKAGES… : a virtualenv at DIR where `import IMPORT` works
ensure_venv() {
  local dir="$1" import="$2"
  shift 2
  if ! "$dir/bin/python" -c "import $import" >/dev/null 2>&1; then
    log "creating Python virtualenv $dir with $*"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  fi
}

# start_tansu DIR PORT : a tansu broker on the SQLite engine (database in DIR), as chatpipe
# dev runs it; its pid in $TANSU_PID
start_tansu() {
  local dir="$1" port="$2"
  [ -x "$TANSU" ] || die "no tansu at $TANSU (scripts/setup installs it)"
  mkdir -p "$dir"
  (
    cd "$dir"
    exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
      --storage-engine sqlite://tansu.db
  ) >"$dir/tansu.log" 2>&1 </dev/null &
  TANSU_PID=$!
  BENCH_PIDS+=("$TANSU_PID")
  wait_port "$port" 60 "$TANSU_PID"
}

# The processor's producer is idempotent with librdkafka's message timeout of 30 s
# (common::kafka::producer_config). When tansu (SQLite engine, 2 shared cores) takes longer
# than that to acknowledge a produce, librdkafka bumps the producer epoch locally (KIP-360),
# and tansu 0.6 then panics in its storage ("more or less than one row",
# lite.rs idempotent_message_check) and refuses every request until restarted: the run
# is lost. Ingest guards against this itself (ingest/src/producer.rs); the processor does
# not, so the harnesses give it a message timeout long enough never to expire here.
TANSU_PRODUCER_OPTS=(--kafka-option message.timeout.ms=900000)

# fmt_int N : 1234567 → 1,234,567
fmt_int() { echo "${1%.*}" | sed -e ':a' -e 's/\B[0-9]\{3\}\>/,&/' -e 'ta'; }

# div A B [DECIMALS]
div() { awk -v a="$1" -v b="$2" -v d="${3:-0}" 'BEGIN { if (b == 0) print "nan"; else printf "%.*f", d, a / b }'; }
