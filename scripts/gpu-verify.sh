#!/usr/bin/env bash
# The whole GPU verification in one go, on a GPU host, from a bundle made by gpu-bundle.sh:
#   scripts/gpu-verify.sh bundle OUTDIR [tests,demo,channel,matrix,benches]
# Writes one log per step into OUTDIR and prints a summary at the end.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$(cd "${1:?bundle dir}" && pwd)"; out="${2:?output dir}"; steps="${3:-tests,demo,channel,matrix,benches}"
mkdir -p "$out"
summary=()
has() { [[ ",$steps," == *",$1,"* ]]; }
machine="$({ nvidia-smi -L; nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1; uname -r; date -u; } 2>&1)"

if has tests; then
  "$bundle/run-tests.sh" >"$out/tests.log" 2>&1
  summary+=("tests: $(tail -n 2 "$out/tests.log" | tr '\n' ' ')")
fi
if has demo; then
  : >"$out/demo.log"
  for args in "--transport fd" "--transport legacy" "--transport fd --import-on 1" "--transport legacy --import-on 1" "--transport fd --pods" "--transport legacy --pods"; do
    echo "### scripts/demo.sh $args" >>"$out/demo.log"
    EXAMPLES_DIR="$bundle/examples" timeout 200 "$root/scripts/demo.sh" $args --timeout 30 >>"$out/demo.log" 2>&1
    summary+=("demo $args: $(tail -n 1 "$out/demo.log")")
  done
fi
if has channel; then
  : >"$out/channel.log"
  for args in "--frames 2000" "--policy drop-oldest --frames 2000" \
      "--subscribers 3 --cpu-subscriber --frames 1000" "--transport legacy --frames 500" \
      "--pods --non-root --frames 2000"; do
    echo "### scripts/demo.sh --channel $args" >>"$out/channel.log"
    EXAMPLES_DIR="$bundle/examples" timeout 200 "$root/scripts/demo.sh" --channel $args >>"$out/channel.log" 2>&1
    summary+=("channel demo $args: $(tail -n 1 "$out/channel.log")")
  done
fi
if has matrix; then
  EXAMPLES_DIR="$bundle/examples" timeout 400 "$root/scripts/security-matrix.sh" >"$out/security-matrix.md" 2>"$out/security-matrix.err"
  summary+=("matrix: exit $? ($(grep -c '^| [0-9]' "$out/security-matrix.md") rows)")
fi
if has benches; then
  for b in ipc_open transfer handoff; do
    (cd "$out" && timeout 300 "$bundle/benches/$b" --bench --noplot >"$out/bench-$b.log" 2>&1)
    summary+=("bench $b: exit $?")
  done
fi
{ echo "$machine"; printf '%s\n' "${summary[@]}"; } | tee "$out/summary.txt"
