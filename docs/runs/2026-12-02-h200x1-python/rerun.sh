#!/usr/bin/env bash
set -uo pipefail
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; R="$(cd "$B/.." && pwd)"; O="${OUT:?}"
timeout 200 "$B/python/run-python-tests.sh" -k "drop_oldest or dropped_while or another_stream or careless or channel or publisher_that_dies" > "$O/python-tests.log" 2>&1; echo "py rc $?: $(tail -1 "$O/python-tests.log")"
cd "$R" && timeout 150 python3 python/bench/run_all.py --out /tmp/pyb --sizes 1,16 --subscribers 4 --versions 12 --versions-large 5 > /tmp/pyb.log 2>&1; echo "bench rc $?"
cp /tmp/pyb/results.md "$O/pybench-results.md"; tar czf "$O/pybench.tgz" -C /tmp pyb pyb.log
grep -E "^FAILED|^E  " "$O/python-tests.log" | head -20
