#!/bin/sh
# The nginx configurations: both parse (nginx -t), the private one and the
# system one carry the same server body, and a private nginx with no pool
# behind it serves www/ and answers API requests with sdworker's JSON error
# shape (502 + Retry-After when the pool is down, 413 for a big body, 400 for
# a request it cannot parse, 504 when the pool does not answer), HEAD
# included; the generated configuration keeps the template's comments.
srcdir=${srcdir:-.}
n=0
failed=0
ok() {
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi
}
NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; })
if [ -z "$NGINX" ]; then
    echo "1..0 # SKIP nginx is not installed"
    exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sdw-nginx.XXXXXX")
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# The server body: after the `root` line up to the server block's "}".
awk '/^    root /{on=1; next} on' "$srcdir/conf/nginx/sdworker.conf.in" | sed '$d' > "$tmp/system.body"
awk '/^        root /{on=1; next} on' "$srcdir/conf/nginx/nginx-local.conf.in" | sed '$d' | sed '$d' |
    sed 's/^    //' > "$tmp/local.body"
diff -u "$tmp/system.body" "$tmp/local.body" >&2
ok $? "sdworker.conf.in and nginx-local.conf.in have the same server body"
[ "$(wc -l < "$tmp/system.body")" -gt 50 ]
ok $? "the server body was found"

mkdir -p "$tmp/run"
gen_local() {
    "$srcdir/scripts/nginx-local-conf" "$tmp/run" "$(cd "$srcdir/www" && pwd)" "unix:$tmp/run/fcgi.sock" \
        "127.0.0.1:$1" > "$tmp/run/nginx.conf"
}
gen_local 8080
"$NGINX" -t -q -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/run/nginx.conf" 2>&2
ok $? "nginx -t accepts the substituted nginx-local.conf.in"
grep '^[[:space:]]*#' "$srcdir/conf/nginx/nginx-local.conf.in" > "$tmp/comments.in"
tail -n +3 "$tmp/run/nginx.conf" | grep '^[[:space:]]*#' | diff -u "$tmp/comments.in" - >&2 &&
    ! grep -v '^[[:space:]]*#' "$tmp/run/nginx.conf" | grep -Eq '@(RUNDIR|WWWDIR|SOCKET|LISTEN)@'
ok $? "the generated nginx.conf keeps every comment as written and fills in every placeholder"

# Every status nginx may answer itself has a JSON body of the API's shape,
# in both configurations (the running test below provokes those it can).
bad=0
for f in sdworker.conf.in nginx-local.conf.in; do
    [ "$(grep -c '^ *error_page [0-9]* = @sdw_' "$srcdir/conf/nginx/$f")" -ge 6 ] || bad=1
    for st in $(sed -n 's/^ *error_page \([0-9]*\) = @sdw_[0-9]*;$/\1/p' "$srcdir/conf/nginx/$f"); do
        awk -v st="$st" '$1 == "location" && $2 == "@sdw_" st { on = 1 } on && /^ *}/ { exit }
            on && $1 == "return" && $2 == st && $3 ~ /^.\{"error":\{"code":"[a-z_]+","message":"/ { found = 1 }
            on && /default_type application\/json;/ { json = 1 } END { exit !(found && json) }' \
            "$srcdir/conf/nginx/$f" || { echo "# $f: no JSON answer for $st" >&2; bad=1; }
    done
done
ok $bad "400, 413, 500, 502, 503 and 504 each answer application/json with {\"error\":{\"code\",\"message\"}}"

cat > "$tmp/system.conf" <<EOC
pid $tmp/run/system.pid;
events { worker_connections 16; }
http {
    client_body_temp_path $tmp/run/cb; proxy_temp_path $tmp/run/px;
    fastcgi_temp_path $tmp/run/fc; uwsgi_temp_path $tmp/run/uw; scgi_temp_path $tmp/run/sc;
    include $(pwd)/conf/nginx/sdworker.conf;
}
EOC
"$NGINX" -t -q -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/system.conf" 2>&2
ok $? "nginx -t accepts conf/nginx/sdworker.conf inside an http block"

if ! command -v curl > /dev/null; then
    echo "ok $((n + 1)) # SKIP curl is not installed"
    echo "1..$((n + 1))"
    exit $failed
fi
# A private nginx on a free port: retry a few ports if one is taken.
for try in 1 2 3 4 5; do
    port=$((20000 + ($$ * 7 + try * 977) % 40000))
    gen_local $port
    "$NGINX" -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/run/nginx.conf" 2>> "$tmp/run/start.log" &
    pid=$!
    i=0
    while [ $i -lt 50 ] && ! curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; do
        kill -0 $pid 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    kill -0 $pid 2>/dev/null && break
    wait $pid 2>/dev/null
    pid=
done
[ -n "$pid" ]
ok $? "a private nginx started on 127.0.0.1:$port"
if [ -z "$pid" ]; then
    cat "$tmp/run/start.log" "$tmp/run/error.log" >&2
    echo "1..$n"
    exit 1
fi
base="http://127.0.0.1:$port"

curl -s "$base/" > "$tmp/index.html" && cmp -s "$tmp/index.html" "$srcdir/www/index.html"
ok $? "GET / serves www/index.html"
ct=$(curl -s -o /dev/null -w '%{content_type}' "$base/app.js")
[ "$ct" = "application/javascript" ]
ok $? "app.js is served as application/javascript ($ct)"

curl -s -D "$tmp/h" -o "$tmp/b" "$base/health"
grep -q '^HTTP/1.1 502' "$tmp/h" && grep -qi '^Retry-After: 5' "$tmp/h" &&
    grep -qi '^Content-Type: application/json' "$tmp/h"
ok $? "/health without a pool: 502, Retry-After, JSON"
grep -q '^{"error":{"code":"bad_gateway","message":"[^"]*"}}$' "$tmp/b"
ok $? "the 502 body has the JSON error shape"
curl -s -I -o "$tmp/h" -w '%{size_download}' "$base/health" > "$tmp/size"
grep -q '^HTTP/1.1 502' "$tmp/h" && grep -qi '^Content-Type: application/json' "$tmp/h" && [ "$(cat "$tmp/size")" = 0 ]
ok $? "HEAD /health without a pool: the same 502 and Content-Type, no body"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' "$base/v1/jobs/job-x/stream")
[ "$code" = 502 ] && grep -q '"code":"bad_gateway"' "$tmp/b"
ok $? "/v1/ paths go to the pool too ($code)"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' "$base/v1")
[ "$code" = 502 ] && grep -q '"code":"bad_gateway"' "$tmp/b"
ok $? "so does /v1 itself ($code)"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' "$base/metrics")
[ "$code" = 502 ] && grep -q '"code":"bad_gateway"' "$tmp/b"
ok $? "and /metrics ($code)"
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/ready/x")
[ "$code" = 404 ]
ok $? "/ready/x is not an API path ($code)"
code=$(curl -s -o "$tmp/b" -D "$tmp/h" -w '%{http_code}' -H 'Host: a b' "$base/v1/models")
[ "$code" = 400 ] && grep -qi '^Content-Type: application/json' "$tmp/h" &&
    grep -q '^{"error":{"code":"invalid_request","message":"[^"]*"}}$' "$tmp/b"
ok $? "a request nginx cannot parse (a Host with a space): 400 as JSON ($code)"

head -c 34000000 /dev/zero > "$tmp/big"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$tmp/big" "$base/v1/jobs")
[ "$code" = 413 ] && grep -q '^{"error":{"code":"payload_too_large"' "$tmp/b"
ok $? "a body over 32 MiB: 413 with the JSON error shape ($code)"
rm -f "$tmp/big"

# A pool that accepts and never answers, behind a read timeout of 1 s: 504.
if command -v python3 > /dev/null; then
    kill "$pid" 2> /dev/null
    wait "$pid" 2> /dev/null
    sed -i 's/fastcgi_read_timeout [0-9a-z]*;/fastcgi_read_timeout 1s;/' "$tmp/run/nginx.conf"
    python3 -c 'import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
conns = []
while True: conns.append(s.accept()[0])' "$tmp/run/fcgi.sock" &
    mute=$!
    "$NGINX" -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/run/nginx.conf" 2>> "$tmp/run/start.log" &
    pid=$!
    i=0
    while [ $i -lt 50 ] && { [ ! -S "$tmp/run/fcgi.sock" ] || ! curl -s -o /dev/null "$base/"; }; do
        sleep 0.1
        i=$((i + 1))
    done
    code=$(curl -s -o "$tmp/b" -D "$tmp/h" -w '%{http_code}' --max-time 10 "$base/v1/models")
    kill "$mute"
    [ "$code" = 504 ] && grep -qi '^Content-Type: application/json' "$tmp/h" &&
        grep -q '^{"error":{"code":"gateway_timeout","message":"[^"]*"}}$' "$tmp/b"
    ok $? "a pool that does not answer within fastcgi_read_timeout: 504 as JSON ($code)"
else
    echo "ok $((n += 1)) # SKIP python3 is not installed (the silent pool of the 504 check)"
fi

echo "1..$n"
exit $failed
