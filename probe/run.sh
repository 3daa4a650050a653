set -x
for a in "0 0 0 -1" "0 0 1 -1" "0 1 0 -1" "0 1 1 -1" "0 0 0 65534" "0 1 0 65534"; do timeout 30 ./probe $a; done
