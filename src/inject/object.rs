//! Kubernetes objects: which ones hold a pod template and where, `List`s,
//! and the `Kind/namespace/name` every line of `inject` names an object by.

use super::pod::{self, Outcome, Plan};
use super::tree::Node;

/// Why an object stops the run (exit 2): a line for stderr.
#[derive(Debug, PartialEq)]
pub enum Problem {
    /// The object is refused; the line names it.
    Refused(String),
    /// The document is no Kubernetes object; the caller adds its position.
    Invalid(String),
}

/// Where the pod template of `kind` in API group `group` is, if it has one.
/// `Some(&[])`: the object is the pod.
fn template_path(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") | ("batch", "Job") => {
            Some(&["spec", "template"])
        }
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// `Kind/namespace/name` (or `Kind/name` without a namespace).
fn identity(object: &Node) -> String {
    let field = |key: &str| object.at(&["metadata", key]).and_then(Node::as_scalar).and_then(|s| s.as_str());
    let kind = object.as_map().and_then(|m| m.str("kind")).unwrap_or("?");
    let name = field("name").map(str::to_owned).or_else(|| field("generateName").map(|g| format!("{g}*")));
    let name = name.unwrap_or_else(|| "<no name>".into());
    match field("namespace") {
        Some(namespace) => format!("{kind}/{namespace}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Injects into `object` (and into the items of a `List`), adding a line per
/// object to `lines`. Returns whether anything changed.
pub fn visit(object: &mut Node, plan: &Plan<'_>, lines: &mut Vec<String>) -> Result<bool, Problem> {
    let map = object.as_map_mut().ok_or_else(|| invalid("a document that is not a mapping"))?;
    let kind = map.str("kind").ok_or_else(|| invalid("an object without kind"))?.to_owned();
    let api_version = map.str("apiVersion").unwrap_or_default().to_owned();
    if kind.ends_with("List") && map.get("items").is_some_and(|items| items.as_seq().is_some()) {
        let items = map.get_mut("items").and_then(Node::as_seq_mut).expect("checked just above");
        let mut changed = false;
        for item in items {
            changed |= visit(item, plan, lines)?;
        }
        return Ok(changed);
    }
    let id = identity(object);
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let Some(path) = template_path(group, &kind) else {
        lines.push(format!("{id}: skipped: no pod template"));
        return Ok(false);
    };
    let batch = matches!(kind.as_str(), "Job" | "CronJob");
    let template = object.at_mut(path).and_then(Node::as_map_mut);
    let template =
        template.ok_or_else(|| Problem::Refused(format!("{id}: refused: no pod template at {}", path.join("."))))?;
    let outcome =
        pod::inject(template, plan, batch).map_err(|e| Problem::Refused(format!("{id}: refused: {}", e.0)))?;
    let (changed, notes) = match outcome {
        Outcome::Injected(changes, notes) => {
            lines.push(format!("{id}: injected: {}", changes.join("; ")));
            (true, notes)
        }
        Outcome::Unchanged(notes) => {
            lines.push(format!("{id}: unchanged: already injected"));
            (false, notes)
        }
        Outcome::Skipped(reason) => {
            lines.push(format!("{id}: skipped: {reason}"));
            (false, Vec::new())
        }
    };
    lines.extend(notes.into_iter().map(|note| format!("{id}: note: {note}")));
    Ok(changed)
}

fn invalid(what: &str) -> Problem {
    Problem::Invalid(format!("{what}: a Kubernetes manifest is a mapping with apiVersion and kind"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_core_groups_kinds_hold_pod_templates() {
        assert_eq!(template_path("", "Pod"), Some(&[][..]));
        assert_eq!(template_path("apps", "StatefulSet"), Some(&["spec", "template"][..]));
        assert_eq!(template_path("extensions", "Deployment"), Some(&["spec", "template"][..]));
        assert_eq!(template_path("batch", "CronJob"), Some(&["spec", "jobTemplate", "spec", "template"][..]));
        // Same kind names, other shapes: a Volcano Job, an OpenShift DeploymentConfig's cousin.
        assert_eq!(template_path("batch.volcano.sh", "Job"), None);
        assert_eq!(template_path("apps.openshift.io", "Deployment"), None);
        assert_eq!(template_path("", "Service"), None);
    }

    #[test]
    fn objects_are_named_kind_namespace_name() {
        let doc = |text: &str| crate::inject::yaml::documents(text).unwrap().remove(0).0;
        assert_eq!(identity(&doc("kind: Pod\nmetadata: {name: a, namespace: b}\n")), "Pod/b/a");
        assert_eq!(identity(&doc("kind: Job\nmetadata: {generateName: run-}\n")), "Job/run-*");
        assert_eq!(identity(&doc("kind: Pod\n")), "Pod/<no name>");
    }
}
