//! The Kubernetes manifests under deploy/: parsed, and checked for what the examples rely on
//! (one claim, matching mounts and CUDA_IPC_DIR, readiness on the ready marker) and for the
//! security settings each transport needs.

use std::path::Path;

use yaml_rust2::{Yaml, YamlLoader};

fn load(rel: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/k8s")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    assert_eq!(docs.len(), 1, "{rel}: one document per file");
    docs.remove(0)
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

fn containers(pod: &Yaml) -> &Vec<Yaml> {
    pod["spec"]["containers"].as_vec().expect("containers")
}

fn env_value(c: &Yaml, name: &str) -> Option<String> {
    c["env"]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| s(&e["value"], name).to_string())
}

/// Checks what every pod of the scenario needs; returns (CUDA_IPC_DIR, shared volume source).
fn check_pod(rel: &str) -> (String, Yaml) {
    let pod = load(rel);
    assert_eq!(s(&pod["kind"], "kind"), "Pod", "{rel}");
    assert_eq!(
        s(&pod["metadata"]["namespace"], "namespace"),
        "cuda-ipc-demo",
        "{rel}"
    );
    let claims = pod["spec"]["resourceClaims"]
        .as_vec()
        .expect("resourceClaims");
    assert_eq!(claims.len(), 1, "{rel}");
    assert_eq!(
        s(&claims[0]["resourceClaimName"], "claim"),
        "shared-dual-gpus",
        "{rel}"
    );
    let claim_name = s(&claims[0]["name"], "claim name");
    let volumes = pod["spec"]["volumes"].as_vec().expect("volumes");
    let mut dirs = Vec::new();
    for c in containers(&pod) {
        let cname = s(&c["name"], "container name");
        let uses = c["resources"]["claims"].as_vec().expect("resources.claims");
        assert!(
            uses.iter().any(|u| u["name"].as_str() == Some(claim_name)),
            "{rel}/{cname} uses the claim"
        );
        let dir =
            env_value(c, "CUDA_IPC_DIR").unwrap_or_else(|| panic!("{rel}/{cname}: CUDA_IPC_DIR"));
        let mounts = c["volumeMounts"].as_vec().expect("volumeMounts");
        let mount = mounts
            .iter()
            .find(|m| dir.starts_with(s(&m["mountPath"], "mountPath")))
            .unwrap_or_else(|| panic!("{rel}/{cname}: CUDA_IPC_DIR {dir} is on no mounted volume"));
        let vname = s(&mount["name"], "mount name");
        assert!(
            volumes.iter().any(|v| v["name"].as_str() == Some(vname)),
            "{rel}: volume {vname}"
        );
        let cmd: Vec<&str> = c["command"]
            .as_vec()
            .expect("command")
            .iter()
            .map(|a| s(a, "arg"))
            .collect();
        assert!(
            cmd[0].ends_with("/producer") || cmd[0].ends_with("/consumer"),
            "{rel}: {cmd:?}"
        );
        if cmd[0].ends_with("/producer") {
            let probe: Vec<&str> = c["readinessProbe"]["exec"]["command"]
                .as_vec()
                .map(|v| v.iter().map(|a| s(a, "probe")).collect())
                .unwrap_or_default();
            if rel != "one-pod/shared-pod.yaml" {
                assert_eq!(
                    probe,
                    ["test", "-f", &format!("{dir}/producer.ready")],
                    "{rel}: readiness"
                );
            }
        }
        dirs.push(dir);
    }
    dirs.dedup();
    assert_eq!(dirs.len(), 1, "{rel}: containers disagree on CUDA_IPC_DIR");
    (dirs.remove(0), volumes[0].clone())
}

fn restricted(rel: &str) {
    let pod = load(rel);
    let spec = &pod["spec"];
    assert_ne!(spec["hostPID"].as_bool(), Some(true), "{rel}: hostPID");
    assert_ne!(spec["hostIPC"].as_bool(), Some(true), "{rel}: hostIPC");
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true),
        "{rel}"
    );
    assert_eq!(
        s(
            &spec["securityContext"]["seccompProfile"]["type"],
            "seccomp"
        ),
        "RuntimeDefault",
        "{rel}"
    );
    for c in containers(&pod) {
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"].as_bool(), Some(false), "{rel}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{rel}"
        );
        let drop: Vec<&str> = sc["capabilities"]["drop"]
            .as_vec()
            .expect("drop")
            .iter()
            .map(|a| s(a, "cap"))
            .collect();
        assert_eq!(drop, ["ALL"], "{rel}");
        let cmd: Vec<&str> = c["command"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|a| s(a, "arg"))
            .collect();
        if cmd[0].ends_with("/producer") {
            assert!(
                cmd.windows(2).any(|w| w == ["--transport", "fd"]),
                "{rel}: fd transport"
            );
        }
    }
}

#[test]
fn both_claim_versions_ask_for_two_nvidia_gpus() {
    for (rel, api) in [
        ("resourceclaim-v1beta1.yaml", "resource.k8s.io/v1beta1"),
        ("resourceclaim-v1.yaml", "resource.k8s.io/v1"),
    ] {
        let claim = load(rel);
        assert_eq!(s(&claim["apiVersion"], "apiVersion"), api);
        assert_eq!(s(&claim["kind"], "kind"), "ResourceClaim");
        assert_eq!(s(&claim["metadata"]["name"], "name"), "shared-dual-gpus");
        assert_eq!(s(&claim["metadata"]["namespace"], "ns"), "cuda-ipc-demo");
        let requests = claim["spec"]["devices"]["requests"]
            .as_vec()
            .expect("requests");
        assert_eq!(requests.len(), 2, "{rel}");
        for r in requests {
            let class = if api.ends_with("v1") {
                &r["exactly"]["deviceClassName"]
            } else {
                &r["deviceClassName"]
            };
            assert_eq!(s(class, "deviceClassName"), "gpu.nvidia.com", "{rel}");
        }
    }
    assert_eq!(
        s(&load("namespace.yaml")["metadata"]["name"], "ns"),
        "cuda-ipc-demo"
    );
}

#[test]
fn fd_pods_share_claim_and_directory_and_need_no_privileges() {
    let (pdir, pvol) = check_pod("fd/producer-pod.yaml");
    let (cdir, cvol) = check_pod("fd/consumer-pod.yaml");
    assert_eq!(pdir, cdir);
    assert_eq!(pvol["hostPath"]["path"], cvol["hostPath"]["path"]);
    restricted("fd/producer-pod.yaml");
    restricted("fd/consumer-pod.yaml");
    for rel in ["fd/producer-pod.yaml", "fd/consumer-pod.yaml"] {
        assert_eq!(
            load(rel)["spec"]["securityContext"]["runAsUser"].as_i64(),
            Some(1000),
            "{rel}: one uid for both"
        );
    }
}

#[test]
fn legacy_pods_have_the_seeds_minimum() {
    let (pdir, pvol) = check_pod("legacy/producer-pod.yaml");
    let (cdir, cvol) = check_pod("legacy/consumer-pod.yaml");
    assert_eq!(pdir, cdir);
    assert_eq!(pvol["hostPath"]["path"], cvol["hostPath"]["path"]);
    for rel in ["legacy/producer-pod.yaml", "legacy/consumer-pod.yaml"] {
        let pod = load(rel);
        assert_eq!(
            pod["spec"]["hostPID"].as_bool(),
            Some(true),
            "{rel}: hostPID is required for legacy"
        );
        for c in containers(&pod) {
            assert_eq!(
                c["securityContext"]["privileged"].as_bool(),
                Some(false),
                "{rel}"
            );
            let cmd: Vec<&str> = c["command"]
                .as_vec()
                .unwrap()
                .iter()
                .map(|a| s(a, "arg"))
                .collect();
            if cmd[0].ends_with("/producer") {
                assert!(
                    cmd.windows(2).any(|w| w == ["--transport", "legacy"]),
                    "{rel}"
                );
            }
        }
    }
}

#[test]
fn one_pod_variant_fits_the_restricted_profile() {
    let (_, vol) = check_pod("one-pod/shared-pod.yaml");
    assert!(!vol["emptyDir"].is_badvalue(), "an emptyDir");
    assert!(vol["hostPath"].is_badvalue(), "no hostPath");
    restricted("one-pod/shared-pod.yaml");
    assert_eq!(containers(&load("one-pod/shared-pod.yaml")).len(), 2);
}

#[test]
fn dockerfile_builds_both_examples() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
            .unwrap();
    for needle in [
        "--example producer",
        "--example consumer",
        "/usr/local/bin/",
        "USER 1000",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
}
