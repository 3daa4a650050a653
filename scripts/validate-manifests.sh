#!/usr/bin/env bash
# Validates every manifest under deploy/k8s against the Kubernetes API schemas of the versions
# it targets (kubernetes-validate, strict: unknown fields fail). "Couldn't find schema" (an API
# version that a Kubernetes version does not serve) is a failure too, not a warning.
# Installs kubernetes-validate (pinned) into a venv under .tools/ on first use.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KV_VERSION=1.37.0
VENV=.tools/kubernetes-validate-$KV_VERSION
if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  echo "installing kubernetes-validate $KV_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "kubernetes-validate==$KV_VERSION"
fi

# manifest: the Kubernetes versions it targets.
# resource.k8s.io/v1beta1 exists from 1.32 (beta, off by default: enable the
# DynamicResourceAllocation feature gate and --runtime-config=resource.k8s.io/v1beta1=true on
# 1.32 and 1.33); resource.k8s.io/v1 from 1.34 (GA, on by default).
declare -A TARGETS=(
  [deploy/k8s/namespace.yaml]="1.32 1.33 1.34"
  [deploy/k8s/resourceclaim-v1beta1.yaml]="1.32 1.33"
  [deploy/k8s/resourceclaim-v1.yaml]="1.34"
  [deploy/k8s/fd/producer-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/fd/consumer-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/legacy/producer-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/legacy/consumer-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/one-pod/shared-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/channel/publisher-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/channel/subscriber-0-pod.yaml]="1.32 1.33 1.34"
  [deploy/k8s/channel/subscriber-1-pod.yaml]="1.32 1.33 1.34"
)

# Every manifest must have targets: a new file is not skipped silently.
while IFS= read -r f; do
  [[ -n ${TARGETS[$f]:-} ]] || { echo "FAIL $f: no target versions in $0"; exit 1; }
done < <(find deploy/k8s -name '*.yaml' | sort)

failed=0
for f in $(printf '%s\n' "${!TARGETS[@]}" | sort); do
  for v in ${TARGETS[$f]}; do
    if ! out=$("$VENV/bin/kubernetes-validate" --strict -k "$v" "$f" 2>&1) \
      || grep -qiE "couldn't find schema|error" <<<"$out"; then
      echo "FAIL $f (Kubernetes $v):"; echo "$out" | sed 's/^/    /'
      failed=1
    else
      echo "ok   $f (Kubernetes $v)"
    fi
  done
done
exit $failed
