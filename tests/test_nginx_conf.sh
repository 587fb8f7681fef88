#!/bin/sh
# The nginx configurations: both parse (nginx -t), the private one and the
# system one carry the same server body, and a private nginx with no pool
# behind it serves www/ and answers API requests with sdworker's JSON error
# shape (503 + Retry-After when the pool is down, 413 for a big body).
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
    sed -e "s|@RUNDIR@|$tmp/run|g" -e "s|@WWWDIR@|$(cd "$srcdir/www" && pwd)|g" \
        -e "s|@SOCKET@|unix:$tmp/run/fcgi.sock|g" -e "s|@LISTEN@|127.0.0.1:$1|g" \
        "$srcdir/conf/nginx/nginx-local.conf.in" > "$tmp/run/nginx.conf"
}
gen_local 8080
"$NGINX" -t -q -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/run/nginx.conf" 2>&2
ok $? "nginx -t accepts the substituted nginx-local.conf.in"

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
grep -q '^HTTP/1.1 503' "$tmp/h" && grep -qi '^Retry-After: 5' "$tmp/h" &&
    grep -qi '^Content-Type: application/json' "$tmp/h"
ok $? "/health without a pool: 503, Retry-After, JSON"
grep -q '^{"error":{"code":"unavailable","message":"[^"]*"}}$' "$tmp/b"
ok $? "the 503 body has the JSON error shape"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' "$base/v1/jobs/job-x/stream")
[ "$code" = 503 ] && grep -q '"code":"unavailable"' "$tmp/b"
ok $? "/v1/ paths go to the pool too ($code)"
code=$(curl -s -o /dev/null -w '%{http_code}' "$base/ready/x")
[ "$code" = 404 ]
ok $? "/ready/x is not an API path ($code)"

head -c 34000000 /dev/zero > "$tmp/big"
code=$(curl -s -o "$tmp/b" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary "@$tmp/big" "$base/v1/jobs")
[ "$code" = 413 ] && grep -q '^{"error":{"code":"payload_too_large"' "$tmp/b"
ok $? "a body over 32 MiB: 413 with the JSON error shape ($code)"

echo "1..$n"
exit $failed
