#!/usr/bin/env bash
# A single-node Ceph cluster (1 mon, 1 bluestore-on-file OSD) with the RADOS
# Gateway on free loopback ports, for tests and for trying ckptd's S3 tier.
#
#   scripts/dev-s3.sh start DIR      # prints CKPTD_S3_* lines to eval
#   scripts/dev-s3.sh stop DIR       # SIGTERM by PID (SIGKILL after 20 s)
#   scripts/dev-s3.sh kill DIR rgw|osd|mon   # SIGKILL one daemon (fault tests)
#   scripts/dev-s3.sh revive DIR     # start again whichever daemons are not running
#
# RGW serves plain HTTP and HTTPS (a certificate for its address, signed by
# a CA made here: DIR/tls/ca.pem); `start` prints both endpoints and the CA.
# Every daemon runs in the foreground (-f) with its PID kept in DIR/pids;
# every wait has a deadline, and a failed start prints the daemons' logs.
# CKPTD_DEV_S3_BLOCK_GIB sizes the OSD's block file (sparse; default 8).
# No cephx: RGW still checks S3 signatures. Needs root-free ports only;
# packages: ceph-mon ceph-osd radosgw ceph-common (scripts/install-deps.sh).
set -euo pipefail

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop|kill|revive DIR [DAEMON]" >&2; exit 2; }
IP=${CKPTD_DEV_S3_IP:-127.0.0.1}  # another loopback address inside a network namespace
export CEPH_CONF="$dir/ceph.conf"

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("'"$IP"'",0)); print(s.getsockname()[1])'
}

dump_logs() {
  for f in "$dir"/log/*.log "$dir"/*.out; do
    [[ -f "$f" ]] || continue
    echo "==== $f (last 40 lines)" >&2
    tail -n 40 "$f" >&2
  done
}

fail() {
  echo "dev-s3: $*" >&2
  dump_logs
  exit 1
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "$what not ready after ${limit}s"
    sleep 0.2
  done
}

# Running (a zombie nobody reaped yet is not).
alive() {
  [[ -f "$dir/pids/$1" ]] || return 1
  local state
  state=$(awk '{print $3}' "/proc/$(cat "$dir/pids/$1")/stat" 2>/dev/null) || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# run NAME COMMAND...: starts a daemon in the background, in the foreground
# mode of its own (-f), keeping its PID.
run() {
  local name=$1
  shift
  "$@" >"$dir/$name.out" 2>&1 &
  echo $! >"$dir/pids/$name"
}

start_mon() { run mon ceph-mon -f -i a; }
start_osd() { run osd ceph-osd -f -i 0; }
start_rgw() { run rgw radosgw -f -n client.rgw.a; }

osd_up() { ceph --connect-timeout 5 osd dump 2>/dev/null | grep -q '^osd.0 up'; }
rgw_up() { curl -s -o /dev/null --max-time 2 "http://$IP:$(cat "$dir/rgw_port")/"; }

case "$cmd" in
  start)
    mkdir -p "$dir"/{run,log,pids,rgw}
    dir=$(cd "$dir" && pwd)
    export CEPH_CONF="$dir/ceph.conf"
    mon_port=$(free_port)
    rgw_port=$(free_port)
    rgw_tls_port=$(free_port)
    echo "$rgw_port" >"$dir/rgw_port"
    mkdir -p "$dir/tls"
    (
      cd "$dir/tls"
      openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -keyout ca.key -out ca.pem -subj "/CN=ckptd dev-s3 CA" 2>/dev/null
      openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout rgw.key -out rgw.csr -subj "/CN=$IP" 2>/dev/null
      printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n' "$IP" >rgw.ext
      openssl x509 -req -in rgw.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile rgw.ext -out rgw.pem 2>/dev/null
    ) || fail "making the TLS certificate failed"
    fsid=$(uuidgen)
    cat >"$CEPH_CONF" <<EOF
[global]
fsid = $fsid
mon host = v2:$IP:$mon_port
public addr = $IP
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
keyring = /dev/null
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
paxos propose interval = 0.05
mon data avail warn = 1
mon data avail crit = 0
mon warn on insecure global id reclaim allowed = false
[mon]
mon data = $dir/mon.\$id
[osd]
osd data = $dir/osd.\$id
osd objectstore = bluestore
bluestore block path = $dir/osd.\$id.block
bluestore block create = true
bluestore block size = $((${CKPTD_DEV_S3_BLOCK_GIB:-8} << 30))
bluestore fsck on mount = false
osd memory target = 939524096
[client.rgw.a]
rgw data = $dir/rgw
rgw frontends = beast endpoint=$IP:$rgw_port ssl_endpoint=$IP:$rgw_tls_port ssl_certificate=$dir/tls/rgw.pem ssl_private_key=$dir/tls/rgw.key
rgw dns name =
ms mon client mode = crc
EOF
    monmaptool --create --fsid "$fsid" --addv a "[v2:$IP:$mon_port]" "$dir/monmap" >/dev/null
    ceph-mon --mkfs -i a --monmap "$dir/monmap" >"$dir/mkfs.out" 2>&1 || fail "ceph-mon --mkfs failed"
    start_mon
    osd_uuid=$(uuidgen)
    wait_for 30 "ceph-mon" ceph --connect-timeout 5 mon stat
    osd_id=$(ceph --connect-timeout 10 osd new "$osd_uuid") || fail "ceph osd new failed"
    [[ "$osd_id" == 0 ]] || fail "expected osd.0, got osd.$osd_id"
    mkdir -p "$dir/osd.0"
    ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >>"$dir/mkfs.out" 2>&1 || fail "ceph-osd --mkfs failed"
    start_osd
    wait_for 60 "ceph-osd" osd_up
    start_rgw
    wait_for 120 "radosgw" rgw_up
    access=ckptd$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
    secret=$(od -An -N20 -tx1 /dev/urandom | tr -d ' \n')
    radosgw-admin user create --uid=ckptd --display-name=ckptd --access-key="$access" \
      --secret-key="$secret" >"$dir/user.out" 2>&1 || fail "radosgw-admin user create failed"
    printf '%s\n%s\n' "$access" "$secret" >"$dir/credentials"
    chmod 600 "$dir/credentials"
    echo "CKPTD_S3_ENDPOINT=http://$IP:$rgw_port"
    echo "CKPTD_S3_HTTPS_ENDPOINT=https://$IP:$rgw_tls_port"
    echo "CKPTD_S3_CA_FILE=$dir/tls/ca.pem"
    echo "CKPTD_S3_ACCESS_KEY=$access"
    echo "CKPTD_S3_SECRET_KEY=$secret"
    ;;
  stop)
    for name in rgw osd mon; do
      [[ -f "$dir/pids/$name" ]] && kill -TERM "$(cat "$dir/pids/$name")" 2>/dev/null || true
    done
    deadline=$((SECONDS + 20))
    for name in rgw osd mon; do
      while alive "$name" && ((SECONDS < deadline)); do sleep 0.1; done
      alive "$name" && kill -KILL "$(cat "$dir/pids/$name")" 2>/dev/null || true
      rm -f "$dir/pids/$name"
    done
    ;;
  kill)
    name=${3:?which daemon: rgw, osd or mon}
    alive "$name" || fail "$name is not running"
    kill -KILL "$(cat "$dir/pids/$name")"
    while alive "$name"; do sleep 0.05; done
    ;;
  revive)
    alive mon || { start_mon; wait_for 30 "ceph-mon" ceph --connect-timeout 5 mon stat; }
    alive osd || { start_osd; wait_for 60 "ceph-osd" osd_up; }
    alive rgw || { start_rgw; wait_for 120 "radosgw" rgw_up; }
    ;;
  *)
    echo "usage: $0 start|stop|kill|revive DIR [DAEMON]" >&2
    exit 2
    ;;
esac
