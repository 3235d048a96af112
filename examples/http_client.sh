#!/usr/bin/env bash
# A client in any language, here the shell: curl against the REST adapter (docs/rest.md).
#
#   asyncipc broker --http 127.0.0.1:8080 &
#   examples/http_client.sh http://127.0.0.1:8080
#
# Subscribes with Server-Sent Events, publishes two messages (one with a header), reads
# them back, then asks `demo.echo` (answered if a service serves it, else a 503 with
# "no_responders"). $ASYNCIPC_TOKEN, if set, is sent as the bearer token. Exits 0.
set -euo pipefail

BASE="${1:-http://127.0.0.1:8080}"
AUTH=()
if [[ -n "${ASYNCIPC_TOKEN:-}" ]]; then
    AUTH=(-H "Authorization: Bearer ${ASYNCIPC_TOKEN}")
fi

echo "health: $(curl -sS "$BASE/healthz")"

# The event stream ends by itself after two messages (count=2).
events="$(mktemp)"
trap 'rm -f "$events"' EXIT
curl -sS -N "${AUTH[@]}" "$BASE/v1/subscribe/greetings.*?count=2" >"$events" &
reader=$!
for _ in $(seq 100); do  # until the subscription is in effect (at most 10 s)
    grep -q '^event: subscribed' "$events" && break
    sleep 0.1
done

curl -sS "${AUTH[@]}" --data-binary 'hello from curl' "$BASE/v1/publish/greetings.en"
curl -sS "${AUTH[@]}" -H 'X-Asyncipc-Header-Lang: fr' --data-binary 'bonjour' \
    "$BASE/v1/publish/greetings.fr"
wait "$reader"

# Each message is one `data:` line of JSON, its payload in base64.
grep '^data: .*"data":"' "$events" | sed 's/^data: //' | while read -r event; do
    subject="$(sed -E 's/.*"subject":"([^"]*)".*/\1/' <<<"$event")"
    payload="$(sed -E 's/.*"data":"([^"]*)".*/\1/' <<<"$event" | base64 -d)"
    echo "received on $subject: $payload"
done

# A request: the reply is the body; errors are JSON with their HTTP status.
reply="$(curl -sS "${AUTH[@]}" -w ' (HTTP %{http_code})' --data-binary 'ping' \
    "$BASE/v1/request/demo.echo?timeout=2")"
echo "request demo.echo: $reply"
