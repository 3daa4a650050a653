#!/usr/bin/env bash
# The two-pod hostPath variants (deploy/k8s/overlays/fd-hostpath and legacy), with their node
# step, in order. See docs/deploy.md ("Variant B"). Needs kubectl (1.27+, for kustomize v5) with
# a context on the cluster, and rights to label nodes and to create namespaces.
#
#   scripts/deploy-hostpath.sh --node NODE [--variant fd|legacy] [--api v1|v1beta1]
#   scripts/deploy-hostpath.sh --node NODE --delete [--variant fd|legacy]
#   scripts/deploy-hostpath.sh --node NODE --dry-run ...   # print what it would apply
#
# 1. Labels NODE (a node with two GPUs of the NVIDIA DRA driver) cuda-ipc-demo/rendezvous-dir=
#    preparing, after taking that label off every other node.
# 2. Applies deploy/k8s/node-prep (namespace cuda-ipc-hostpath, Pod Security "privileged", and a
#    Job pinned to the label) and waits for it: /var/run/cuda-ipc-demo on NODE becomes root:2000
#    3770 and empty (README, "Threat model": the Group row).
# 3. Labels NODE ...=ready: the demo's pods select that label, so they run only where the
#    directory was prepared, and the claim is allocated on that node.
# 4. Deletes the variant's Jobs left from an earlier run and applies the overlay
#    (--api v1beta1: deploy/k8s/overlays/v1beta1/<variant>, for Kubernetes 1.32-1.33).
# 5. Waits for both Jobs to complete (up to 15 minutes) and prints their logs; exits non-zero
#    if either failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

node="" variant=fd api=v1 delete=0 dry=0
usage() { sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --node) node=${2:?--node needs a node name}; shift 2 ;;
    --variant) variant=${2:?}; shift 2 ;;
    --api) api=${2:?}; shift 2 ;;
    --delete) delete=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "deploy-hostpath: unknown option $1" >&2; usage ;;
  esac
done
[[ -n $node ]] || { echo "deploy-hostpath: --node NODE is required (the GPU node whose directory to prepare)" >&2; usage; }
case $variant in fd) overlay=fd-hostpath ;; legacy) overlay=legacy ;; *) echo "deploy-hostpath: --variant fd or legacy" >&2; exit 2 ;; esac
case $api in v1) dir=deploy/k8s/overlays/$overlay ;; v1beta1) dir=deploy/k8s/overlays/v1beta1/$overlay ;; *) echo "deploy-hostpath: --api v1 or v1beta1" >&2; exit 2 ;; esac
ns=cuda-ipc-hostpath label=cuda-ipc-demo/rendezvous-dir
jobs=("cuda-ipc-$overlay-producer" "cuda-ipc-$overlay-consumer")

run() { echo "+ $*"; [[ $dry -eq 1 ]] || "$@"; }

if [[ $dry -eq 1 ]]; then
  echo "# dry run: nothing is changed; these are the manifests it would apply"
  kubectl kustomize deploy/k8s/node-prep
  echo "---"
  kubectl kustomize "$dir"
fi

if [[ $delete -eq 1 ]]; then
  run kubectl delete -k "$dir" --ignore-not-found --wait=true
  run kubectl -n "$ns" delete job cuda-ipc-node-prep --ignore-not-found
  run kubectl label node "$node" "$label-"
  exit 0
fi

[[ $dry -eq 1 ]] || kubectl get node "$node" >/dev/null

# 1-3: the node step.
run kubectl label nodes -l "$label" "$label-"
run kubectl label node "$node" "$label=preparing"
run kubectl -n "$ns" delete job cuda-ipc-node-prep --ignore-not-found --wait=true
run kubectl apply -k deploy/k8s/node-prep
run kubectl -n "$ns" wait --for=condition=Complete job/cuda-ipc-node-prep --timeout=180s || {
  echo "deploy-hostpath: the node step failed; its pod says:" >&2
  kubectl -n "$ns" logs job/cuda-ipc-node-prep >&2 || true
  kubectl -n "$ns" describe job cuda-ipc-node-prep >&2 || true
  exit 1
}
[[ $dry -eq 1 ]] || kubectl -n "$ns" logs job/cuda-ipc-node-prep
run kubectl label node "$node" "$label=ready" --overwrite

# 4: the demo.
for j in "${jobs[@]}"; do run kubectl -n "$ns" delete job "$j" --ignore-not-found --wait=true; done
run kubectl apply -k "$dir"
[[ $dry -eq 0 ]] || exit 0

# 5: its outcome.
echo "deploy-hostpath: waiting for ${jobs[*]} (kubectl -n $ns get pods,resourceclaims)"
status=0
for j in "${jobs[@]}"; do
  # A Job ends Complete or Failed; wait for whichever comes first.
  end=$((SECONDS + 900))
  while :; do
    c=$(kubectl -n "$ns" get job "$j" -o jsonpath='{range .status.conditions[?(@.status=="True")]}{.type} {end}')
    [[ $c == *Complete* || $c == *Failed* ]] && break
    ((SECONDS < end)) || { c="timed out"; break; }
    sleep 5
  done
  echo "== $j: $c"
  kubectl -n "$ns" logs "job/$j" --all-containers || true
  [[ $c == *Complete* ]] || status=1
done
[[ $status -eq 0 ]] && echo "deploy-hostpath: PASS" || echo "deploy-hostpath: FAIL (docs/deploy.md, Troubleshooting)"
exit $status
