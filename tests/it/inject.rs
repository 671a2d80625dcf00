//! `truedat-auth-proxy inject` (SPEC §1, §10), the real binary on the
//! fixtures of `tests/deploy/inject/` (shaped like charts' and kubectl's
//! output): every field it does not add is unchanged (parsed trees
//! compared), injecting twice is injecting once, refusals exit 2 with one
//! line and nothing on stdout, and what it adds is the proxy of
//! `deploy/kubernetes/base` (and of `overlays/job`), as
//! `deploy/kubernetes/components/sidecar` adds it too.
//! `tests/deploy/validate.sh` checks the same with PyYAML and kubectl, and
//! validates the outputs against Kubernetes' schemas.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use truedat_auth_proxy::inject::tree::{Map, Node, Scalar, Value};
use truedat_auth_proxy::inject::{PROXY, documents};

use crate::support::proxy::BINARY;

const FIXTURES: &str = "tests/deploy/inject";
const VOLUMES: [&str; 2] = ["truedat-auth-proxy-config", "truedat-auth-proxy-password"];
const LABEL: &str = "truedat-auth-proxy/sidecar";
const NO_PROXY: [&str; 2] = ["NO_PROXY", "no_proxy"];

/// What a run of `inject` gave.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: Vec<String>,
}

/// Runs `truedat-auth-proxy inject ARGS` with `stdin` (none: an empty, closed stdin).
fn inject(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(BINARY)
        .arg("inject")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let mut input = child.stdin.take().expect("stdin is piped");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || input.write_all(text.as_bytes()));
    let output = child.wait_with_output().expect("the binary exits");
    writer.join().expect("the writer thread ends").expect("the binary reads its stdin");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 output"),
        stderr: String::from_utf8_lossy(&output.stderr).lines().map(str::to_owned).collect(),
    }
}

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The documents of YAML or JSON text.
fn parse(text: &str) -> Vec<Node> {
    if text.trim_start().starts_with('{') {
        serde_json::Deserializer::from_str(text).into_iter::<Node>().map(|d| d.expect("valid JSON")).collect()
    } else {
        documents(text).unwrap_or_else(|e| panic!("{e}\n{text}")).into_iter().map(|(node, _)| node).collect()
    }
}

/// The objects of a document: itself, or a List's items.
fn objects(doc: &Node) -> Vec<&Node> {
    match doc.at(&["items"]).and_then(Node::as_seq) {
        Some(items) if str_at(doc, &["kind"]).is_some_and(|k| k.ends_with("List")) => {
            items.iter().flat_map(objects).collect()
        }
        _ => vec![doc],
    }
}

fn objects_mut(doc: &mut Node) -> Vec<&mut Node> {
    let is_list = str_at(doc, &["kind"]).is_some_and(|k| k.ends_with("List"))
        && doc.at(&["items"]).and_then(Node::as_seq).is_some();
    if is_list {
        let items = doc.at_mut(&["items"]).and_then(Node::as_seq_mut).expect("checked");
        return items.iter_mut().flat_map(objects_mut).collect();
    }
    vec![doc]
}

fn str_at<'a>(node: &'a Node, path: &[&str]) -> Option<&'a str> {
    node.at(path).and_then(Node::as_scalar).and_then(Scalar::as_str)
}

/// The path to the pod template (`metadata` and `spec`) of a workload.
fn template_path(object: &Node) -> Option<&'static [&'static str]> {
    match str_at(object, &["kind"])? {
        "Pod" => Some(&[]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

fn name_of(node: &Node) -> Option<&str> {
    str_at(node, &["name"])
}

/// The document less what inject adds. With `before` (the input), only what
/// `before` lacked; without, all of it (for the base manifests, which hold it).
fn strip(doc: &Node, before: Option<&Node>) -> Node {
    let mut doc = doc.clone();
    let olds: Vec<Option<&Node>> = match before {
        Some(before) => objects(before).into_iter().map(Some).collect(),
        None => vec![None; objects(&doc).len()],
    };
    for (object, old) in objects_mut(&mut doc).into_iter().zip(olds) {
        let Some(path) = template_path(object) else { continue };
        let old = old.map(|o| o.at(path).expect("the input has the template"));
        let template = object.at_mut(path).and_then(Node::as_map_mut).expect("a pod template");
        let old_spec = old.map(|o| o.at(&["spec"]).and_then(Node::as_map).expect("a pod spec"));
        strip_pod(template.get_mut("spec").and_then(Node::as_map_mut).expect("a pod spec"), old_spec);
        let had = |path: &[&str]| old.is_none_or(|o| o.at(path).is_some());
        let (had_label, had_labels, had_metadata) = (
            old.is_some_and(|o| o.at(&["metadata", "labels", LABEL]).is_some()),
            had(&["metadata", "labels"]),
            had(&["metadata"]),
        );
        let metadata = template.get_mut("metadata").and_then(Node::as_map_mut).expect("metadata");
        let labels = metadata.get_mut("labels").and_then(Node::as_map_mut).expect("labels");
        if !had_label {
            labels.remove(LABEL);
        }
        if labels.iter().next().is_none() && !had_labels {
            metadata.remove("labels");
        }
        if metadata.iter().next().is_none() && !had_metadata {
            template.remove("metadata");
        }
    }
    doc
}

fn strip_pod(spec: &mut Map, old: Option<&Map>) {
    let had = |key: &str| old.is_none_or(|o| o.get(key).is_some());
    for (list, ours) in [("initContainers", &[PROXY][..]), ("containers", &[PROXY][..]), ("volumes", &VOLUMES[..])] {
        let Some(items) = spec.get_mut(list).and_then(Node::as_seq_mut) else { continue };
        items.retain(|item| !name_of(item).is_some_and(|n| ours.contains(&n)));
        if items.is_empty() && !had(list) {
            spec.remove(list);
        }
    }
    let had_fs_group = old.is_some_and(|o| o.get("securityContext").and_then(|sc| sc.at(&["fsGroup"])).is_some());
    if let Some(sc) = spec.get_mut("securityContext").and_then(Node::as_map_mut) {
        if !had_fs_group {
            sc.remove("fsGroup");
        }
        if sc.iter().next().is_none() && !had("securityContext") {
            spec.remove("securityContext");
        }
    }
    let Some(old) = old else { return };
    let old_containers: Vec<Node> = ["initContainers", "containers"]
        .iter()
        .flat_map(|list| old.get(list).and_then(Node::as_seq).cloned().unwrap_or_default())
        .collect();
    let lists = spec.iter_mut().filter(|(k, _)| matches!(k.as_str(), Some("initContainers" | "containers")));
    for container in lists.flat_map(|(_, items)| items.as_seq_mut().into_iter().flatten()) {
        let before = old_containers.iter().find(|c| name_of(c) == name_of(container)).expect("the same containers");
        let had_env: Vec<&str> =
            before.at(&["env"]).and_then(Node::as_seq).into_iter().flatten().filter_map(name_of).collect();
        let map = container.as_map_mut().expect("a container");
        if let Some(env) = map.get_mut("env").and_then(Node::as_seq_mut) {
            let added = |n: &str| (NO_PROXY.contains(&n) || n == "TRUEDAT_URL") && !had_env.contains(&n);
            env.retain(|e| !name_of(e).is_some_and(added));
            if env.is_empty() && before.at(&["env"]).is_none() {
                map.remove("env");
            }
        }
    }
}

/// The fixtures a run can inject (not the refused one, not the kustomization).
fn fixtures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURES);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("the fixtures directory")
        .map(|e| e.expect("a directory entry").file_name().to_string_lossy().into_owned())
        .filter(|n| {
            (n.ends_with(".yaml") || n.ends_with(".json")) && n != "kustomization.yaml" && n != "host-network.yaml"
        })
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    names
}

/// The proxy containers of every pod in `docs`: (object kind/name, container, pod spec).
fn proxies(docs: &[Node]) -> Vec<(String, Node, Map)> {
    let mut found = Vec::new();
    for object in docs.iter().flat_map(objects) {
        let Some(spec) = template_path(object).and_then(|p| object.at(p)).and_then(|t| t.at(&["spec"])) else {
            continue;
        };
        let spec = spec.as_map().expect("a pod spec");
        for list in ["initContainers", "containers"] {
            for c in spec.get(list).and_then(Node::as_seq).into_iter().flatten() {
                if name_of(c) == Some(PROXY) {
                    let id = format!(
                        "{}/{}",
                        str_at(object, &["kind"]).unwrap_or("?"),
                        str_at(object, &["metadata", "name"]).unwrap_or("?")
                    );
                    found.push((id, c.clone(), spec.clone()));
                }
            }
        }
    }
    found
}

#[test]
fn every_field_it_does_not_add_is_unchanged_and_a_second_run_changes_nothing() {
    for fixture in fixtures() {
        let path = format!("{FIXTURES}/{fixture}");
        let before = parse(&read(&path));
        for extra in [&[][..], &["--no-native-sidecar"][..]] {
            let args: Vec<&str> =
                ["--tool-env", "TRUEDAT_URL"].iter().chain(extra).copied().chain([path.as_str()]).collect();
            let first = inject(&args, "");
            assert_eq!(first.code, Some(0), "{args:?}: {:?}", first.stderr);
            let after = parse(&first.stdout);
            assert_eq!(after.len(), before.len(), "{args:?}");
            for (old, new) in before.iter().zip(&after) {
                let stripped = strip(new, Some(old));
                assert!(stripped.same(old), "{args:?}: a field changed\n{stripped:#?}\n---\n{old:#?}");
            }
            assert!(!proxies(&after).is_empty(), "{args:?}: nothing injected");
            let second =
                inject(&args[..args.len() - 1].iter().copied().chain(["-"]).collect::<Vec<_>>(), &first.stdout);
            assert_eq!(second.code, Some(0), "{args:?}: {:?}", second.stderr);
            assert_eq!(second.stdout, first.stdout, "{args:?}: not idempotent");
            assert!(second.stderr.iter().all(|l| !l.contains(": injected:")), "{:?}", second.stderr);
        }
    }
}

#[test]
fn objects_it_leaves_alone_are_written_back_byte_for_byte() {
    let input = read(&format!("{FIXTURES}/chart.yaml"));
    let run = inject(&[], &input);
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let sections: Vec<&str> = input.split("\n---\n").collect();
    // ServiceAccount, ConfigMap, Service: verbatim, comments and quoting included.
    for section in sections[..3].iter().map(|s| s.trim_start_matches("---\n")) {
        assert!(run.stdout.contains(&format!("---\n{section}\n")), "{section}\n--- not found in ---\n{}", run.stdout);
    }
    // The Deployment is rewritten, its opening comments kept.
    assert!(
        run.stdout.contains("---\n# Source: reporting/templates/deployment.yaml\n# A chart's Deployment"),
        "{}",
        run.stdout
    );
    // 0755 stays octal (0755, as written), never the string '0755'.
    assert!(run.stdout.contains("defaultMode: 0755\n"), "{}", run.stdout);
    assert_eq!(run.stderr.iter().filter(|l| l.contains(": skipped: no pod template")).count(), 3, "{:?}", run.stderr);
}

#[test]
fn json_comes_back_as_json_in_order_and_list_items_are_injected() {
    let run = inject(&[&format!("{FIXTURES}/list.json")], "");
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON out for JSON in");
    assert_eq!(value["kind"], "List");
    assert!(
        run.stdout.trim_start().starts_with("{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"List\""),
        "{}",
        run.stdout
    );
    let kinds: Vec<&str> = value["items"].as_array().unwrap().iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["DaemonSet", "ReplicaSet", "Service"]);
    let daemon_set = &value["items"][0]["spec"]["template"]["spec"];
    assert_eq!(daemon_set["initContainers"][0]["name"], PROXY);
    let secret = daemon_set["volumes"].as_array().unwrap().iter().find(|v| v["name"] == VOLUMES[1]).unwrap();
    assert_eq!(secret["secret"]["defaultMode"], 0o440, "a number in JSON, not the YAML text");
    assert!(
        run.stderr.iter().any(|l| l == "Service/monitoring/node-report: skipped: no pod template"),
        "{:?}",
        run.stderr
    );
    let yaml_list = inject(&[&format!("{FIXTURES}/list.yaml")], "");
    assert!(yaml_list.stdout.starts_with("---\n# `kubectl get deploy,job -o yaml`"), "{}", yaml_list.stdout);
    assert_eq!(proxies(&parse(&yaml_list.stdout)).len(), 2);
}

#[test]
fn the_native_sidecar_follows_the_pods_own_init_containers() {
    let run = inject(&[&format!("{FIXTURES}/chart.yaml")], "");
    let docs = parse(&run.stdout);
    let deployment = docs.iter().find(|d| str_at(d, &["kind"]) == Some("Deployment")).unwrap();
    let spec = deployment.at(&["spec", "template", "spec"]).unwrap();
    let init: Vec<&str> =
        spec.at(&["initContainers"]).and_then(Node::as_seq).unwrap().iter().filter_map(name_of).collect();
    assert_eq!(init, ["wait-for-db", "migrate", PROXY]);
    let proxy = &spec.at(&["initContainers"]).and_then(Node::as_seq).unwrap()[2];
    assert_eq!(str_at(proxy, &["restartPolicy"]), Some("Always"));
    assert_eq!(str_at(proxy, &["image"]), Some(concat!("truedat-auth-proxy:", env!("CARGO_PKG_VERSION"))));
    let secret =
        spec.at(&["volumes"]).and_then(Node::as_seq).unwrap().iter().find(|v| name_of(v) == Some(VOLUMES[1])).unwrap();
    assert_eq!(str_at(secret, &["secret", "secretName"]), Some("truedat-auth-proxy-credentials"));
    // The chart's own fsGroup stays, and inject says what that means.
    assert_eq!(
        spec.at(&["securityContext", "fsGroup"]).and_then(Node::as_scalar).map(Scalar::value),
        Some(Value::Int(1001))
    );
    assert!(
        run.stderr.iter().any(|l| l.starts_with("Deployment/release-reporting: note: the pod's fsGroup 1001 is kept")),
        "{:?}",
        run.stderr
    );
    // The chart's report container declares 8080, where the proxy listens.
    let clash =
        "Deployment/release-reporting: note: container report declares port 8080, which the proxy listens on too";
    assert!(run.stderr.iter().any(|l| l.starts_with(clash)), "{:?}", run.stderr);
    // Without one, the base's fsGroup is set.
    let run = inject(&[&format!("{FIXTURES}/statefulset.yaml")], "");
    let docs = parse(&run.stdout);
    let fs_group = docs[1].at(&["spec", "template", "spec", "securityContext", "fsGroup"]).and_then(Node::as_scalar);
    assert_eq!(fs_group.map(Scalar::value), Some(Value::Int(65532)));
}

#[test]
fn without_native_sidecars_the_proxy_is_the_first_container_and_jobs_are_told_to_end_it() {
    let run = inject(&["--no-native-sidecar", &format!("{FIXTURES}/cronjob.yaml")], "");
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let docs = parse(&run.stdout);
    let spec = docs[0].at(&["spec", "jobTemplate", "spec", "template", "spec"]).unwrap();
    assert!(spec.at(&["initContainers"]).is_none());
    let containers = spec.at(&["containers"]).and_then(Node::as_seq).unwrap();
    assert_eq!(containers.iter().filter_map(name_of).collect::<Vec<_>>(), [PROXY, "export"]);
    assert_eq!(containers[0].at(&["restartPolicy"]), None);
    let hook = containers[0].at(&["lifecycle", "postStart", "exec", "command"]).and_then(Node::as_seq).unwrap();
    let hook: Vec<&str> = hook.iter().filter_map(|a| a.as_scalar()?.as_str()).collect();
    assert_eq!(
        hook,
        ["/truedat-auth-proxy", "wait", "--config", "/etc/truedat-auth-proxy/config.toml", "--timeout", "5m"]
    );
    let notes: Vec<&String> = run.stderr.iter().filter(|l| l.contains("quitquitquit")).collect();
    assert_eq!(notes.len(), 1, "{:?}", run.stderr);
    assert!(notes[0].starts_with("CronJob/nightly-export: note: "), "{notes:?}");
    // A Deployment needs no such note.
    let run = inject(&["--no-native-sidecar", &format!("{FIXTURES}/chart.yaml")], "");
    assert!(run.stderr.iter().all(|l| !l.contains("quitquitquit")), "{:?}", run.stderr);
}

#[test]
fn loopback_bypasses_the_egress_proxy_and_tool_env_points_at_the_proxy() {
    let run = inject(&["--tool-env", "TRUEDAT_URL", "--tool-env", "TD_BASE", &format!("{FIXTURES}/chart.yaml")], "");
    let docs = parse(&run.stdout);
    let containers = docs[3].at(&["spec", "template", "spec", "containers"]).and_then(Node::as_seq).unwrap();
    let env = |c: &Node| -> Vec<(String, String)> {
        let entries = c.at(&["env"]).and_then(Node::as_seq).cloned().unwrap_or_default();
        entries
            .iter()
            .filter_map(|e| Some((name_of(e)?.to_owned(), str_at(e, &["value"]).unwrap_or("").to_owned())))
            .collect()
    };
    let report = env(&containers[0]);
    assert!(report.contains(&("NO_PROXY".into(), "127.0.0.1,localhost".into())), "{report:?}");
    assert!(report.contains(&("TRUEDAT_URL".into(), "http://127.0.0.1:8080".into())), "{report:?}");
    assert!(report.contains(&("TD_BASE".into(), "http://127.0.0.1:8080".into())), "{report:?}");
    let metrics = env(&containers[1]);
    assert!(metrics.iter().all(|(n, _)| n != "NO_PROXY"), "no egress proxy there: {metrics:?}");
    assert!(metrics.contains(&("TRUEDAT_URL".into(), "http://127.0.0.1:8080".into())), "{metrics:?}");
    // Every other container: the init containers too.
    let init = docs[3].at(&["spec", "template", "spec", "initContainers"]).and_then(Node::as_seq).unwrap();
    assert!(env(&init[1]).contains(&("TRUEDAT_URL".into(), "http://127.0.0.1:8080".into())), "{:?}", env(&init[1]));
    // Lower-case proxy variables get a lower-case no_proxy.
    let run = inject(&[&format!("{FIXTURES}/cronjob.yaml")], "");
    let export = &parse(&run.stdout)[0];
    let env =
        export.at(&["spec", "jobTemplate", "spec", "template", "spec", "containers"]).and_then(Node::as_seq).unwrap()
            [0]
        .clone();
    assert!(env.at(&["env"]).and_then(Node::as_seq).unwrap().iter().any(|e| name_of(e) == Some("no_proxy")));
    // A NO_PROXY of the tool's own is kept; without loopback, a note says so.
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: t\n      image: x:1\n      env: [{name: HTTP_PROXY, value: 'http://egress:3128'}, {name: NO_PROXY, value: .svc}]\n";
    let run = inject(&[], input);
    assert!(!run.stdout.contains("127.0.0.1,localhost"), "{}", run.stdout);
    assert!(
        run.stderr.iter().any(|l| l.starts_with("Pod/p: note: container t sets NO_PROXY without 127.0.0.1")),
        "{:?}",
        run.stderr
    );
    // A variable the tool already sets otherwise is replaced, and that is said.
    let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: t\n      image: x:1\n      env: [{name: TRUEDAT_URL, value: 'https://truedat.example.com'}]\n";
    let run = inject(&["--tool-env", "TRUEDAT_URL"], input);
    assert!(run.stdout.contains("value: http://127.0.0.1:8080"), "{}", run.stdout);
    assert!(run.stderr[0].contains("TRUEDAT_URL in t (replaced)"), "{:?}", run.stderr);
}

#[test]
fn only_annotated_pod_templates_with_the_option_and_never_those_annotated_false() {
    let files = [format!("{FIXTURES}/chart.yaml"), format!("{FIXTURES}/cronjob.yaml")];
    let run = inject(&["--only-annotated", &files[0], &files[1]], "");
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let injected: Vec<String> = proxies(&parse(&run.stdout)).into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(injected, ["CronJob/nightly-export"]);
    assert!(
        run.stderr.iter().any(|l| l.starts_with("Deployment/release-reporting: skipped: not annotated")),
        "{:?}",
        run.stderr
    );
    let opted_out = read(&files[1]).replace(
        "truedat-auth-proxy/inject: \"true\"\n        spec:",
        "truedat-auth-proxy/inject: \"false\"\n        spec:",
    );
    let run = inject(&[], &opted_out);
    assert_eq!(run.stdout, format!("---\n{opted_out}"), "left as it was");
    assert!(run.stderr[0].contains("skipped: annotated truedat-auth-proxy/inject: \"false\""), "{:?}", run.stderr);
}

/// Exit 2, nothing on stdout, one line on stderr containing `named`.
fn assert_refused(run: &Run, named: &str) {
    assert_eq!(run.code, Some(2), "{:?}", run.stderr);
    assert_eq!(run.stdout, "", "nothing partial on stdout");
    assert_eq!(run.stderr.len(), 1, "{:?}", run.stderr);
    assert!(run.stderr[0].contains(named), "{:?} does not name {named}", run.stderr);
}

#[test]
fn refusals_exit_2_with_one_line_and_nothing_on_stdout() {
    // hostNetwork, even after objects that inject well.
    let host = format!("{FIXTURES}/host-network.yaml");
    let run = inject(&[&format!("{FIXTURES}/pod.yaml"), &host], "");
    assert_refused(&run, "DaemonSet/kube-system/node-agent: refused: the pod uses hostNetwork: true");
    // A proxy container other than the one inject adds (another image here).
    let injected = inject(&[&format!("{FIXTURES}/pod.yaml")], "").stdout;
    assert_refused(
        &inject(&["--image", "registry.example.com/truedat-auth-proxy:2"], &injected),
        "Pod/debug-shell: refused: the pod already has a container named truedat-auth-proxy that differs from the one \
         inject adds (first at .image)",
    );
    let run = inject(&["--no-native-sidecar"], &injected);
    assert_refused(&run, "it is in initContainers, inject puts it in containers");
    // A volume of the proxy's name that is another volume.
    let clash = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: tools}\nspec:\n  containers: [{name: t, image: 'x:1'}]\n  volumes: [{name: truedat-auth-proxy-config, emptyDir: {}}]\n";
    assert_refused(
        &inject(&[], clash),
        "Pod/tools/p: refused: the pod already has a volume named truedat-auth-proxy-config",
    );
    // Input that does not parse: the line and column.
    assert_refused(&inject(&[], "kind: Pod\nmetadata:\n  name: x\n bad: 1\n"), "<stdin>: line 4 column 2: ");
    assert_refused(&inject(&["-"], "{\"kind\": \"Pod\",\n \"metadata\": [1,]}"), "<stdin>: line 2 column 17: ");
    assert_refused(
        &inject(&[], "kind: A\n---\n- not\n- an object\n"),
        "<stdin>: line 3 column 1: a document that is not a mapping",
    );
    assert_refused(&inject(&[], "metadata: {name: x}\n"), "<stdin>: line 1 column 1: an object without kind");
    assert_refused(&inject(&["no/such/file.yaml"], ""), "cannot read no/such/file.yaml");
}

#[test]
fn stdin_files_and_dash_are_read_in_order() {
    let pod = read(&format!("{FIXTURES}/pod.yaml"));
    let from_stdin = inject(&[], &pod);
    let from_dash = inject(&["-"], &pod);
    let from_file = inject(&[&format!("{FIXTURES}/pod.yaml")], "");
    assert_eq!(from_stdin.code, Some(0));
    assert_eq!(from_stdin.stdout, from_dash.stdout);
    assert_eq!(from_stdin.stdout, from_file.stdout);
    let both = inject(&[&format!("{FIXTURES}/cronjob.yaml"), "-"], &pod);
    let docs = parse(&both.stdout);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| str_at(d, &["kind"])).collect();
    assert_eq!(kinds, ["CronJob", "Pod"]);
    let empty = inject(&[], "");
    assert_eq!((empty.code, empty.stdout.as_str()), (Some(0), ""));
}

/// Helm runs `truedat-auth-proxy inject ARGS` (the `--post-renderer-args`)
/// with the rendered chart on stdin, each template as `---` and a `# Source:`
/// line, and takes stdout; Helm 4 splits it at `\n---\n` and wants a kind and
/// a name in every piece. (Helm itself cannot be installed here: this is its
/// contract, run with the binary as Helm runs it.)
#[test]
fn it_works_as_a_helm_post_renderer() {
    let chart = read(&format!("{FIXTURES}/chart.yaml"));
    let rendered: String =
        chart.split("\n---\n").map(|t| format!("---\n{}\n", t.trim_start_matches("---\n"))).collect();
    let run = inject(
        &["--image", "registry.example.com/truedat-auth-proxy:0.1.0", "--secret", "reporting-truedat"],
        &rendered,
    );
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let pieces: Vec<&str> = run.stdout.split("\n---\n").filter(|p| !p.trim().is_empty()).collect();
    assert_eq!(pieces.len(), 4);
    for piece in pieces {
        let docs = parse(piece.trim_start_matches("---\n"));
        assert_eq!(docs.len(), 1, "{piece}");
        assert!(str_at(&docs[0], &["kind"]).is_some() && str_at(&docs[0], &["metadata", "name"]).is_some(), "{piece}");
        assert!(piece.trim_start_matches("---\n").starts_with("# Source: reporting/templates/"), "{piece}");
    }
    let injected = proxies(&parse(&run.stdout));
    assert_eq!(injected.len(), 1);
    let secret = injected[0]
        .2
        .get("volumes")
        .and_then(Node::as_seq)
        .unwrap()
        .iter()
        .find(|v| name_of(v) == Some(VOLUMES[1]))
        .cloned()
        .unwrap();
    assert_eq!(str_at(&secret, &["secret", "secretName"]), Some("reporting-truedat"));
}

#[test]
fn the_proxy_it_adds_is_the_base_manifests_one() {
    // The base Deployment less the proxy, injected, is the base Deployment.
    let base = parse(&read("deploy/kubernetes/base/deployment.yaml")).remove(0);
    let bare = strip(&base, None);
    assert!(proxies(std::slice::from_ref(&bare)).is_empty());
    let run = inject(&["--image", "truedat-auth-proxy"], &as_json(&bare));
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let again = parse(&run.stdout).remove(0);
    assert!(again.same(&base), "inject and deploy/kubernetes/base have drifted apart:\n{}", run.stdout);
    // overlays/job holds the container of the no-native-sidecar overlay.
    let job = parse(&read("deploy/kubernetes/overlays/job/job.yaml")).remove(0);
    let run = inject(&["--no-native-sidecar", "--image", "truedat-auth-proxy"], &as_json(&strip(&job, None)));
    assert_eq!(run.code, Some(0), "{:?}", run.stderr);
    let again = parse(&run.stdout).remove(0);
    assert!(
        again.same(&job),
        "inject --no-native-sidecar and overlays/job/job.yaml have drifted apart:\n{}",
        run.stdout
    );
}

/// `node` as JSON: inject's input must be text, and JSON keeps everything
/// `Node::same` compares (it also takes inject's JSON path).
fn as_json(node: &Node) -> String {
    serde_json::to_string(node).expect("a Node serializes")
}

#[test]
fn the_kustomize_component_adds_the_same_container() {
    let run = inject(&["--image", "truedat-auth-proxy", &format!("{FIXTURES}/pod.yaml")], "");
    let (_, container, spec) = proxies(&parse(&run.stdout)).remove(0);
    let volumes: Vec<Node> = spec
        .get("volumes")
        .and_then(Node::as_seq)
        .unwrap()
        .iter()
        .filter(|v| name_of(v).is_some_and(|n| VOLUMES.contains(&n)))
        .cloned()
        .collect();
    let kustomization = parse(&read("deploy/kubernetes/components/sidecar/kustomization.yaml")).remove(0);
    let patches = kustomization.at(&["patches"]).and_then(Node::as_seq).unwrap();
    let mut kinds = Vec::new();
    for patch in patches {
        let target = patch.at(&["target"]).unwrap();
        assert_eq!(str_at(target, &["labelSelector"]), Some("truedat-auth-proxy/inject=true"));
        kinds.extend(str_at(target, &["kind"]).unwrap().split('|').map(str::to_owned));
        let file = format!("deploy/kubernetes/components/sidecar/{}", str_at(patch, &["path"]).unwrap());
        let doc = parse(&read(&file)).remove(0);
        let (_, theirs, their_spec) = proxies(std::slice::from_ref(&doc)).remove(0);
        assert!(theirs.same(&container), "{file}: not inject's container:\n{theirs:#?}\n{container:#?}");
        let init = their_spec.get("initContainers").and_then(Node::as_seq).unwrap();
        assert!(init.iter().any(|c| c.same(&container)), "{file}: not a native sidecar");
        let mut their_volumes = their_spec.get("volumes").and_then(Node::as_seq).unwrap().clone();
        for v in &mut their_volumes {
            if let Some(secret) = v.at_mut(&["secret"]).and_then(Node::as_map_mut) {
                let mode = secret.scalar("defaultMode").map(Scalar::value);
                assert_eq!(mode, Some(Value::Int(0o444)), "{file}: the component sets no fsGroup, so 0444");
                secret.set("defaultMode", Node::Scalar(Scalar::Plain("0440".into())), None);
            }
        }
        assert!(Node::Seq(their_volumes).same(&Node::Seq(volumes.clone())), "{file}: not inject's volumes");
        let path = template_path(&doc).unwrap();
        let label = doc.at(path).and_then(|t| t.at(&["metadata", "labels", LABEL])).and_then(Node::as_scalar);
        assert_eq!(label.and_then(Scalar::as_str), Some("true"), "{file}");
    }
    kinds.sort();
    assert_eq!(kinds, ["CronJob", "DaemonSet", "Deployment", "Job", "Pod", "ReplicaSet", "StatefulSet"]);
}

#[test]
fn options_are_checked() {
    for args in [
        &["--secret", "Not_A_Name"][..],
        &["--config-map", "-x"][..],
        &["--tool-env", "1BAD"][..],
        &["--tool-env", "A=B"][..],
        &["--image", ""][..],
    ] {
        let run = inject(args, "");
        assert_eq!(run.code, Some(2), "{args:?}: {:?}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    let out = Command::new(BINARY).args(["--check-config", "inject"]).output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}
