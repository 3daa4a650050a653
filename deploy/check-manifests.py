#!/usr/bin/env python3
"""Policy checks on the rendered Kubernetes manifests, beyond what the API schemas say.

scripts/validate-manifests.sh runs it (with the Python of its kubernetes-validate venv, which
has PyYAML) on every overlay that `kubectl kustomize` rendered:

    check-manifests.py layout OVERLAY...          # every file under deploy/k8s is used
    check-manifests.py render OVERLAY FILE        # one rendered overlay

Each problem is printed as `FAIL <where>: <what>`; the exit status is 1 if there was any.
What it checks, and why, is in docs/deploy.md ("What CI checks").
"""

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
failures = []


def fail(where, what):
    failures.append(f"FAIL {where}: {what}")


# --- layout ---------------------------------------------------------------------------------


def kustomization(d):
    return yaml.safe_load((d / "kustomization.yaml").read_text()) or {}


def check_layout(roots):
    """Every kustomization is a root (rendered and validated) or used by one; every other YAML
    file is listed by the kustomization beside it. So nothing under deploy/k8s escapes the
    checks."""
    dirs = {p.parent.resolve() for p in K8S.rglob("kustomization.yaml")}
    used = set()
    for d in dirs:
        k = kustomization(d)
        for ref in (k.get("resources") or []) + (k.get("components") or []):
            target = (d / ref).resolve()
            if target.is_dir():
                if target not in dirs:
                    fail(d.relative_to(ROOT), f"{ref} has no kustomization.yaml")
                used.add(target)
            elif not target.is_file():
                fail(d.relative_to(ROOT), f"{ref} does not exist")
    root_dirs = {(ROOT / r).resolve() for r in roots}
    for d in sorted(dirs - used - root_dirs):
        fail(d.relative_to(ROOT), "a kustomization that no overlay uses and CI does not render")
    for d in sorted(root_dirs - dirs):
        fail(d.relative_to(ROOT), "listed as an overlay but has no kustomization.yaml")
    for f in sorted(K8S.rglob("*.y*ml")):
        if f.name == "kustomization.yaml":
            continue
        k = kustomization(f.parent) if f.parent.resolve() in dirs else {}
        if f.name not in (k.get("resources") or []):
            fail(f.relative_to(ROOT), "not listed in the resources of a kustomization.yaml beside it")


# --- one rendered overlay -------------------------------------------------------------------

PINNED = re.compile(r"^[a-z0-9][a-z0-9._/:-]*?(:(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
                    r"(@sha256:[0-9a-f]{64})?$")
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
EXAMPLES = ("producer", "consumer", "frame_publisher", "frame_subscriber")
# NVIDIA/k8s-dra-driver-gpu api/nvidia.com/resource/v1beta1/{gpuconfig,sharing,validate}.go
GPU_CONFIG_KEYS = {"apiVersion", "kind", "sharing"}
SHARING_KEYS = {"strategy", "timeSlicingConfig", "mpsConfig"}
MPS_KEYS = {"defaultActiveThreadPercentage", "defaultPinnedDeviceMemoryLimit",
            "defaultPerDevicePinnedMemoryLimit"}
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|[mkMGTPE]|e[0-9]+)?$")
NODE_PREP = "cuda-ipc-node-prep"


def example_source(exe):
    """The source that parses `exe`'s options: the producer and consumer share common/mod.rs."""
    if exe in ("producer", "consumer"):
        return (ROOT / "examples/common/mod.rs").read_text()
    return (ROOT / f"examples/{exe}.rs").read_text()


def flag(cmd, name):
    for a, b in zip(cmd, cmd[1:]):
        if a == name:
            return b
    return None


def default_channel():
    for line in (ROOT / "examples/common/frames.rs").read_text().splitlines():
        m = re.match(r'pub const CHANNEL: &str = "([^"]+)";', line)
        if m:
            return m.group(1)
    raise SystemExit("CHANNEL not found in examples/common/frames.rs")


def pods_of(docs):
    for d in docs:
        if d.get("kind") == "Job":
            yield d, d["spec"]["template"]["spec"]
        elif d.get("kind") == "Pod":
            yield d, d["spec"]


def uid_of(pod, c):
    return (c.get("securityContext") or {}).get(
        "runAsUser", (pod.get("securityContext") or {}).get("runAsUser"))


def check_gpu_config(where, claim):
    devices = claim["spec"]["devices"]
    names = {r["name"] for r in devices.get("requests", [])}
    for cfg in devices.get("config", []) or []:
        for r in cfg.get("requests", []) or []:
            if r not in names:
                fail(where, f"config names request {r!r}, which the claim does not have")
        opaque = cfg.get("opaque")
        if not opaque or opaque.get("driver") != "gpu.nvidia.com":
            fail(where, "a device config that is not opaque for the driver gpu.nvidia.com")
            continue
        p = opaque.get("parameters") or {}
        if p.get("apiVersion") != "resource.nvidia.com/v1beta1" or p.get("kind") != "GpuConfig":
            fail(where, f"parameters are {p.get('apiVersion')}/{p.get('kind')}, "
                        "not resource.nvidia.com/v1beta1 GpuConfig")
        for k in set(p) - GPU_CONFIG_KEYS:
            fail(where, f"GpuConfig has no field {k!r}")
        s = p.get("sharing") or {}
        for k in set(s) - SHARING_KEYS:
            fail(where, f"GpuConfig.sharing has no field {k!r}")
        if s.get("strategy") not in ("TimeSlicing", "MPS"):
            fail(where, f"sharing strategy {s.get('strategy')!r} is not TimeSlicing or MPS")
        if s.get("strategy") == "MPS":
            if "timeSlicingConfig" in s:
                fail(where, "timeSlicingConfig with the MPS strategy")
            m = s.get("mpsConfig") or {}
            for k in set(m) - MPS_KEYS:
                fail(where, f"mpsConfig has no field {k!r}")
            t = m.get("defaultActiveThreadPercentage")
            if t is not None and not (isinstance(t, int) and 0 <= t <= 100):
                fail(where, f"defaultActiveThreadPercentage {t!r} is not an integer 0-100")
            q = m.get("defaultPinnedDeviceMemoryLimit")
            if q is not None and not QUANTITY.match(str(q)):
                fail(where, f"defaultPinnedDeviceMemoryLimit {q!r} is not a quantity")


def is_mps(claim):
    for cfg in claim["spec"]["devices"].get("config", []) or []:
        p = (cfg.get("opaque") or {}).get("parameters") or {}
        if (p.get("sharing") or {}).get("strategy") == "MPS":
            return True
    return False


def check_container_basics(cw, pod, c, level):
    csc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    image = c.get("image", "")
    m = PINNED.match(image)
    if not m or not (m.group("tag") or "@sha256:" in image) or m.group("tag") == "latest":
        fail(cw, f"image {image!r} is not pinned (a tag other than latest, or a digest)")
    if c.get("imagePullPolicy") != "IfNotPresent":
        fail(cw, f"imagePullPolicy is {c.get('imagePullPolicy')!r}, not IfNotPresent")
    res = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for r in ("cpu", "memory"):
            if r not in (res.get(kind) or {}):
                fail(cw, f"no {kind}.{r}")
    if csc.get("privileged") is not False:
        fail(cw, "privileged is not false")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail(cw, "allowPrivilegeEscalation is not false")
    caps = csc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        fail(cw, "capabilities do not drop ALL")
    if level == "restricted":
        if caps.get("add"):
            fail(cw, f"adds capabilities {caps['add']} in a restricted namespace")
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        if non_root is not True or not uid_of(pod, c):
            fail(cw, "not runAsNonRoot with a non-zero runAsUser")
    return image


def check_render(overlay, path):
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    namespaces = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Namespace"}
    claims = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d
              for d in docs if d["kind"] == "ResourceClaim"}
    if len(namespaces) != 1:
        fail(overlay, f"{len(namespaces)} Namespace objects, not 1")
    for d in docs:
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") not in namespaces:
            fail(overlay, f"{d['kind']}/{d['metadata']['name']} is not in the overlay's namespace")
    for (_, name), claim in claims.items():
        check_gpu_config(f"{overlay} ResourceClaim/{name}", claim)
    mps_claims = {name for (_, name), c in claims.items() if is_mps(c)}

    images, mps_uids = set(), set()
    exporters, importers = [], []  # (where, uid, command, pod)
    for obj, pod in pods_of(docs):
        name = obj["metadata"]["name"]
        where = f"{overlay} {obj['kind']}/{name}"
        ns = obj["metadata"].get("namespace")
        labels = (namespaces.get(ns) or {}).get("metadata", {}).get("labels") or {}
        level = labels.get("pod-security.kubernetes.io/enforce")
        if level not in ("restricted", "privileged"):
            fail(where, f"namespace {ns} enforces Pod Security {level!r}, not restricted or privileged")
        if obj["kind"] == "Job":
            if obj["spec"].get("backoffLimit") != 0:
                fail(where, "backoffLimit is not 0 (a failed demo must not retry silently)")
            if not obj["spec"].get("activeDeadlineSeconds"):
                fail(where, "no activeDeadlineSeconds")
        if pod.get("restartPolicy") != "Never":
            fail(where, "restartPolicy is not Never")
        if pod.get("automountServiceAccountToken") is not False:
            fail(where, "automountServiceAccountToken is not false (nothing here calls the API)")
        pod_claims = {c["name"]: c.get("resourceClaimName") for c in pod.get("resourceClaims", []) or []}
        for local, claim in pod_claims.items():
            if (ns, claim) not in claims:
                fail(where, f"resourceClaim {local} names {claim}, which the overlay does not create")
        psc = pod.get("securityContext") or {}
        for v in pod.get("volumes", []) or []:
            hp = v.get("hostPath")
            if hp and name != NODE_PREP and hp.get("type") != "Directory":
                fail(where, f"hostPath {hp.get('path')} is not type Directory "
                            "(node-prep makes it; the kubelet must not)")
        if level == "restricted":
            for k in ("hostPID", "hostIPC", "hostNetwork"):
                if pod.get(k):
                    fail(where, f"{k} in a restricted namespace")
            for v in pod.get("volumes", []) or []:
                kinds = set(v) - {"name"}
                if not kinds <= RESTRICTED_VOLUMES:
                    fail(where, f"volume {v['name']} ({', '.join(sorted(kinds))}) is not allowed "
                                "by Pod Security restricted")
            if (psc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
                fail(where, "no seccompProfile RuntimeDefault")

        dirs = set()
        for c in pod.get("initContainers", []) or []:
            images.add(check_container_basics(f"{where}/{c['name']}", pod, c, level))
        for c in pod["containers"]:
            cw = f"{where}/{c['name']}"
            images.add(check_container_basics(cw, pod, c, level))
            if name == NODE_PREP:
                continue
            cmd = c.get("command") or []
            exe = cmd[0].rsplit("/", 1)[-1] if cmd else ""
            if exe not in EXAMPLES or cmd[0] != f"/usr/local/bin/{exe}":
                fail(cw, f"command {cmd[:1]} is not one of the examples in /usr/local/bin")
                continue
            src = example_source(exe)
            for a in cmd[1:]:
                if a.startswith("--") and not any(
                        p in src for p in (f'"{a}" =>', f'| "{a}"', f'"{a}" |')):
                    fail(cw, f"examples/{exe} does not parse {a}")
            env = {e["name"]: e.get("value") for e in c.get("env", []) or []}
            d = env.get("CUDA_IPC_DIR")
            if not d:
                fail(cw, "no CUDA_IPC_DIR")
                continue
            dirs.add(d)
            if not any(d == m["mountPath"] or d.startswith(m["mountPath"].rstrip("/") + "/")
                       for m in c.get("volumeMounts", []) or []):
                fail(cw, f"CUDA_IPC_DIR {d} is on no mounted volume")
            used = [u["name"] for u in (c.get("resources") or {}).get("claims", []) or []]
            if not used or any(u not in pod_claims for u in used):
                fail(cw, f"uses claims {used}, the pod has {sorted(pod_claims)}")
            uid = uid_of(pod, c)
            if any(pod_claims.get(u) in mps_claims for u in used):
                mps_uids.add(uid)
            if exe in ("producer", "frame_publisher"):
                exporters.append((cw, uid, cmd, pod))
                if exe == "producer":
                    want = ["test", "-f", f"{d}/producer.ready"]
                else:
                    want = ["test", "-S", f"{d}/{flag(cmd, '--channel') or default_channel()}.sock"]
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    got = ((c.get(probe) or {}).get("exec") or {}).get("command")
                    if got != want:
                        fail(cw, f"{probe} is {got}, not {want}")
            else:
                importers.append((cw, uid, cmd, pod))
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    if probe in c:
                        fail(cw, f"{probe} on a consumer: it has nothing to show before it ends")
        if len(dirs) > 1:
            fail(where, f"containers disagree on CUDA_IPC_DIR: {sorted(dirs)}")

    if len(images) > 1:
        fail(overlay, f"more than one image: {sorted(images)}")
    if len(mps_uids) > 1:
        fail(overlay, f"containers on an MPS claim run as uids {sorted(mps_uids)}: "
                      "MPS serves one user at a time")
    if overlay.endswith("node-prep"):
        return
    if len(exporters) != 1:
        fail(overlay, f"{len(exporters)} producers/publishers, not 1")
    for cw, uid, cmd, pod in exporters:
        group = flag(cmd, "--group")
        if group is not None and str((pod.get("securityContext") or {}).get("fsGroup")) != group:
            fail(cw, f"--group {group} is not the pod's fsGroup")
        transport = flag(cmd, "--transport")
        if transport not in ("fd", "legacy"):
            fail(cw, "say --transport fd or legacy")
        if transport == "legacy" and not all(p.get("hostPID") for *_, p in exporters + importers):
            fail(cw, "legacy across pods needs hostPID on both sides")
        for count in ("--subscribers", "--consumers"):
            if count in cmd and int(flag(cmd, count)) != len(importers):
                fail(cw, f"waits for {flag(cmd, count)} {count[2:]}, the overlay runs {len(importers)}")
        for iw, iuid, icmd, _ in importers:
            if iuid != uid:
                if flag(icmd, "--trust-uid") != str(uid):
                    fail(iw, f"runs as {iuid}, so it must trust the exporter's uid {uid} (--trust-uid)")
                if group is None or flag(icmd, "--group") != group:
                    fail(iw, "another uid than the exporter's: share through --group on both sides")
            if flag(icmd, "--frames") != flag(cmd, "--frames"):
                fail(iw, "expects another number of frames than the publisher sends")
            if flag(icmd, "--channel") != flag(cmd, "--channel"):
                fail(iw, "another channel than the publisher's")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "layout":
        check_layout(sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "render":
        check_render(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
    for f in failures:
        print(f)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
