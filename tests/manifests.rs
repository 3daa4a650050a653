//! The Kubernetes manifests under deploy/k8s, read from the repository (no kubectl, no
//! network): each overlay is put together by a minimal kustomize below (resources, components,
//! namespace, images, `$patch: delete`; anything else fails the test), and checked for what the
//! examples rely on (one claim, one rendezvous directory, probes on the ready marker or the
//! channel's socket, command lines the examples accept) and for the security each variant needs.
//! scripts/validate-manifests.sh renders the same overlays with the real kustomize and checks
//! schemas and policy in CI; this file keeps `cargo test` honest about them without tools.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

// --- files and YAML ----------------------------------------------------------------------------

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn repo_file(rel: &str) -> String {
    let path = root().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `path` relative to the repository root, for messages.
fn shown(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn load(path: &Path) -> Vec<Yaml> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", shown(path)));
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", shown(path)))
}

fn s<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {y:?}"))
}

/// A list of strings; empty if absent.
fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| v.iter().map(|a| s(a, "list item").to_string()).collect())
        .unwrap_or_default()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

fn keys(y: &Yaml) -> Vec<&str> {
    y.as_hash()
        .map(|h| h.keys().map(|k| s(k, "key")).collect())
        .unwrap_or_default()
}

/// A CPU or memory quantity ("100m", "2", "256Mi", "1Gi") in base units.
fn quantity(y: &Yaml) -> f64 {
    if let Some(n) = y.as_i64() {
        return n as f64;
    }
    let q = s(y, "quantity");
    let (digits, scale) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ]
    .iter()
    .find_map(|(suffix, scale)| q.strip_suffix(suffix).map(|d| (d, *scale)))
    .unwrap_or((q, 1.0));
    digits
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("{q:?} is not a quantity"))
        * scale
}

// --- a minimal kustomize -------------------------------------------------------------------------

/// What the overlays use of kustomize; the test refuses anything else rather than misread it.
const KUSTOMIZE_KEYS: [&str; 8] = [
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "components",
    "patches",
    "images",
    "labels", // not applied: no check reads labels
];

struct Object {
    doc: Yaml,
    namespace: Option<String>,
    file: String,
}

/// An overlay put together: its objects, the image pins of its components, the files it read.
#[derive(Default)]
struct Rendered {
    objects: Vec<Object>,
    images: Vec<Yaml>,
    files: BTreeSet<PathBuf>,
}

fn render(overlay: &str) -> Rendered {
    let mut r = Rendered::default();
    r.add_kustomization(&root().join(overlay));
    r
}

impl Rendered {
    fn add_kustomization(&mut self, dir: &Path) {
        let file = dir.join("kustomization.yaml");
        let where_ = shown(&file);
        let k = load(&file).remove(0);
        self.files.insert(file.canonicalize().unwrap());
        for key in keys(&k) {
            assert!(
                KUSTOMIZE_KEYS.contains(&key),
                "{where_}: {key} (teach this test's kustomize)"
            );
        }
        let first = self.objects.len();
        for res in strs(&k["resources"]) {
            let path = dir.join(&res);
            if path.is_dir() {
                self.add_kustomization(&path);
            } else {
                self.add_file(&path);
            }
        }
        for component in strs(&k["components"]) {
            self.add_kustomization(&dir.join(component));
        }
        self.images.extend(list(&k["images"]).iter().cloned());
        for p in list(&k["patches"]) {
            assert_eq!(keys(p), ["patch"], "{where_}: only inline patches");
            let patch = YamlLoader::load_from_str(s(&p["patch"], "patch"))
                .unwrap()
                .remove(0);
            assert_eq!(
                patch["$patch"].as_str(),
                Some("delete"),
                "{where_}: only `$patch: delete`"
            );
            let matches: Vec<usize> = (first..self.objects.len())
                .filter(|&i| {
                    let d = &self.objects[i].doc;
                    ["apiVersion", "kind"].iter().all(|f| d[*f] == patch[*f])
                        && d["metadata"]["name"] == patch["metadata"]["name"]
                })
                .collect();
            assert_eq!(matches.len(), 1, "{where_}: the patch deletes one object");
            self.objects.remove(matches[0]);
        }
        if let Some(ns) = k["namespace"].as_str() {
            for o in &mut self.objects[first..] {
                if o.doc["kind"].as_str() != Some("Namespace") {
                    o.namespace = Some(ns.to_string());
                }
            }
        }
    }

    fn add_file(&mut self, path: &Path) {
        for doc in load(path) {
            self.objects.push(Object {
                namespace: doc["metadata"]["namespace"].as_str().map(str::to_string),
                doc,
                file: shown(path),
            });
        }
        self.files.insert(path.canonicalize().unwrap());
    }

    fn of_kind(&self, kind: &str) -> Vec<&Object> {
        self.objects
            .iter()
            .filter(|o| o.doc["kind"].as_str() == Some(kind))
            .collect()
    }

    /// The pods: those of the Jobs' templates.
    fn pods(&self) -> Vec<Pod<'_>> {
        let pods: Vec<Pod> = self
            .objects
            .iter()
            .map(|o| {
                let kind = s(&o.doc["kind"], "kind");
                let name = s(&o.doc["metadata"]["name"], "name");
                (o, kind, name)
            })
            .filter(|(_, kind, _)| !["Namespace", "ResourceClaim"].contains(kind))
            .map(|(o, kind, name)| {
                assert_eq!(kind, "Job", "{}: only Jobs run here", o.file);
                Pod {
                    name: format!("{}: Job/{name}", o.file),
                    namespace: o.namespace.clone().expect("a namespace"),
                    job: &o.doc,
                    spec: &o.doc["spec"]["template"]["spec"],
                }
            })
            .collect();
        assert!(!pods.is_empty(), "no Jobs");
        pods
    }

    /// The image a container runs once the components' `images` are applied.
    fn image(&self, c: &Yaml) -> String {
        let raw = s(&c["image"], "image");
        let (mut name, mut tag, mut digest) = (raw.to_string(), None, None);
        if let Some((n, d)) = raw.split_once('@') {
            (name, digest) = (n.to_string(), Some(d.to_string()));
        }
        if let Some(i) = name.rfind(':').filter(|&i| !name[i..].contains('/')) {
            tag = Some(name[i + 1..].to_string());
            name.truncate(i);
        }
        let pins: Vec<&Yaml> = (self.images.iter())
            .filter(|p| p["name"].as_str() == Some(&name))
            .collect();
        for pin in pins {
            if let Some(n) = pin["newName"].as_str() {
                name = n.to_string();
            }
            if let Some(t) = pin["newTag"].as_str() {
                tag = Some(t.to_string());
            }
            if let Some(d) = pin["digest"].as_str() {
                (tag, digest) = (None, Some(d.to_string()));
            }
        }
        let tag = tag.map(|t| format!(":{t}")).unwrap_or_default();
        let digest = digest.map(|d| format!("@{d}")).unwrap_or_default();
        format!("{name}{tag}{digest}")
    }
}

#[derive(Clone)]
struct Pod<'a> {
    name: String,
    namespace: String,
    job: &'a Yaml,
    spec: &'a Yaml,
}

impl<'a> Pod<'a> {
    fn containers(&self) -> &'a [Yaml] {
        let spec: &'a Yaml = self.spec;
        list(&spec["containers"])
    }
    fn init_containers(&self) -> &'a [Yaml] {
        let spec: &'a Yaml = self.spec;
        list(&spec["initContainers"])
    }
    fn all_containers(&self) -> impl Iterator<Item = &'a Yaml> {
        self.init_containers().iter().chain(self.containers())
    }
    /// The uid a container runs as (its own securityContext, else the pod's).
    fn uid(&self, c: &Yaml) -> i64 {
        c["securityContext"]["runAsUser"]
            .as_i64()
            .or_else(|| self.spec["securityContext"]["runAsUser"].as_i64())
            .unwrap_or_else(|| panic!("{}: no runAsUser", self.name))
    }
    fn volume(&self, name: &str) -> &Yaml {
        list(&self.spec["volumes"])
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{}: no volume {name}", self.name))
    }
}

fn cname(c: &Yaml) -> &str {
    s(&c["name"], "container name")
}

fn command(c: &Yaml) -> Vec<String> {
    let cmd = strs(&c["command"]);
    assert!(!cmd.is_empty(), "{}: no command", cname(c));
    cmd
}

/// The value after `name` in `cmd`, if the flag is there.
fn flag<'a>(cmd: &'a [String], name: &str) -> Option<&'a str> {
    cmd.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str())
}

fn env(c: &Yaml, name: &str) -> Option<String> {
    list(&c["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| s(&e["value"], name).to_string())
}

fn ipc_dir(pod: &Pod, c: &Yaml) -> String {
    env(c, "CUDA_IPC_DIR").unwrap_or_else(|| panic!("{}/{}: no CUDA_IPC_DIR", pod.name, cname(c)))
}

/// The mount that holds `dir` (the deepest one).
fn mount_of<'a>(c: &'a Yaml, dir: &str) -> &'a Yaml {
    list(&c["volumeMounts"])
        .iter()
        .filter(|m| {
            let mp = s(&m["mountPath"], "mountPath").trim_end_matches('/');
            dir == mp || dir.starts_with(&format!("{mp}/"))
        })
        .max_by_key(|m| s(&m["mountPath"], "mountPath").len())
        .unwrap_or_else(|| panic!("{}: {dir} is on no mounted volume", cname(c)))
}

// --- the examples ------------------------------------------------------------------------------

const EXAMPLES: [&str; 4] = [
    "producer",
    "consumer",
    "frame_publisher",
    "frame_subscriber",
];

/// The example a container runs, from /usr/local/bin where the Dockerfile puts them.
fn example(c: &Yaml) -> &'static str {
    let cmd = command(c);
    EXAMPLES
        .into_iter()
        .find(|e| cmd[0] == format!("/usr/local/bin/{e}"))
        .unwrap_or_else(|| panic!("{}: {} is not an example", cname(c), cmd[0]))
}

/// The producer or the publisher: the side that shares and is probed.
fn is_exporter(exe: &str) -> bool {
    exe == "producer" || exe == "frame_publisher"
}

/// The source that parses `exe`'s options (producer and consumer share examples/common).
fn example_source(exe: &str) -> String {
    match exe {
        "producer" | "consumer" => repo_file("examples/common/mod.rs"),
        _ => repo_file(&format!("examples/{exe}.rs")),
    }
}

/// `pub const NAME: &str = "value";` in an examples source file.
fn example_const(rel: &str, name: &str) -> String {
    repo_file(rel)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("pub const {name}: &str = \"")))
        .and_then(|rest| rest.strip_suffix("\";"))
        .unwrap_or_else(|| panic!("{name} in {rel}"))
        .to_string()
}

// --- the variants ------------------------------------------------------------------------------

struct Variant {
    name: &'static str,
    /// In the namespace that enforces Pod Security "restricted".
    restricted: bool,
    claim: &'static str,
    transport: &'static str,
    /// Processes of other uids share through this group; None: one uid for all.
    group: Option<i64>,
    host_pid: bool,
    pods: usize,
}

const VARIANTS: [Variant; 5] = [
    Variant {
        name: "fd",
        restricted: true,
        claim: "shared-dual-gpus",
        transport: "fd",
        group: Some(2000),
        host_pid: false,
        pods: 1,
    },
    Variant {
        name: "channel",
        restricted: true,
        claim: "shared-dual-gpus",
        transport: "fd",
        group: Some(2000),
        host_pid: false,
        pods: 1,
    },
    // MPS serves one Linux user per GPU at a time: one uid.
    Variant {
        name: "mps",
        restricted: true,
        claim: "mps-gpu",
        transport: "fd",
        group: None,
        host_pid: false,
        pods: 1,
    },
    Variant {
        name: "fd-hostpath",
        restricted: false,
        claim: "shared-dual-gpus",
        transport: "fd",
        group: Some(2000),
        host_pid: false,
        pods: 2,
    },
    // A legacy handle is a bearer token (one uid), and needs hostPID between pods.
    Variant {
        name: "legacy",
        restricted: false,
        claim: "shared-dual-gpus",
        transport: "legacy",
        group: None,
        host_pid: true,
        pods: 2,
    },
];

const EXPORTER_UID: i64 = 1000;
const NODE_DIR: &str = "/var/run/cuda-ipc-demo";
const NODE_PREP: &str = "deploy/k8s/node-prep";

struct Overlay {
    variant: &'static Variant,
    path: String,
    /// The resource.k8s.io version of its claim.
    api: &'static str,
    r: Rendered,
}

/// Every variant's overlay for resource.k8s.io/v1 and the one for v1beta1.
fn overlays() -> Vec<Overlay> {
    let mut out = Vec::new();
    for variant in &VARIANTS {
        for (dir, api) in [("overlays", "v1"), ("overlays/v1beta1", "v1beta1")] {
            let path = format!("deploy/k8s/{dir}/{}", variant.name);
            let r = render(&path);
            assert_eq!(r.pods().len(), variant.pods, "{path}: pods");
            out.push(Overlay {
                variant,
                path,
                api,
                r,
            });
        }
    }
    out
}

/// Each example container of the overlay, with its pod, command line and example name.
fn examples_of(r: &Rendered) -> Vec<(Pod<'_>, &Yaml, Vec<String>, &'static str)> {
    let mut out = Vec::new();
    for pod in r.pods() {
        for c in pod.containers() {
            out.push((pod.clone(), c, command(c), example(c)));
        }
    }
    out
}

// --- tests -------------------------------------------------------------------------------------

#[test]
fn overlays_read_every_manifest_and_are_the_ones_ci_renders() {
    let mut read = BTreeSet::new();
    let mut rendered = vec![NODE_PREP.to_string()];
    read.extend(render(NODE_PREP).files);
    for o in overlays() {
        // One namespace per overlay, holding everything else, each object once.
        let namespaces = o.r.of_kind("Namespace");
        assert_eq!(namespaces.len(), 1, "{}: one Namespace", o.path);
        let ns = s(&namespaces[0].doc["metadata"]["name"], "namespace");
        let mut ids = BTreeSet::new();
        for obj in &o.r.objects {
            let d = &obj.doc;
            if d["kind"].as_str() != Some("Namespace") {
                assert_eq!(
                    obj.namespace.as_deref(),
                    Some(ns),
                    "{}: {}",
                    o.path,
                    obj.file
                );
            }
            let id = format!(
                "{:?}",
                [&d["apiVersion"], &d["kind"], &d["metadata"]["name"]]
            );
            assert!(ids.insert(id), "{}: {} twice", o.path, obj.file);
        }
        read.extend(o.r.files);
        rendered.push(o.path);
    }
    let mut all = BTreeSet::new();
    let mut dirs = vec![root().join("deploy/k8s")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                all.insert(path.canonicalize().unwrap());
            }
        }
    }
    let unread: Vec<_> = all.difference(&read).map(|p| shown(p)).collect();
    assert!(unread.is_empty(), "no overlay here reads {unread:?}");
    // scripts/validate-manifests.sh: `  [deploy/k8s/...]=VERSIONS`.
    let script = repo_file("scripts/validate-manifests.sh");
    let mut ci: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix('[')?.split_once("]=").map(|p| p.0))
        .collect();
    ci.sort();
    rendered.sort();
    assert_eq!(ci, rendered, "the overlays CI renders");
}

#[test]
fn base_claims_ask_for_two_gpus_or_one_under_mps_in_both_api_versions() {
    for (claim, dir, gpus) in [
        ("shared-dual-gpus", "dual-gpu", 2),
        ("mps-gpu", "mps-gpu", 1),
    ] {
        for api in ["v1", "v1beta1"] {
            let path = format!("deploy/k8s/base/claims/{dir}/{api}");
            let r = render(&path);
            assert_eq!(r.objects.len(), 1, "{path}");
            let c = &r.objects[0].doc;
            assert_eq!(
                c["apiVersion"].as_str(),
                Some(&*format!("resource.k8s.io/{api}"))
            );
            assert_eq!(c["kind"].as_str(), Some("ResourceClaim"), "{path}");
            assert_eq!(c["metadata"]["name"].as_str(), Some(claim), "{path}");
            let requests = list(&c["spec"]["devices"]["requests"]);
            assert_eq!(requests.len(), gpus, "{path}: GPUs");
            for r in requests {
                // v1 nests the request under `exactly`.
                let class = match api {
                    "v1" => &r["exactly"]["deviceClassName"],
                    _ => &r["deviceClassName"],
                };
                assert_eq!(class.as_str(), Some("gpu.nvidia.com"), "{path}");
            }
            let configs = list(&c["spec"]["devices"]["config"]);
            if claim != "mps-gpu" {
                assert!(configs.is_empty(), "{path}: plain GPUs");
                continue;
            }
            // The NVIDIA DRA driver's GpuConfig, sharing the one GPU through MPS.
            assert_eq!(configs.len(), 1, "{path}");
            let names: Vec<String> = requests
                .iter()
                .map(|r| s(&r["name"], "request").into())
                .collect();
            assert_eq!(strs(&configs[0]["requests"]), names, "{path}");
            let opaque = &configs[0]["opaque"];
            assert_eq!(opaque["driver"].as_str(), Some("gpu.nvidia.com"), "{path}");
            let p = &opaque["parameters"];
            assert_eq!(
                p["apiVersion"].as_str(),
                Some("resource.nvidia.com/v1beta1")
            );
            assert_eq!(p["kind"].as_str(), Some("GpuConfig"), "{path}");
            assert_eq!(p["sharing"]["strategy"].as_str(), Some("MPS"), "{path}");
            let threads = &p["sharing"]["mpsConfig"]["defaultActiveThreadPercentage"];
            assert!(
                threads.is_badvalue() || (0..=100).contains(&threads.as_i64().unwrap_or(-1)),
                "{path}: defaultActiveThreadPercentage {threads:?}"
            );
        }
    }
    // resource.k8s.io/v1beta1 exists from Kubernetes 1.32 (1.31 had v1alpha3 only), off by
    // default: each v1beta1 overlay says how to enable it.
    for v in &VARIANTS {
        let k = repo_file(&format!(
            "deploy/k8s/overlays/v1beta1/{}/kustomization.yaml",
            v.name
        ));
        assert!(k.starts_with("# Kubernetes 1.32-1.33"), "{}", v.name);
        assert!(k.contains("DynamicResourceAllocation"), "{}", v.name);
    }
}

#[test]
fn every_container_uses_the_one_claim_its_overlay_creates() {
    for o in overlays() {
        let claims = o.r.of_kind("ResourceClaim");
        assert_eq!(claims.len(), 1, "{}: one claim", o.path);
        let claim = &claims[0].doc;
        assert_eq!(
            claim["apiVersion"].as_str(),
            Some(&*format!("resource.k8s.io/{}", o.api)),
            "{}",
            o.path
        );
        assert_eq!(claim["metadata"]["name"].as_str(), Some(o.variant.claim));
        for pod in o.r.pods() {
            let refs = list(&pod.spec["resourceClaims"]);
            assert_eq!(refs.len(), 1, "{}: one claim", pod.name);
            assert_eq!(refs[0].as_hash().unwrap().len(), 2, "{}", pod.name);
            assert_eq!(
                refs[0]["resourceClaimName"].as_str(),
                Some(o.variant.claim),
                "{}",
                pod.name
            );
            let local = s(&refs[0]["name"], "claim name");
            for c in pod.containers() {
                let used: Vec<&str> = list(&c["resources"]["claims"])
                    .iter()
                    .map(|u| s(&u["name"], "claim"))
                    .collect();
                assert_eq!(
                    used,
                    [local],
                    "{}/{}: uses the pod's claim",
                    pod.name,
                    cname(c)
                );
            }
        }
    }
}

#[test]
fn containers_that_share_agree_on_the_rendezvous_directory() {
    for o in overlays() {
        let mut places = BTreeSet::new();
        for (pod, c, _, _) in examples_of(&o.r) {
            let dir = ipc_dir(&pod, c);
            let mount = mount_of(c, &dir);
            let mount_path = s(&mount["mountPath"], "mountPath").trim_end_matches('/');
            let volume = pod.volume(s(&mount["name"], "mount name"));
            // The same directory: the same emptyDir of one pod, or the same node path.
            let source = if !volume["emptyDir"].is_badvalue() {
                format!("emptyDir {} of {}", s(&volume["name"], "volume"), pod.name)
            } else {
                format!("hostPath {}", s(&volume["hostPath"]["path"], "path"))
            };
            let sub = mount["subPath"].as_str().unwrap_or("");
            places.insert((source, format!("{sub}{}", &dir[mount_path.len()..])));
        }
        assert_eq!(
            places.len(),
            1,
            "{}: the containers' directories {places:?}",
            o.path
        );
    }
}

#[test]
fn the_exporter_is_probed_on_its_ready_marker_or_channel_socket() {
    let marker = example_const("examples/common/mod.rs", "READY_MARKER");
    let channel = example_const("examples/common/frames.rs", "CHANNEL");
    for o in overlays() {
        for (pod, c, cmd, exe) in examples_of(&o.r) {
            let dir = ipc_dir(&pod, c);
            let want = match exe {
                "producer" => vec!["test".into(), "-f".into(), format!("{dir}/{marker}")],
                "frame_publisher" => {
                    let ch = flag(&cmd, "--channel").unwrap_or(&channel);
                    vec!["test".into(), "-S".into(), format!("{dir}/{ch}.sock")]
                }
                _ => vec![],
            };
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                assert_eq!(
                    strs(&c[probe]["exec"]["command"]),
                    want,
                    "{}/{}: {probe} (none on a consumer: it has nothing to show before it ends)",
                    pod.name,
                    cname(c)
                );
            }
        }
    }
}

#[test]
fn command_lines_are_ones_the_examples_accept_and_agree() {
    for o in overlays() {
        let examples = examples_of(&o.r);
        let exporters: Vec<_> = examples.iter().filter(|e| is_exporter(e.3)).collect();
        assert_eq!(exporters.len(), 1, "{}: one producer or publisher", o.path);
        let (_, _, ecmd, exe) = exporters[0];
        assert_eq!(
            flag(ecmd, "--transport"),
            Some(o.variant.transport),
            "{}",
            o.path
        );
        let importers = examples.len() - 1;
        let count = if *exe == "producer" {
            "--consumers"
        } else {
            "--subscribers"
        };
        assert_eq!(
            flag(ecmd, count),
            Some(&*importers.to_string()),
            "{}: the exporter waits for every consumer",
            o.path
        );
        for (pod, c, cmd, exe) in &examples {
            let source = example_source(exe);
            for arg in cmd.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    [
                        format!("\"{arg}\" =>"),
                        format!("| \"{arg}\""),
                        format!("\"{arg}\" |")
                    ]
                    .iter()
                    .any(|p| source.contains(p)),
                    "{}/{}: {exe} does not parse {arg}",
                    pod.name,
                    cname(c)
                );
            }
            for same in ["--frames", "--channel"] {
                assert_eq!(flag(cmd, same), flag(ecmd, same), "{}: {same}", pod.name);
            }
            // Every wait is bounded, within the Job's deadline.
            let timeout: f64 = flag(cmd, "--timeout").expect("--timeout").parse().unwrap();
            let deadline = pod.job["spec"]["activeDeadlineSeconds"].as_i64().unwrap();
            assert!(
                timeout < deadline as f64,
                "{}: --timeout {timeout}",
                pod.name
            );
        }
    }
}

#[test]
fn gpu_ordinals_are_the_claims_and_channel_subscribers_cover_both() {
    for o in overlays() {
        let gpus = list(&o.r.of_kind("ResourceClaim")[0].doc["spec"]["devices"]["requests"]).len();
        let mut subscriber_gpus = BTreeSet::new();
        for (pod, _, cmd, exe) in examples_of(&o.r) {
            for f in ["--gpu", "--import-on"] {
                if let Some(g) = flag(&cmd, f) {
                    let g: usize = g.parse().unwrap();
                    assert!(g < gpus, "{}: {f} {g}, the claim has {gpus}", pod.name);
                    if exe == "frame_subscriber" {
                        subscriber_gpus.insert(g);
                    }
                }
            }
        }
        if o.variant.name == "channel" {
            assert_eq!(subscriber_gpus, BTreeSet::from([0, 1]), "{}", o.path);
        }
    }
}

#[test]
fn restricted_variants_meet_pod_security_restricted() {
    const RESTRICTED_VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for o in overlays() {
        let ns = &o.r.of_kind("Namespace")[0].doc;
        let enforce = ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"].as_str();
        assert_eq!(
            enforce == Some("restricted"),
            o.variant.restricted,
            "{}",
            o.path
        );
        for pod in o.r.pods() {
            let psc = &pod.spec["securityContext"];
            assert_eq!(psc["runAsNonRoot"].as_bool(), Some(true), "{}", pod.name);
            assert_eq!(
                psc["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault")
            );
            for c in pod.all_containers() {
                let at = format!("{}/{}", pod.name, cname(c));
                let sc = &c["securityContext"];
                assert_eq!(sc["privileged"].as_bool(), Some(false), "{at}");
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{at}"
                );
                assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"], "{at}");
                assert!(sc["capabilities"]["add"].is_badvalue(), "{at}");
                assert_ne!(sc["runAsNonRoot"].as_bool(), Some(false), "{at}");
                assert!(pod.uid(c) > 0, "{at}: non-root");
            }
            if o.variant.restricted {
                for v in list(&pod.spec["volumes"]) {
                    for kind in keys(v).into_iter().filter(|k| *k != "name") {
                        assert!(RESTRICTED_VOLUMES.contains(&kind), "{}: {kind}", pod.name);
                    }
                }
            }
        }
    }
}

#[test]
fn host_pid_only_where_legacy_needs_it() {
    let prep = render(NODE_PREP);
    let mut pods: Vec<(bool, Pod)> = prep.pods().into_iter().map(|p| (false, p)).collect();
    let overlays = overlays();
    for o in &overlays {
        pods.extend(o.r.pods().into_iter().map(|p| (o.variant.host_pid, p)));
        if !o.variant.restricted {
            // hostPath (and hostPID) are beyond "baseline": a privileged namespace that warns.
            let labels = &o.r.of_kind("Namespace")[0].doc["metadata"]["labels"];
            assert_eq!(
                labels["pod-security.kubernetes.io/enforce"].as_str(),
                Some("privileged")
            );
            assert_eq!(
                labels["pod-security.kubernetes.io/warn"].as_str(),
                Some("baseline")
            );
        }
    }
    for (host_pid, pod) in pods {
        assert_eq!(
            pod.spec["hostPID"].as_bool().unwrap_or(false),
            host_pid,
            "{}",
            pod.name
        );
        for k in ["hostIPC", "hostNetwork"] {
            assert_ne!(pod.spec[k].as_bool(), Some(true), "{}: {k}", pod.name);
        }
    }
}

#[test]
fn processes_share_through_group_2000_or_run_as_one_uid() {
    for o in overlays() {
        let mut uids = BTreeSet::new();
        for (pod, c, cmd, exe) in examples_of(&o.r) {
            let uid = pod.uid(c);
            let at = format!("{}/{}", pod.name, cname(c));
            if is_exporter(exe) {
                assert_eq!(uid, EXPORTER_UID, "{at}");
            } else {
                assert!(uids.insert(uid), "{at}: uid {uid} twice");
            }
            let Some(gid) = o.variant.group else {
                // One uid: a private directory, nobody else to share with or trust.
                assert_eq!(uid, EXPORTER_UID, "{at}: one uid");
                for f in ["--group", "--trust-uid"] {
                    assert_eq!(flag(&cmd, f), None, "{at}: {f} with one uid");
                }
                continue;
            };
            // Other uids, one group: fsGroup, --group on both sides, the exporter trusted.
            assert_eq!(
                pod.spec["securityContext"]["fsGroup"].as_i64(),
                Some(gid),
                "{at}"
            );
            assert_eq!(flag(&cmd, "--group"), Some(&*gid.to_string()), "{at}");
            if !is_exporter(exe) {
                assert!(uid > EXPORTER_UID, "{at}: another uid than the exporter's");
                let trusted = EXPORTER_UID.to_string();
                assert_eq!(flag(&cmd, "--trust-uid"), Some(&*trusted), "{at}");
            }
        }
    }
}

#[test]
fn rendezvous_directory_is_prepared_by_the_init_container_or_node_prep() {
    for o in overlays() {
        for pod in o.r.pods() {
            let volumes = list(&pod.spec["volumes"]);
            assert_eq!(volumes.len(), 1, "{}: the shared volume", pod.name);
            let vname = s(&volumes[0]["name"], "volume");
            if o.variant.pods == 2 {
                // Two pods of one node: node-prep made the directory root:2000 3770; the
                // kubelet must not create it, and the pods go only where node-prep ran.
                assert_eq!(volumes[0]["hostPath"]["path"].as_str(), Some(NODE_DIR));
                assert_eq!(volumes[0]["hostPath"]["type"].as_str(), Some("Directory"));
                let selector = &pod.spec["nodeSelector"]["cuda-ipc-demo/rendezvous-dir"];
                assert_eq!(selector.as_str(), Some("ready"), "{}", pod.name);
                continue;
            }
            // One pod: the emptyDir's root (writable by all, not sticky) must not be an
            // ancestor, so the init container makes the directory and the containers mount
            // only it: 3770 for a group, 0700 for one uid.
            assert!(
                !volumes[0]["emptyDir"].is_badvalue(),
                "{}: an emptyDir",
                pod.name
            );
            let inits = pod.init_containers();
            assert_eq!(inits.len(), 1, "{}: the init container", pod.name);
            let m = &list(&inits[0]["volumeMounts"])[0];
            assert_eq!(m["name"].as_str(), Some(vname));
            assert!(m["subPath"].is_badvalue());
            let mode = if o.variant.group.is_some() {
                "3770"
            } else {
                "0700"
            };
            let mount = s(&m["mountPath"], "init mountPath").trim_end_matches('/');
            let made = format!("{mount}/cuda-ipc");
            assert_eq!(
                command(&inits[0]),
                ["mkdir", "-p", "-m", mode, &made],
                "{}",
                pod.name
            );
            for c in pod.containers() {
                let mounts = list(&c["volumeMounts"]);
                assert_eq!(mounts.len(), 1, "{}/{}", pod.name, cname(c));
                assert_eq!(s(&mounts[0]["mountPath"], "mountPath"), ipc_dir(&pod, c));
                assert_eq!(
                    mounts[0]["subPath"].as_str(),
                    Some("cuda-ipc"),
                    "{}",
                    pod.name
                );
                assert_eq!(mounts[0]["name"].as_str(), Some(vname));
            }
        }
    }
    // node-prep: on the node being prepared, root in the group 2000, DirectoryOrCreate,
    // chown 0:2000 and chmod 3770 on what it mounts, with only the capabilities for that.
    let prep = render(NODE_PREP);
    let pods = prep.pods();
    assert_eq!(pods.len(), 1);
    let pod = &pods[0];
    let v = &list(&pod.spec["volumes"])[0];
    assert_eq!(v["hostPath"]["path"].as_str(), Some(NODE_DIR));
    assert_eq!(v["hostPath"]["type"].as_str(), Some("DirectoryOrCreate"));
    let selector = &pod.spec["nodeSelector"]["cuda-ipc-demo/rendezvous-dir"];
    assert_eq!(selector.as_str(), Some("preparing"));
    assert_eq!(
        pod.namespace, "cuda-ipc-hostpath",
        "the hostPath variants' namespace"
    );
    let c = &pod.containers()[0];
    assert_eq!(pod.uid(c), 0);
    assert_eq!(
        pod.spec["securityContext"]["runAsGroup"].as_i64(),
        Some(2000)
    );
    let script = command(c).join(" ");
    let d = s(&c["volumeMounts"][0]["mountPath"], "mountPath");
    for step in ["chown 0:2000 \"$d\"", "chmod 3770 \"$d\""] {
        assert!(script.contains(step), "node-prep: {step}");
    }
    assert!(
        script.contains(&format!("d={d}\n")),
        "node-prep works on {d}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(strs(&sc["capabilities"]["add"]), ["DAC_OVERRIDE", "FOWNER"]);
}

#[test]
fn images_are_pinned_and_pulled_if_not_present() {
    // The component pins the image the Dockerfile's comment tags: the crate's version.
    let component = render("deploy/k8s/components/image");
    assert_eq!(component.images.len(), 1);
    let pin = &component.images[0];
    assert_eq!(pin["name"].as_str(), Some("cuda-ipc-demo"));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(pin["newTag"].as_str(), Some(version), "the crate's version");
    let pinned = format!("cuda-ipc-demo:{version}");
    assert!(repo_file("deploy/Dockerfile").contains(&format!("-t {pinned} .")));
    let mut renders: Vec<(String, Rendered)> = vec![(NODE_PREP.into(), render(NODE_PREP))];
    renders.extend(overlays().into_iter().map(|o| (o.path, o.r)));
    for (path, r) in &renders {
        for pod in r.pods() {
            for c in pod.all_containers() {
                let at = format!("{path} {}/{}", pod.name, cname(c));
                assert_eq!(r.image(c), pinned, "{at}: the component's image");
                assert_eq!(c["imagePullPolicy"].as_str(), Some("IfNotPresent"), "{at}");
            }
        }
    }
}

#[test]
fn every_container_requests_and_limits_cpu_and_memory() {
    let mut renders = vec![render(NODE_PREP)];
    renders.extend(overlays().into_iter().map(|o| o.r));
    for r in &renders {
        for pod in r.pods() {
            for c in pod.all_containers() {
                for res in ["cpu", "memory"] {
                    let at = format!("{}/{}: {res}", pod.name, cname(c));
                    let request = &c["resources"]["requests"][res];
                    let limit = &c["resources"]["limits"][res];
                    assert!(!request.is_badvalue() && !limit.is_badvalue(), "{at}");
                    assert!(
                        quantity(request) <= quantity(limit),
                        "{at}: request > limit"
                    );
                }
            }
        }
    }
}

#[test]
fn dockerfile_builds_every_example_into_usr_local_bin() {
    let text = repo_file("deploy/Dockerfile");
    for exe in EXAMPLES {
        for needle in [
            format!("--example {exe}"),
            format!("/src/target/release/examples/{exe}"),
        ] {
            assert!(text.contains(&needle), "Dockerfile lacks {needle:?}");
        }
    }
    for needle in ["/usr/local/bin/", "USER 1000"] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
}
