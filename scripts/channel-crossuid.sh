#!/usr/bin/env bash
# The channel pods' posture on real GPUs: publisher uid 1000, subscribers uids 1001/1002 in
# group 2000, each in its own PID namespace, a 3770 directory of group 2000, the manifests' flags.
cd "$(dirname "$0")/.."   # the repository root; the examples are taken from bundle/examples
d=/tmp/chx; rm -rf $d; install -d -o 0 -g 2000 -m 3770 $d
b=/tmp/chbin; rm -rf $b; mkdir -p $b; cp bundle/examples/frame_* $b/; chmod 755 $b $b/*
pods="unshare --pid --fork --mount-proc"
$pods setpriv --reuid 1000 --regid 1000 --groups 2000 $b/frame_publisher --dir $d --gpu 0 --transport fd --group 2000 --subscribers 2 --policy block --frames 3000 --timeout 60 2>&1 | sed 's/^/[pub] /' &
sleep 1
$pods setpriv --reuid 1001 --regid 1001 --groups 2000 $b/frame_subscriber --dir $d --gpu 0 --group 2000 --trust-uid 1000 --frames 3000 2>&1 | sed 's/^/[sub0] /' &
$pods setpriv --reuid 1002 --regid 1002 --groups 2000 $b/frame_subscriber --dir $d --gpu 1 --group 2000 --trust-uid 1000 --frames 3000 2>&1 | sed 's/^/[sub1] /'
wait
ls -la $d
