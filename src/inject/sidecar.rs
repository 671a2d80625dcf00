//! What `inject` adds, read from the manifests operators already apply:
//! `deploy/kubernetes/base/deployment.yaml` for the native sidecar, and that
//! Deployment with the JSON patch of `deploy/kubernetes/overlays/no-native-sidecar`
//! applied (as kustomize applies it) for the regular container. The binary
//! embeds both files, so the proxy's container, its volumes and the pod's
//! `fsGroup` have one definition; `tests/it/inject.rs` and
//! `tests/deploy/validate.sh` check the result against the rendered overlays.

use super::tree::{Map, Node, Scalar};
use super::yaml;

/// The proxy's container name, in the base manifest and in every injected pod.
pub const PROXY: &str = "truedat-auth-proxy";

const BASE_PATH: &str = "deploy/kubernetes/base/deployment.yaml";
const BASE: &str = include_str!("../../deploy/kubernetes/base/deployment.yaml");
const NO_NATIVE_PATH: &str = "deploy/kubernetes/overlays/no-native-sidecar/kustomization.yaml";
const NO_NATIVE: &str = include_str!("../../deploy/kubernetes/overlays/no-native-sidecar/kustomization.yaml");

/// What the user chooses on the command line.
#[derive(Clone, Debug)]
pub struct Choices {
    pub image: String,
    pub secret: String,
    pub config_map: String,
    /// A native sidecar (init container with `restartPolicy: Always`), or
    /// the first regular container with the `postStart` hold.
    pub native: bool,
}

/// The parts of the base pod that belong to the proxy, as chosen.
#[derive(Clone, Debug)]
pub struct Sidecar {
    /// The container, image set.
    pub container: Node,
    pub native: bool,
    /// The volumes its mounts name, pointing at the chosen ConfigMap and Secret.
    pub volumes: Vec<Node>,
    /// The pod's `fsGroup`, which makes the Secret's file readable by the proxy.
    pub fs_group: Scalar,
    /// The pod labels under `truedat-auth-proxy/` (the PodMonitor selects them).
    pub labels: Vec<(Scalar, Node)>,
}

/// The sidecar as `choices` want it. An error means the embedded manifests
/// lost a part `inject` needs (a test keeps that from being released).
pub fn build(choices: &Choices) -> Result<Sidecar, String> {
    let mut base = single(BASE, BASE_PATH)?;
    if !choices.native {
        for patch in json_patches(&single(NO_NATIVE, NO_NATIVE_PATH)?)? {
            apply(&mut base, &patch).map_err(|e| format!("{NO_NATIVE_PATH}: {e}"))?;
        }
    }
    let missing = |what: &str| format!("{BASE_PATH}: no {what}");
    let template = base.at(&["spec", "template"]).ok_or_else(|| missing("spec.template"))?;
    let pod = template.at(&["spec"]).and_then(Node::as_map).ok_or_else(|| missing("pod spec"))?;
    let list = if choices.native { "initContainers" } else { "containers" };
    let mut container = pod
        .get(list)
        .and_then(Node::as_seq)
        .and_then(|items| items.iter().find(|c| c.as_map().and_then(|m| m.str("name")) == Some(PROXY)))
        .ok_or_else(|| missing(&format!("{list} entry named {PROXY}")))?
        .canonical();
    let map = container.as_map_mut().ok_or_else(|| missing("container map"))?;
    map.set("image", Node::Scalar(Scalar::str(&choices.image)), None);
    let mounts: Vec<&str> = map
        .get("volumeMounts")
        .and_then(Node::as_seq)
        .map(|m| m.iter().filter_map(|m| m.as_map()?.str("name")).collect())
        .unwrap_or_default();
    let volumes = pod
        .get("volumes")
        .and_then(Node::as_seq)
        .map(|all| all.iter().filter(|v| v.as_map().and_then(|m| m.str("name")).is_some_and(|n| mounts.contains(&n))))
        .into_iter()
        .flatten()
        .map(|v| chosen_volume(v.canonical(), choices))
        .collect::<Vec<_>>();
    if volumes.len() != mounts.len() {
        return Err(missing("volume for every volumeMount of the proxy"));
    }
    let fs_group = pod
        .get("securityContext")
        .and_then(|sc| sc.as_map()?.scalar("fsGroup"))
        .ok_or_else(|| missing("securityContext.fsGroup"))?
        .canonical();
    let labels = template
        .at(&["metadata", "labels"])
        .and_then(Node::as_map)
        .map(|labels| {
            let ours = |k: &Scalar| k.as_str().is_some_and(|k| k.starts_with("truedat-auth-proxy/"));
            labels.iter().filter(|(k, _)| ours(k)).map(|(k, v)| (k.canonical(), v.canonical())).collect()
        })
        .unwrap_or_default();
    Ok(Sidecar { container, native: choices.native, volumes, fs_group, labels })
}

/// A volume pointing at the chosen ConfigMap or Secret.
fn chosen_volume(mut volume: Node, choices: &Choices) -> Node {
    if let Some(map) = volume.at_mut(&["configMap"]).and_then(Node::as_map_mut) {
        map.set("name", Node::Scalar(Scalar::str(&choices.config_map)), None);
    }
    if let Some(map) = volume.at_mut(&["secret"]).and_then(Node::as_map_mut) {
        map.set("secretName", Node::Scalar(Scalar::str(&choices.secret)), None);
    }
    volume
}

fn single(text: &str, path: &str) -> Result<Node, String> {
    let mut docs = yaml::documents(text).map_err(|e| format!("{path}: {e}"))?;
    match docs.len() {
        1 => Ok(docs.remove(0).0),
        n => Err(format!("{path}: {n} documents, expected one")),
    }
}

/// The JSON patches (their operations) of a kustomization's `patches`.
fn json_patches(kustomization: &Node) -> Result<Vec<Map>, String> {
    let bad = |what: &str| format!("{NO_NATIVE_PATH}: {what}");
    let patches = kustomization.at(&["patches"]).and_then(Node::as_seq).ok_or_else(|| bad("no patches"))?;
    let mut ops = Vec::new();
    for patch in patches {
        let text = patch
            .at(&["patch"])
            .and_then(Node::as_scalar)
            .and_then(Scalar::as_str)
            .ok_or_else(|| bad("a patch without text"))?;
        let doc = single(text, NO_NATIVE_PATH)?;
        let list = doc.as_seq().ok_or_else(|| bad("a patch that is not a JSON patch (a list of operations)"))?;
        for op in list {
            ops.push(op.as_map().ok_or_else(|| bad("a JSON patch operation that is not a map"))?.clone());
        }
    }
    Ok(ops)
}

/// One RFC 6902 operation (`add`, `remove`, `replace`, `move`, `copy`).
fn apply(doc: &mut Node, op: &Map) -> Result<(), String> {
    let pointer = |key: &str| op.str(key).map(tokens).ok_or_else(|| format!("an operation without {key}"));
    let path = pointer("path")?;
    let value = || op.get("value").cloned().ok_or("an operation without value".to_owned());
    match op.str("op") {
        Some("add") => add(doc, &path, value()?),
        Some("remove") => remove(doc, &path).map(drop),
        Some("replace") => remove(doc, &path).and_then(|_| add(doc, &path, value()?)),
        Some("move") => remove(doc, &pointer("from")?).and_then(|moved| add(doc, &path, moved)),
        Some("copy") => {
            let from = pointer("from")?;
            let copied = lookup(doc, &from).cloned().ok_or_else(|| format!("nothing at {}", from.join("/")))?;
            add(doc, &path, copied)
        }
        other => Err(format!("unsupported operation {other:?}")),
    }
}

/// The reference tokens of a JSON pointer (`/a/b~1c` → `a`, `b/c`).
fn tokens(pointer: &str) -> Vec<String> {
    pointer.split('/').skip(1).map(|t| t.replace("~1", "/").replace("~0", "~")).collect()
}

fn lookup<'a>(doc: &'a Node, path: &[String]) -> Option<&'a Node> {
    path.iter().try_fold(doc, |node, token| match node {
        Node::Map(map) => map.get(token),
        Node::Seq(items) => items.get(token.parse::<usize>().ok()?),
        Node::Scalar(_) => None,
    })
}

fn parent<'a>(doc: &'a mut Node, path: &'a [String]) -> Result<(&'a mut Node, &'a str), String> {
    let (last, init) = path.split_last().ok_or("the whole document as a target")?;
    let mut node = doc;
    for token in init {
        node = match node {
            Node::Map(map) => map.get_mut(token),
            Node::Seq(items) => token.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
            Node::Scalar(_) => None,
        }
        .ok_or_else(|| format!("nothing at /{}", path.join("/")))?;
    }
    Ok((node, last))
}

fn add(doc: &mut Node, path: &[String], value: Node) -> Result<(), String> {
    let (node, last) = parent(doc, path)?;
    match node {
        Node::Map(map) => map.set(last, value, None),
        Node::Seq(items) if last == "-" => items.push(value),
        Node::Seq(items) => match last.parse::<usize>() {
            Ok(i) if i <= items.len() => items.insert(i, value),
            _ => return Err(format!("no index {last} in /{}", path.join("/"))),
        },
        Node::Scalar(_) => return Err(format!("/{} is inside a scalar", path.join("/"))),
    }
    Ok(())
}

fn remove(doc: &mut Node, path: &[String]) -> Result<Node, String> {
    let (node, last) = parent(doc, path)?;
    let removed = match node {
        Node::Map(map) => map.remove(last),
        Node::Seq(items) => last.parse::<usize>().ok().filter(|i| *i < items.len()).map(|i| items.remove(i)),
        Node::Scalar(_) => None,
    };
    removed.ok_or_else(|| format!("nothing to remove at /{}", path.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::tree::Value;

    fn choices(native: bool) -> Choices {
        Choices { image: "img:1".into(), secret: "s".into(), config_map: "cm".into(), native }
    }

    #[test]
    fn the_native_sidecar_is_the_base_init_container() {
        let sidecar = build(&choices(true)).unwrap();
        let c = sidecar.container.as_map().unwrap();
        assert_eq!(c.str("name"), Some(PROXY));
        assert_eq!(c.str("image"), Some("img:1"));
        assert_eq!(c.str("restartPolicy"), Some("Always"));
        assert!(c.get("startupProbe").is_some() && c.get("lifecycle").is_none());
        let names: Vec<&str> = sidecar.volumes.iter().filter_map(|v| v.as_map()?.str("name")).collect();
        assert_eq!(names, ["truedat-auth-proxy-config", "truedat-auth-proxy-password"]);
        assert_eq!(sidecar.volumes[0].at(&["configMap", "name"]).and_then(Node::as_scalar), Some(&Scalar::str("cm")));
        let secret = sidecar.volumes[1].at(&["secret"]).and_then(Node::as_map).unwrap();
        assert_eq!(secret.str("secretName"), Some("s"));
        assert_eq!(secret.scalar("defaultMode").map(Scalar::value), Some(Value::Int(0o440)));
        assert_eq!(sidecar.fs_group.value(), Value::Int(65532));
        assert_eq!(sidecar.labels.len(), 1);
    }

    #[test]
    fn the_regular_container_is_the_overlays() {
        let sidecar = build(&choices(false)).unwrap();
        let c = sidecar.container.as_map().unwrap();
        assert_eq!(c.str("restartPolicy"), None);
        let hook = c.get("lifecycle").and_then(|l| l.at(&["postStart", "exec", "command"])).and_then(Node::as_seq);
        let hook: Vec<&str> = hook.unwrap().iter().filter_map(|a| a.as_scalar()?.as_str()).collect();
        assert_eq!(hook[..2], ["/truedat-auth-proxy", "wait"]);
        let env = c.get("env").and_then(Node::as_seq).unwrap();
        assert_eq!(env[0].as_map().unwrap().str("name"), Some("TRUEDAT_PROXY_SHUTDOWN__DELAY"));
        assert_eq!(sidecar.volumes.len(), 2);
    }

    #[test]
    fn json_patch_operations() {
        let mut doc = yaml::documents("a: {b: [1, 2]}\n").unwrap().remove(0).0;
        let ops = yaml::documents(
            "- {op: add, path: /a/b/-, value: 3}\n- {op: move, from: /a/b/0, path: /a/c}\n\
             - {op: copy, from: /a/c, path: /a/b/0}\n- {op: replace, path: /a/c, value: x}\n- {op: remove, path: /a/b/2}\n",
        )
        .unwrap()
        .remove(0)
        .0;
        for op in ops.as_seq().unwrap() {
            apply(&mut doc, op.as_map().unwrap()).unwrap();
        }
        let expected = yaml::documents("a: {b: [1, 2], c: x}\n").unwrap().remove(0).0;
        assert!(doc.same(&expected), "{doc:?}");
        let bad = yaml::documents("{op: remove, path: /a/zz}\n").unwrap().remove(0).0;
        assert!(apply(&mut doc, bad.as_map().unwrap()).is_err());
    }
}
