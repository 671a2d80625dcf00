//! Adding the sidecar to one pod template (SPEC §10), or saying why not.
//!
//! Every step first looks for what it would add, so a pod injected before
//! is left as it is: injecting twice is injecting once.

use super::sidecar::{PROXY, Sidecar};
use super::tree::{Map, Node, Scalar, Value};

/// The annotation `--only-annotated` looks for on the pod template; `"false"`
/// opts a pod out whatever the options.
pub const ANNOTATION: &str = "truedat-auth-proxy/inject";

/// Where loopback traffic must never go through an egress proxy.
const NO_PROXY_VALUE: &str = "127.0.0.1,localhost";

/// What is the same for every pod of a run.
pub struct Plan<'a> {
    pub sidecar: &'a Sidecar,
    /// `--tool-env` names, set to `tool_url` in the tool's containers.
    pub tool_env: &'a [String],
    pub tool_url: &'a str,
    /// The proxy listener's port (its default configuration's).
    pub listen_port: u16,
    pub only_annotated: bool,
}

/// What happened to a pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// What was added, and notes for the user.
    Injected(Vec<String>, Vec<String>),
    /// Already injected; notes still apply.
    Unchanged(Vec<String>),
    /// Left alone, and why.
    Skipped(String),
}

/// Why a pod is refused (exit 2), without the object's name.
#[derive(Debug, PartialEq)]
pub struct Refusal(pub String);

/// Injects the sidecar into `template` (a map with `metadata` and `spec`:
/// a pod template, or a Pod). `batch`: the pod belongs to a Job or CronJob.
pub fn inject(template: &mut Map, plan: &Plan<'_>, batch: bool) -> Result<Outcome, Refusal> {
    if let Some(skip) = opted_out(template, plan.only_annotated) {
        return Ok(Outcome::Skipped(skip));
    }
    let spec = template.get_mut("spec").and_then(Node::as_map_mut).ok_or(Refusal("no pod spec".into()))?;
    if spec.scalar("hostNetwork").map(Scalar::value) == Some(Value::Bool(true)) {
        return Err(Refusal(
            "the pod uses hostNetwork: true: its loopback is the node's, so every process on the node could \
             use the proxy's credentials"
                .into(),
        ));
    }
    let sidecar = plan.sidecar;
    let mut changes = Vec::new();
    changes.extend(place_container(spec, sidecar)?);
    changes.extend(add_volumes(spec, sidecar)?);
    let mut notes = Vec::new();
    changes.extend(set_fs_group(spec, sidecar, &mut notes)?);
    note_port_clashes(spec, plan, &mut notes);
    let tools = tool_containers(spec)?;
    changes.extend(no_proxy(tools, &mut notes));
    let tools = tool_containers(spec)?;
    changes.extend(tool_env(tools, plan));
    if !sidecar.native && (batch || runs_to_completion(spec)) {
        notes.push(
            "without native sidecars the pod completes only once the proxy exits: the tool must POST \
             http://127.0.0.1:9090/quitquitquit (the admin port) when it ends, as deploy/kubernetes/overlays/job shows"
                .into(),
        );
    }
    changes.extend(add_labels(template, sidecar)?);
    Ok(if changes.is_empty() { Outcome::Unchanged(notes) } else { Outcome::Injected(changes, notes) })
}

/// The base's `fsGroup`, so the proxy can read the Secret's file, when the
/// pod has none; a pod's own is kept (it serves as well), with a note.
fn set_fs_group(spec: &mut Map, sidecar: &Sidecar, notes: &mut Vec<String>) -> Result<Option<String>, Refusal> {
    match spec.get("securityContext").and_then(|sc| sc.as_map()?.scalar("fsGroup")) {
        None => {
            let sc = spec.map_entry("securityContext", None).ok_or(Refusal("securityContext is not a map".into()))?;
            sc.set("fsGroup", Node::Scalar(sidecar.fs_group.clone()), None);
            Ok(Some(format!("fsGroup {}", sidecar.fs_group.text())))
        }
        Some(group) if group.same(&sidecar.fs_group) => Ok(None),
        Some(group) => {
            notes.push(format!(
                "the pod's fsGroup {} is kept: the Secret's file gets that group (mode 0440), which every container \
                 of the pod, the proxy included, holds as a supplementary group",
                group.text()
            ));
            Ok(None)
        }
    }
}

/// Why the pod is skipped, if it is: annotated `"false"`, or not annotated
/// `"true"` under `--only-annotated`.
fn opted_out(template: &Map, only_annotated: bool) -> Option<String> {
    let annotation = template
        .get("metadata")
        .and_then(|m| m.at(&["annotations", ANNOTATION]))
        .and_then(Node::as_scalar)
        .map(Scalar::value);
    match annotation {
        Some(Value::Str("false") | Value::Bool(false)) => Some(format!("annotated {ANNOTATION}: \"false\"")),
        Some(Value::Str("true") | Value::Bool(true)) => None,
        _ if only_annotated => Some(format!("not annotated {ANNOTATION}: \"true\" (--only-annotated)")),
        _ => None,
    }
}

fn name_of(node: &Node) -> Option<&str> {
    node.as_map()?.str("name")
}

/// Where a container named like the proxy already is: the list and index.
fn find_proxy(spec: &Map) -> Result<Option<(&'static str, usize)>, Refusal> {
    let mut found = Vec::new();
    for list in ["initContainers", "containers"] {
        let items = spec.get(list).and_then(Node::as_seq).map(Vec::as_slice).unwrap_or_default();
        found.extend(items.iter().enumerate().filter(|(_, c)| name_of(c) == Some(PROXY)).map(|(i, _)| (list, i)));
    }
    match found.len() {
        0 | 1 => Ok(found.pop()),
        n => Err(Refusal(format!("the pod has {n} containers named {PROXY}"))),
    }
}

/// Adds the proxy's container, or checks the one already there.
fn place_container(spec: &mut Map, sidecar: &Sidecar) -> Result<Option<String>, Refusal> {
    let (list, placement) = if sidecar.native {
        ("initContainers", "native sidecar, after the pod's init containers")
    } else {
        ("containers", "first container, started before the tool by its postStart wait")
    };
    if let Some((found, index)) = find_proxy(spec)? {
        let existing = &spec.get(found).and_then(Node::as_seq).expect("find_proxy found it")[index];
        let differs = |what: String| {
            Refusal(format!(
                "the pod already has a container named {PROXY} that differs from the one inject adds ({what}); \
                 remove it, or inject with the options that added it"
            ))
        };
        if found != list {
            return Err(differs(format!("it is in {found}, inject puts it in {list}")));
        }
        if !sidecar.native && index != 0 {
            return Err(differs("it is not the first container".into()));
        }
        return existing.covers(&sidecar.container).map(|()| None).map_err(|path| differs(format!("first at {path}")));
    }
    let items = spec.seq_entry(list, Some("containers")).ok_or(Refusal(format!("{list} is not a list")))?;
    if sidecar.native {
        items.push(sidecar.container.clone());
    } else {
        items.insert(0, sidecar.container.clone());
    }
    Ok(Some(format!("container {PROXY} ({placement})")))
}

/// Adds the proxy's volumes, or checks those already there.
fn add_volumes(spec: &mut Map, sidecar: &Sidecar) -> Result<Option<String>, Refusal> {
    let volumes = spec.seq_entry("volumes", None).ok_or(Refusal("volumes is not a list".into()))?;
    let mut added = Vec::new();
    for volume in &sidecar.volumes {
        let name = name_of(volume).expect("the sidecar's volumes have names");
        match volumes.iter().find(|v| name_of(v) == Some(name)) {
            Some(existing) => existing.covers(volume).map_err(|path| {
                Refusal(format!(
                    "the pod already has a volume named {name} that differs from the one inject adds (first at {path})"
                ))
            })?,
            None => {
                volumes.push(volume.clone());
                added.push(name);
            }
        }
    }
    Ok((!added.is_empty()).then(|| format!("volumes {}", added.join(", "))))
}

/// The tool's containers: every container and init container but the
/// proxy, by name.
fn tool_containers(spec: &mut Map) -> Result<Vec<(String, &mut Map)>, Refusal> {
    let mut tools = Vec::new();
    for (list, items) in spec.iter_mut() {
        if !matches!(list.as_str(), Some("initContainers" | "containers")) {
            continue;
        }
        for container in items.as_seq_mut().into_iter().flatten() {
            let map = container.as_map_mut().ok_or(Refusal("a container is not a map".into()))?;
            let name = map.str("name").unwrap_or("?").to_owned();
            if name != PROXY {
                tools.push((name, map));
            }
        }
    }
    Ok(tools)
}

/// A note for each container port of the tool that the proxy also listens
/// on: the containers share one network namespace, so one of them could not
/// bind it.
fn note_port_clashes(spec: &Map, plan: &Plan<'_>, notes: &mut Vec<String>) {
    let ports = |container: &Node| -> Vec<i128> {
        let declared = container.at(&["ports"]).and_then(Node::as_seq).map(Vec::as_slice).unwrap_or_default();
        declared
            .iter()
            .filter_map(|p| match p.at(&["containerPort"])?.as_scalar()?.value() {
                Value::Int(port) => Some(port),
                _ => None,
            })
            .collect()
    };
    let mut ours = ports(&plan.sidecar.container);
    ours.push(i128::from(plan.listen_port));
    for list in ["initContainers", "containers"] {
        for container in spec.get(list).and_then(Node::as_seq).into_iter().flatten() {
            let name = name_of(container).unwrap_or("?");
            for port in ports(container).into_iter().filter(|p| name != PROXY && ours.contains(p)) {
                notes.push(format!(
                    "container {name} declares port {port}, which the proxy listens on too (its config.toml's \
                     listen.address or admin.address): change one of them, or the second to start cannot bind it"
                ));
            }
        }
    }
}

fn env_names(container: &Map) -> Vec<&str> {
    container.get("env").and_then(Node::as_seq).map(|env| env.iter().filter_map(name_of).collect()).unwrap_or_default()
}

fn env_entry(name: &str, value: &str) -> Node {
    let mut entry = Map::default();
    entry.push(Scalar::str("name"), Node::Scalar(Scalar::str(name)));
    entry.push(Scalar::str("value"), Node::Scalar(Scalar::str(value)));
    Node::Map(entry)
}

/// `NO_PROXY=127.0.0.1,localhost` in the tool's containers that set an
/// egress proxy (`HTTP_PROXY`, `https_proxy`...) and no `NO_PROXY`: in the
/// spelling of their proxy variables, upper case, lower case or both.
fn no_proxy(tools: Vec<(String, &mut Map)>, notes: &mut Vec<String>) -> Option<String> {
    let mut changed = Vec::new();
    for (name, container) in tools {
        let names = env_names(container);
        if names.iter().any(|n| n.eq_ignore_ascii_case("NO_PROXY")) {
            note_no_proxy(&name, container, notes);
            continue;
        }
        let upper = names.iter().any(|n| matches!(*n, "HTTP_PROXY" | "HTTPS_PROXY"));
        let lower = names.iter().any(|n| matches!(*n, "http_proxy" | "https_proxy"));
        let spellings = [("NO_PROXY", upper), ("no_proxy", lower)];
        for (variable, _) in spellings.iter().filter(|(_, wanted)| *wanted) {
            let env = container.seq_entry("env", None).expect("env holds the proxy variables just read");
            env.push(env_entry(variable, NO_PROXY_VALUE));
            changed.push(format!("{variable} in {name}"));
        }
    }
    (!changed.is_empty()).then(|| changed.join(", "))
}

/// A note when a container's literal `NO_PROXY` leaves loopback out.
fn note_no_proxy(name: &str, container: &Map, notes: &mut Vec<String>) {
    let env = container.get("env").and_then(Node::as_seq).map(Vec::as_slice).unwrap_or_default();
    for entry in env.iter().filter_map(Node::as_map) {
        let (Some(variable), Some(value)) = (entry.str("name"), entry.str("value")) else { continue };
        // 127.0.0.1 itself, or a range such as 127.0.0.0/8 where tools read them.
        let loopback = value.split(',').any(|host| host.trim().starts_with("127."));
        if variable.eq_ignore_ascii_case("NO_PROXY") && !loopback {
            notes.push(format!(
                "container {name} sets {variable} without 127.0.0.1: its requests to the proxy may go to the egress proxy"
            ));
        }
    }
}

/// `--tool-env NAME`: `NAME` set to the proxy's URL in the tool's containers.
fn tool_env(tools: Vec<(String, &mut Map)>, plan: &Plan<'_>) -> Option<String> {
    let mut changed = Vec::new();
    for (name, container) in tools {
        for variable in plan.tool_env {
            let wanted = env_entry(variable, plan.tool_url);
            let Some(env) = container.seq_entry("env", None) else { continue };
            let mut present = false;
            for entry in env.iter_mut().filter(|e| name_of(e) == Some(variable.as_str())) {
                present = true;
                if entry.covers(&wanted).is_err() || entry.as_map().is_some_and(|m| m.get("valueFrom").is_some()) {
                    *entry = wanted.clone();
                    changed.push(format!("{variable} in {name} (replaced)"));
                }
            }
            if !present {
                env.push(wanted);
                changed.push(format!("{variable} in {name}"));
            }
        }
    }
    (!changed.is_empty()).then(|| changed.join(", "))
}

/// Pods that end (Jobs' pods, `restartPolicy: Never` or `OnFailure`).
fn runs_to_completion(spec: &Map) -> bool {
    matches!(spec.str("restartPolicy"), Some("Never" | "OnFailure"))
}

/// The base pod's `truedat-auth-proxy/` labels, so the PodMonitor finds the pod.
fn add_labels(template: &mut Map, sidecar: &Sidecar) -> Result<Option<String>, Refusal> {
    let mut added = Vec::new();
    for (key, value) in &sidecar.labels {
        let name = key.as_str().expect("the sidecar's label keys are strings");
        let metadata = template.map_entry("metadata", Some("spec")).ok_or(Refusal("metadata is not a map".into()))?;
        let labels = metadata.map_entry("labels", None).ok_or(Refusal("metadata.labels is not a map".into()))?;
        if labels.get(name).is_none() {
            labels.set(name, value.clone(), None);
            added.push(name.to_owned());
        }
    }
    Ok((!added.is_empty()).then(|| format!("label {}", added.join(", "))))
}
