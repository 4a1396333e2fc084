#!/usr/bin/env bash
# Build the image and prove it works, against a PostgreSQL and a Redis on this host:
#
#   deploy/image-check.sh                      # or: make image-check
#   HOLDFAST_CHECK_PG=postgresql://user@host:5432/postgres HOLDFAST_CHECK_REDIS=redis://host:6379/0 \
#     deploy/image-check.sh
#
# It checks what the Dockerfile promises: the image runs as a non-root user and has a health
# check; `holdfast migrate` and `holdfast demo` run from it; the server and the consumers start
# in production mode and Docker reports both healthy; a signed authorisation is approved and its
# replay gets the same answer; a wrongly signed one is refused; both stop cleanly on SIGTERM
# (exit 0); `holdfast verify` finds the ledger sound. The containers use the host's network, so
# the defaults reach the services on 127.0.0.1. Everything it makes (a database of its own,
# Redis keys under a prefix of its own, the containers) is removed at the end; the image stays.
# Needs: docker (a running daemon), python3.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${HOLDFAST_CHECK_IMAGE:-holdfast:check}
PG_ADMIN=${HOLDFAST_CHECK_PG:-postgresql://root@127.0.0.1:5432/postgres}
REDIS=${HOLDFAST_CHECK_REDIS:-redis://127.0.0.1:6379/0}
PORT=${HOLDFAST_CHECK_PORT:-18080}
METRICS_PORT=${HOLDFAST_CHECK_METRICS_PORT:-19108}
RUN_ID="imagecheck$$"
DB_URL="${PG_ADMIN%/*}/holdfast_${RUN_ID}"
PREFIX="hf${RUN_ID}:"
SECRET="image-check-secret-${RUN_ID}"
SERVER="holdfast-${RUN_ID}-server"
CONSUMERS="holdfast-${RUN_ID}-consumers"

ENV=(-e HOLDFAST_DATABASE_URL="$DB_URL" -e HOLDFAST_REDIS_URL="$REDIS"
     -e HOLDFAST_REDIS_PREFIX="$PREFIX" -e HOLDFAST_PORT="$PORT"
     -e HOLDFAST_CONSUMER_METRICS_PORT="$METRICS_PORT" -e HOLDFAST_WEBHOOK_SECRET="$SECRET"
     -e HOLDFAST_ADMIN_TOKENS="image-check-admin-${RUN_ID}=admin")
in_image() { docker run --rm --network host "${ENV[@]}" "$IMAGE" "$@"; }
fail() { echo "image-check: FAIL: $*" >&2; exit 1; }
step() { echo "image-check: $*"; }

cleanup() {
    docker rm -f "$SERVER" "$CONSUMERS" >/dev/null 2>&1 || true
    # the image holds asyncpg and redis-py: it cleans up after itself, no client needed here
    in_image python -c "
import asyncio, asyncpg, redis
async def main():
    conn = await asyncpg.connect('$PG_ADMIN')
    await conn.execute('DROP DATABASE IF EXISTS holdfast_${RUN_ID} WITH (FORCE)')
    await conn.close()
asyncio.run(main())
r = redis.Redis.from_url('$REDIS')
for key in r.scan_iter(match='${PREFIX}*', count=1000):
    r.delete(key)
" >/dev/null 2>&1 || echo "image-check: could not remove database holdfast_${RUN_ID} or keys ${PREFIX}*" >&2
}
trap cleanup EXIT

step "building $IMAGE"
docker build --quiet -t "$IMAGE" . >/dev/null

user=$(docker image inspect -f '{{.Config.User}}' "$IMAGE")
[[ -n "$user" && "${user%%:*}" != 0 && "${user%%:*}" != root ]] || fail "the image runs as root ('$user')"
docker image inspect -f '{{.Config.Healthcheck.Test}}' "$IMAGE" | grep -q healthz \
    || fail "the image has no health check on /healthz"
step "runs as $user, health check on /healthz"

in_image holdfast migrate --create-db >/dev/null
in_image holdfast demo >/dev/null
step "migrate and demo ran"

docker run -d --name "$SERVER" --init --network host "${ENV[@]}" "$IMAGE" >/dev/null
docker run -d --name "$CONSUMERS" --init --network host "${ENV[@]}" \
    --health-cmd "python -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:${METRICS_PORT}/metrics', timeout=2)\"" \
    --health-interval 5s --health-start-period 10s "$IMAGE" holdfast consumers >/dev/null
for name in "$SERVER" "$CONSUMERS"; do
    for _ in $(seq 1 90); do
        health=$(docker inspect -f '{{.State.Health.Status}}' "$name")
        [[ "$health" == healthy ]] && break
        [[ "$(docker inspect -f '{{.State.Running}}' "$name")" == true ]] \
            || { docker logs "$name" 2>&1 | tail -20 >&2; fail "$name exited"; }
        sleep 1
    done
    [[ "$health" == healthy ]] || { docker logs "$name" 2>&1 | tail -20 >&2; fail "$name is $health"; }
done
step "server and consumers healthy"

python3 - "$PORT" "$SECRET" "$RUN_ID" <<'EOF'
import hashlib, hmac, json, sys, time, urllib.error, urllib.request

port, secret, run_id = sys.argv[1], sys.argv[2], sys.argv[3]
body = json.dumps({"id": f"{run_id}-1", "card_id": "card-alice", "amount": 1250,
                   "currency": "GBP", "channel": "contactless",
                   "merchant": {"id": "m-1", "name": "Corner Cafe", "mcc": "5812",
                                "country": "GB"}}).encode()


def authorize(signature: str) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/authorize", data=body,
                                     headers={"Holdfast-Signature": signature})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


t = str(int(time.time()))
good = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
first, replay = authorize(f"t={t},v1={good}"), authorize(f"t={t},v1={good}")
assert first[0] == 200 and first[1]["decision"] == "approve", first
assert replay == first, (first, replay)
bad = authorize(f"t={t},v1={'0' * 64}")
assert bad[0] == 401 and bad[1]["error"]["code"] == "bad_signature", bad
print("image-check: approved once, replay answered alike, bad signature refused (401)")
EOF

docker stop --time 35 "$SERVER" "$CONSUMERS" >/dev/null
for name in "$SERVER" "$CONSUMERS"; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
    [[ "$code" == 0 ]] || { docker logs "$name" 2>&1 | tail -20 >&2; fail "$name exited $code on SIGTERM"; }
done
step "both stopped on SIGTERM with exit 0"

in_image holdfast verify >/dev/null || fail "holdfast verify found a violation"
step "holdfast verify: clean"
echo "image-check: PASS ($IMAGE)"
