# Shell helpers the service tests share (sourced once srcdir is set; the
# nginx ones use tmp): TAP output, the tools they need, and a private nginx on a
# free loopback port in front of the pool's socket.
n=0
failed=0
ok() {
    n=$((n + 1))
    if [ "$1" -eq 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=1; fi
}
diag() { echo "# $*"; }
skip() { n=$((n + 1)); echo "ok $n # SKIP $*"; }
bail() {
    echo "Bail out! $*"
    exit 1
}

# need_service_tools POOL ENGINE: nginx in $NGINX, curl, and the built programs.
need_service_tools() {
    NGINX=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; })
    [ -n "$NGINX" ] || bail "nginx is required (Debian: apt-get install nginx-light)"
    command -v curl > /dev/null || bail "curl is required (Debian: apt-get install curl)"
    [ -x "$1" ] && [ -x "$2" ] || bail "run from the build directory after make"
}

# start_nginx SEED [ADDR]: the project's private nginx configuration (made
# by scripts/nginx-local-conf) under $tmp/run, in front of
# $tmp/run/fcgi.sock, on the first free loopback port of five tried (SEED
# spreads concurrent tests apart), listening on ADDR at the same port too
# when given. Sets nginx_pid, port and B (the base URL); bails out when
# none starts.
start_nginx() {
    for try in 1 2 3 4 5; do
        port=$((20000 + ($$ * $1 + try * 977) % 40000))
        "$srcdir/scripts/nginx-local-conf" "$tmp/run" "$tmp/www" "unix:$tmp/run/fcgi.sock" "127.0.0.1:$port" |
            sed "s|listen 127.0.0.1:$port;|&${2:+ listen $2:$port;}|" > "$tmp/run/nginx.conf"
        "$NGINX" -p "$tmp/run" -e "$tmp/run/error.log" -c "$tmp/run/nginx.conf" 2>> "$tmp/run/start.log" &
        nginx_pid=$!
        i=0
        while [ $i -lt 50 ] && ! curl -s -o /dev/null "http://127.0.0.1:$port/health" 2> /dev/null; do
            kill -0 $nginx_pid 2> /dev/null || break
            sleep 0.1
            i=$((i + 1))
        done
        kill -0 $nginx_pid 2> /dev/null && break
        wait $nginx_pid 2> /dev/null
        nginx_pid=
    done
    [ -n "$nginx_pid" ] || bail "no private nginx could start: $(cat "$tmp/run/start.log")"
    B=http://127.0.0.1:$port
}

# wait_health: up to 5 s for $B/health to answer 200 (the pool behind nginx).
wait_health() {
    i=0
    while [ $i -lt 50 ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "$B/health")" != 200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
}
