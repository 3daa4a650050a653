#!/usr/bin/env bash
# Builds every test, example and bench executable in release mode and copies them, stripped,
# into DIR with a run-tests.sh, so the GPU tests can run on a GPU host without a Rust toolchain:
#
#   scripts/gpu-bundle.sh bundle            # here
#   (copy bundle/ to the GPU host)
#   bundle/run-tests.sh                     # there: every test binary with --include-ignored
#
# The executables link libcuda.so.1 dynamically; the GPU host's driver provides it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${1:?usage: scripts/gpu-bundle.sh DIR}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
rm -rf "$dir/tests" "$dir/examples" "$dir/benches"
mkdir -p "$dir/tests" "$dir/examples" "$dir/benches"
cd "$root"

artifacts() {
  # Prints "kind path" for every executable cargo builds with the given arguments.
  local release=--release
  [[ "$1" == bench ]] && release=""   # cargo bench builds in release already
  cargo "$@" $release --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kinds = m["target"]["kind"]
        kind = "tests" if m["profile"]["test"] and "bench" not in kinds else \
               "examples" if "example" in kinds else \
               "benches" if "bench" in kinds else None
        if kind:
            print(kind, m["executable"])
'
}

{
  artifacts test --no-run --features cudarc
  if compgen -G "examples/*.rs" >/dev/null; then artifacts build --examples; fi
  if compgen -G "benches/*.rs" >/dev/null; then artifacts bench --no-run; fi
} | sort -u | while read -r kind path; do
  name="$(basename "$path")"
  # Test and bench executables carry a hash suffix; keep the target name.
  [[ "$kind" == examples ]] || name="${name%-*}"
  [[ "$kind" == tests && "$name" == cuda_ipc ]] && name="unit"
  cp "$path" "$dir/$kind/$name"
  strip "$dir/$kind/$name"
done

# The Python package: its wheel (abi3, installs on the host's Python with --no-deps) and tests.
rm -rf "$dir/python"
mkdir -p "$dir/python"
scripts/python-test.sh --wheel "$dir/python" >/dev/null
cp -r python/tests "$dir/python/tests"
cp python/pyproject.toml "$dir/python/"
cat >"$dir/python/run-python-tests.sh" <<'PYRUN'
#!/usr/bin/env bash
# Installs the wheel into the host's Python (no network needed) and runs every Python test,
# the GPU ones included (CUDA_IPC_GPU_TESTS=1: a missing GPU fails them).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python3 -m pip install --quiet --force-reinstall --no-deps "$here"/cuda_ipc-*.whl || exit 1
cd "$here" && CUDA_IPC_GPU_TESTS=1 python3 -m pytest -q -rs -p no:cacheprovider --import-mode=importlib tests/test_gpu.py "$@"
PYRUN
chmod +x "$dir/python/run-python-tests.sh"

# The compile-fail tests run rustc: they need a toolchain, which a GPU host may lack (CI runs them).
rm -f "$dir/tests/compile_fail"

cat >"$dir/run-tests.sh" <<'RUN'
#!/usr/bin/env bash
# Runs every test executable of the bundle with --include-ignored (GPU tests included), one
# test at a time, and prints one summary line. Extra arguments go to every test executable.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
passed=0; failed=0; ignored=0; bad=()
for t in "$here"/tests/*; do
  echo "=== $(basename "$t")"
  out="$("$t" --include-ignored --test-threads=1 "$@" 2>&1)"; rc=$?
  printf '%s\n' "$out"
  line="$(printf '%s\n' "$out" | grep -E '^test result:' | tail -n 1)"
  p=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$line"); f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$line")
  i=$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<<"$line")
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); ignored=$((ignored + ${i:-0}))
  if [[ $rc -ne 0 || -z "$line" ]]; then bad+=("$(basename "$t")"); [[ -z "$line" ]] && failed=$((failed + 1)); fi
done
echo "gpu-bundle: ${passed} passed, ${failed} failed, ${ignored} ignored"
echo "=== python"
"$here/python/run-python-tests.sh" || bad+=("python")
[[ ${#bad[@]} -eq 0 ]] || { echo "failing executables: ${bad[*]}"; exit 1; }
RUN
chmod +x "$dir/run-tests.sh"
du -sh "$dir" | awk '{print "bundle: " $1 " in " $2}'
ls "$dir"/tests "$dir"/examples "$dir"/benches
