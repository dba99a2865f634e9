#!/usr/bin/env bash
# A high-latency disk on any Linux machine where root may mount FUSE and loop devices (no
# device-mapper, nbd or null_blk needed): an ext4 on a loop device whose file is served by
# slow_disk_server.py, which completes every request LATENCY ms after it arrives (plus its
# transfer time at MBPS), up to DEPTH requests at once. One request in flight: one per round
# trip; many in flight: up to the bandwidth, as on a network or parallel filesystem's disk.
#
#   sudo benchmarks/slow_disk.sh up   [DIR]   # prints the mounted folder: DIR/mnt
#   sudo benchmarks/slow_disk.sh down [DIR]   # unmounts and removes what `up` made, nothing else
#   benchmarks/slow_disk.sh status    [DIR]
#
# DIR defaults to /tmp/nanokern-slowdisk (its backing file, sparse, lives there: on the host's
# real disk). Settings, from the environment: LATENCY_MS (20), MBPS (500; 0: unlimited), DEPTH
# (64), SIZE_GB (6). The defaults make a disk like a cloud VM's network disk: `dd bs=16M
# oflag=direct` (one request in flight) about 3.4 s per GB, writeback with many in flight about
# 2 s. The loop device's writeback throttling (wbt) gets the latency target a VM's virtio disk
# reports (75 ms, a rotational device's default): with a loop device's own (2 ms, as for an SSD)
# the kernel would cut background writeback to one request in flight on any high-latency disk. `up` refuses a DIR it did not make; `down` touches only what its marker names
# (the loop device, checked against its backing file; the server, checked by its command line).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CMD=${1:-status}
DIR=${2:-/tmp/nanokern-slowdisk}
MARK="$DIR/.nanokern-slowdisk"
LATENCY_MS=${LATENCY_MS:-20} MBPS=${MBPS:-500} DEPTH=${DEPTH:-64} SIZE_GB=${SIZE_GB:-6}
PY=${PYTHON:-python3}

die() { echo "slow_disk.sh: $*" >&2; exit 1; }
field() { sed -n "s/^$1=//p" "$MARK" 2>/dev/null; }
mounted() { grep -q " $1 " /proc/mounts; }

up() {
  [ "$(id -u)" = 0 ] || die "needs root (FUSE mount, loop device, mkfs)"
  if [ -e "$DIR" ]; then
    [ -f "$MARK" ] && die "$DIR: already set up (\`$0 down $DIR\` first)"
    [ -z "$(ls -A "$DIR")" ] || die "$DIR: exists, is not empty and was not made by this script; choose another DIR"
  fi
  mkdir -p "$DIR/fuse" "$DIR/mnt"
  echo "made_by=slow_disk.sh" > "$MARK"
  truncate -s "${SIZE_GB}G" "$DIR/backing.img"
  "$PY" "$HERE/slow_disk_server.py" "$DIR/backing.img" "$DIR/fuse" --latency-ms "$LATENCY_MS" --mbps "$MBPS" \
    --depth "$DEPTH" --ready "$DIR/.ready" --stats "$DIR/stats" > "$DIR/server.log" 2>&1 &
  echo "server=$!" >> "$MARK"
  for _ in $(seq 100); do [ -f "$DIR/.ready" ] && break; sleep 0.1; done
  [ -f "$DIR/.ready" ] || { cat "$DIR/server.log" >&2; down; die "the server did not start"; }
  LOOP=$(losetup --find --show --direct-io=on "$DIR/fuse/disk.img")
  echo "loop=$LOOP" >> "$MARK"
  [ "$(cat "/sys/block/${LOOP#/dev/}/loop/dio" 2>/dev/null)" = 1 ] || echo "slow_disk.sh: warning: $LOOP is not in direct-I/O mode" >&2
  echo 75000 > "/sys/block/${LOOP#/dev/}/queue/wbt_lat_usec" 2>/dev/null || echo "slow_disk.sh: warning: wbt not set" >&2
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$LOOP"
  mount -o nodiscard "$LOOP" "$DIR/mnt"
  echo "mnt=$DIR/mnt" >> "$MARK"
  chmod 1777 "$DIR/mnt"
  echo "$DIR/mnt: ext4 on $LOOP, ${LATENCY_MS} ms per request, bandwidth ${MBPS} MB/s (0: unlimited), $DEPTH requests at once"
}

down() {
  [ -f "$MARK" ] || die "$DIR: no marker of this script: nothing to take down"
  local loop server
  loop=$(field loop) server=$(field server)
  if mounted "$DIR/mnt"; then umount "$DIR/mnt"; fi
  if [ -n "$loop" ] && losetup "$loop" 2>/dev/null | grep -qF "$DIR/fuse/disk.img"; then losetup -d "$loop"; fi
  if mounted "$DIR/fuse"; then umount "$DIR/fuse"; fi
  if [ -n "$server" ] && grep -qaF slow_disk_server.py "/proc/$server/cmdline" 2>/dev/null; then
    kill "$server" 2>/dev/null || true
  fi
  rm -f "$DIR/backing.img" "$DIR/.ready" "$DIR/stats" "$DIR/stats.tmp" "$DIR/server.log" "$MARK"
  rmdir "$DIR/fuse" "$DIR/mnt" "$DIR"
  echo "$DIR: taken down"
}

status() {
  [ -f "$MARK" ] || { echo "$DIR: not set up"; return 0; }
  cat "$MARK"
  mounted "$DIR/mnt" && df -h "$DIR/mnt" | tail -1 || echo "$DIR/mnt: not mounted"
}

case "$CMD" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status [DIR]" ;;
esac
