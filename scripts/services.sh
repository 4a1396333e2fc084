#!/usr/bin/env bash
# Make sure PostgreSQL and Redis answer for `make run`.
# 1. Already reachable at the configured (or default) addresses: nothing to do.
# 2. Otherwise, if their binaries are installed, start throwaway ones under .holdfast/ and write
#    .holdfast/env with the URLs to use.
# 3. Otherwise, say exactly how to get them, and fail.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .holdfast
: > .holdfast/env

py=".venv/bin/python"
reachable() {  # host port
  "$py" - "$1" "$2" <<'PY'
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close()
except OSError:
    sys.exit(1)
PY
}

db_url="${HOLDFAST_DATABASE_URL:-postgresql://root@127.0.0.1:5432/holdfast}"
redis_url="${HOLDFAST_REDIS_URL:-redis://127.0.0.1:6379/0}"
hostport() { "$py" -c 'import sys, urllib.parse as u; p = u.urlparse(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or int(sys.argv[2]))' "$1" "$2"; }

read -r pg_host pg_port < <(hostport "$db_url" 5432)
if reachable "$pg_host" "$pg_port"; then
  echo "PostgreSQL: $pg_host:$pg_port is up"
else
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$bindir" ] && [ -x "$bindir/initdb" ]; then
    port=55432
    if [ ! -d .holdfast/pg ]; then
      "$bindir/initdb" -D .holdfast/pg -U root --auth=trust >/dev/null
    fi
    if ! reachable 127.0.0.1 "$port"; then
      "$bindir/pg_ctl" -D .holdfast/pg -l .holdfast/pg.log -o "-p $port -k $PWD/.holdfast -c listen_addresses=127.0.0.1" -w start >/dev/null
    fi
    echo "HOLDFAST_DATABASE_URL=postgresql://root@127.0.0.1:$port/holdfast" >> .holdfast/env
    echo "PostgreSQL: started a throwaway server on 127.0.0.1:$port (data in .holdfast/pg)"
  else
    echo "PostgreSQL is not reachable at $pg_host:$pg_port and is not installed." >&2
    echo "Install it (Debian: apt-get install postgresql) or set HOLDFAST_DATABASE_URL." >&2
    exit 1
  fi
fi

read -r rd_host rd_port < <(hostport "$redis_url" 6379)
if reachable "$rd_host" "$rd_port"; then
  echo "Redis: $rd_host:$rd_port is up"
elif command -v redis-server >/dev/null; then
  port=56379
  if ! reachable 127.0.0.1 "$port"; then
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --dir "$PWD/.holdfast" --logfile "$PWD/.holdfast/redis.log"
    sleep 0.3
  fi
  echo "HOLDFAST_REDIS_URL=redis://127.0.0.1:$port/0" >> .holdfast/env
  echo "Redis: started a throwaway server on 127.0.0.1:$port"
else
  echo "Redis is not reachable at $rd_host:$rd_port and is not installed." >&2
  echo "Install it (Debian: apt-get install redis-server) or set HOLDFAST_REDIS_URL." >&2
  exit 1
fi
