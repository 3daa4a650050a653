//! The Kubernetes manifests under deploy/: parsed, and checked for what the examples rely on
//! (one claim, matching mounts and CUDA_IPC_DIR, readiness on the ready marker or the
//! channel's socket, command lines the examples accept) and for the security settings each
//! transport needs.

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
            [
                "/producer",
                "/consumer",
                "/frame_publisher",
                "/frame_subscriber"
            ]
            .iter()
            .any(|p| cmd[0].ends_with(p)),
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
        if cmd[0].ends_with("/producer") || cmd[0].ends_with("/frame_publisher") {
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
    // resource.k8s.io/v1beta1 exists from Kubernetes 1.32 (1.31 had v1alpha3 only).
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s/resourceclaim-v1beta1.yaml"),
    )
    .unwrap();
    assert!(text.starts_with("# Kubernetes 1.32-1.33"), "{text}");
    assert!(
        text.contains("DynamicResourceAllocation"),
        "say how to enable the beta API"
    );
    assert_eq!(
        s(&load("namespace.yaml")["metadata"]["name"], "ns"),
        "cuda-ipc-demo"
    );
}

/// The container's command line.
fn command(c: &Yaml) -> Vec<String> {
    c["command"]
        .as_vec()
        .expect("command")
        .iter()
        .map(|a| s(a, "arg").to_string())
        .collect()
}

/// The value after `flag` in `cmd`, if the flag is there.
fn flag<'a>(cmd: &'a [String], flag: &str) -> Option<&'a str> {
    cmd.windows(2).find(|w| w[0] == flag).map(|w| w[1].as_str())
}

/// The uid a container runs as (its own securityContext, else the pod's).
fn run_as_user(pod: &Yaml, c: &Yaml) -> i64 {
    c["securityContext"]["runAsUser"]
        .as_i64()
        .or_else(|| pod["spec"]["securityContext"]["runAsUser"].as_i64())
        .expect("runAsUser")
}

/// Whether the command is the sharing side (producer or frame_publisher).
fn is_exporter(cmd: &[String]) -> bool {
    cmd[0].ends_with("/producer") || cmd[0].ends_with("/frame_publisher")
}

/// Group sharing between uids: every pod has the fsGroup `gid`; the producer (or publisher)
/// shares with `--group gid`; each consumer (or subscriber) runs as another uid, expects
/// `--group gid` and trusts the producer's uid (`--trust-uid`).
fn check_group_sharing(rels: &[&str], gid: i64) {
    let mut producer_uid = None;
    let mut consumers = Vec::new();
    for rel in rels {
        let pod = load(rel);
        assert_eq!(
            pod["spec"]["securityContext"]["fsGroup"].as_i64(),
            Some(gid),
            "{rel}: fsGroup"
        );
        for c in containers(&pod) {
            let cmd = command(c);
            assert_eq!(
                flag(&cmd, "--group"),
                Some(gid.to_string().as_str()),
                "{rel}: {cmd:?}"
            );
            let uid = run_as_user(&pod, c);
            if is_exporter(&cmd) {
                assert_eq!(producer_uid, None, "{rel}: one producer");
                producer_uid = Some(uid);
            } else {
                consumers.push((
                    rel.to_string(),
                    uid,
                    flag(&cmd, "--trust-uid").map(str::to_string),
                ));
            }
        }
    }
    let producer_uid = producer_uid.expect("a producer");
    assert!(!consumers.is_empty());
    for (rel, uid, trusted) in consumers {
        assert_ne!(uid, producer_uid, "{rel}: pods of other uids are the point");
        assert!(uid > 0, "{rel}: non-root");
        assert_eq!(
            trusted,
            Some(producer_uid.to_string()),
            "{rel}: --trust-uid"
        );
    }
}

#[test]
fn fd_pods_share_claim_and_directory_and_need_no_privileges() {
    let (pdir, pvol) = check_pod("fd/producer-pod.yaml");
    let (cdir, cvol) = check_pod("fd/consumer-pod.yaml");
    assert_eq!(pdir, cdir);
    assert_eq!(pvol["hostPath"]["path"], cvol["hostPath"]["path"]);
    assert_eq!(s(&pvol["hostPath"]["type"], "type"), "Directory");
    restricted("fd/producer-pod.yaml");
    restricted("fd/consumer-pod.yaml");
    check_group_sharing(&["fd/producer-pod.yaml", "fd/consumer-pod.yaml"], 2000);
}

/// The node step in the manifest's comments: the hostPath owned by root and the group,
/// setgid and sticky (an ancestor writable by others without the sticky bit is refused).
fn documents_the_node_directory(rel: &str) {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/k8s")
            .join(rel),
    )
    .unwrap();
    assert!(
        text.contains("install -d -o 0 -g 2000 -m 3770 /var/run/cuda-ipc-demo"),
        "{rel}: the node's directory step"
    );
}

#[test]
fn host_path_pods_say_how_to_prepare_the_node_directory() {
    for rel in [
        "fd/producer-pod.yaml",
        "channel/publisher-pod.yaml",
        "legacy/producer-pod.yaml",
        "legacy/consumer-pod.yaml",
    ] {
        documents_the_node_directory(rel);
        let pod = load(rel);
        let vol = &pod["spec"]["volumes"][0];
        assert_eq!(
            s(&vol["hostPath"]["type"], "type"),
            "Directory",
            "{rel}: not created by the kubelet"
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
    let rel = "one-pod/shared-pod.yaml";
    let (dir, vol) = check_pod(rel);
    assert!(!vol["emptyDir"].is_badvalue(), "an emptyDir");
    assert!(vol["hostPath"].is_badvalue(), "no hostPath");
    restricted(rel);
    let pod = load(rel);
    assert_eq!(containers(&pod).len(), 2);
    check_group_sharing(&[rel], 2000);
    // The emptyDir's root (2777) must not be an ancestor of the rendezvous directory: the
    // containers mount only the subdirectory the init container made 3770.
    for c in containers(&pod) {
        let m = &c["volumeMounts"][0];
        assert_eq!(
            s(&m["mountPath"], "mountPath"),
            dir,
            "{rel}: the directory is the mount"
        );
        assert_eq!(s(&m["subPath"], "subPath"), "cuda-ipc", "{rel}");
    }
    let init = &pod["spec"]["initContainers"][0];
    let cmd = command(init);
    let mount = s(&init["volumeMounts"][0]["mountPath"], "init mount");
    assert_eq!(
        cmd,
        ["mkdir", "-p", "-m", "3770", &format!("{mount}/cuda-ipc")],
        "{rel}"
    );
    assert_eq!(
        init["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert_eq!(
        init["securityContext"]["capabilities"]["drop"][0].as_str(),
        Some("ALL")
    );
}

#[test]
fn dockerfile_builds_both_examples() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
            .unwrap();
    for needle in [
        "--example producer",
        "--example consumer",
        "--example frame_publisher",
        "--example frame_subscriber",
        "/src/target/release/examples/frame_publisher",
        "/src/target/release/examples/frame_subscriber",
        "/usr/local/bin/",
        "USER 1000",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
}

const CHANNEL_PODS: [&str; 3] = [
    "channel/publisher-pod.yaml",
    "channel/subscriber-0-pod.yaml",
    "channel/subscriber-1-pod.yaml",
];

fn repo_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every flag of `cmd` is one the example of that executable parses (a `"--flag" =>` arm).
fn example_accepts(rel: &str, cmd: &[String]) {
    let exe = cmd[0]
        .strip_prefix("/usr/local/bin/")
        .unwrap_or_else(|| panic!("{rel}: {} is not where the Dockerfile puts it", cmd[0]));
    let source = repo_file(&format!("examples/{exe}.rs"));
    for arg in cmd.iter().filter(|a| a.starts_with("--")) {
        assert!(
            source.contains(&format!("\"{arg}\" =>")),
            "{rel}: examples/{exe}.rs does not parse {arg}"
        );
    }
}

#[test]
fn channel_pods_share_claim_and_directory_and_need_no_privileges() {
    let mut dirs = Vec::new();
    for rel in CHANNEL_PODS {
        let (dir, vol) = check_pod(rel);
        assert_eq!(s(&vol["hostPath"]["type"], "type"), "Directory", "{rel}");
        dirs.push((dir, vol["hostPath"]["path"].clone()));
        restricted(rel);
        let pod = load(rel);
        assert_eq!(pod["spec"]["hostPID"].as_bool(), Some(false), "{rel}");
        assert_eq!(pod["spec"]["hostIPC"].as_bool(), Some(false), "{rel}");
        assert_eq!(containers(&pod).len(), 1, "{rel}");
        for c in containers(&pod) {
            assert!(run_as_user(&pod, c) > 0, "{rel}: non-root");
            example_accepts(rel, &command(c));
        }
    }
    dirs.dedup();
    assert_eq!(
        dirs.len(),
        1,
        "the pods disagree on the directory: {dirs:?}"
    );
    check_group_sharing(&CHANNEL_PODS, 2000);
    documents_the_node_directory("channel/publisher-pod.yaml");
}

#[test]
fn channel_subscribers_read_on_both_gpus_every_frame_the_publisher_sends() {
    let publisher = load(CHANNEL_PODS[0]);
    let pc = &containers(&publisher)[0];
    let pcmd = command(pc);
    assert!(pcmd[0].ends_with("/frame_publisher"), "{pcmd:?}");
    let subscribers = &CHANNEL_PODS[1..];
    assert_eq!(
        flag(&pcmd, "--subscribers"),
        Some(subscribers.len().to_string().as_str()),
        "the publisher waits for every subscriber pod"
    );
    assert_eq!(flag(&pcmd, "--policy"), Some("block"), "no frame lost");
    let frames = flag(&pcmd, "--frames").expect("publisher --frames");
    let mut gpus = Vec::new();
    for rel in subscribers {
        let pod = load(rel);
        let cmd = command(&containers(&pod)[0]);
        assert!(cmd[0].ends_with("/frame_subscriber"), "{rel}: {cmd:?}");
        assert_eq!(
            flag(&cmd, "--frames"),
            Some(frames),
            "{rel}: as many frames"
        );
        assert_eq!(flag(&cmd, "--channel"), flag(&pcmd, "--channel"), "{rel}");
        gpus.push(flag(&cmd, "--gpu").expect("--gpu").to_string());
    }
    gpus.sort();
    assert_eq!(gpus, ["0", "1"], "one subscriber per GPU of the claim");
    // Ready once the channel's socket is there: <CUDA_IPC_DIR>/<channel>.sock, the channel
    // being the examples' default unless --channel names another.
    let common = repo_file("examples/common/frames.rs");
    let default = common
        .lines()
        .find_map(|l| l.strip_prefix("pub const CHANNEL: &str = \""))
        .and_then(|rest| rest.strip_suffix("\";"))
        .expect("CHANNEL in examples/common/frames.rs");
    let channel = flag(&pcmd, "--channel").unwrap_or(default);
    let dir = env_value(pc, "CUDA_IPC_DIR").unwrap();
    let probe: Vec<&str> = pc["readinessProbe"]["exec"]["command"]
        .as_vec()
        .expect("publisher readinessProbe")
        .iter()
        .map(|a| s(a, "probe"))
        .collect();
    assert_eq!(probe, ["test", "-S", &format!("{dir}/{channel}.sock")]);
}
