//! Kubernetes for the deploy tests: the real `helm` and `kubectl` binaries and `checkov`
//! (`scripts/helm-tools.sh`, cached outside the clone), Helm renders of the chart, the comparison of
//! renders as objects, and a real kube-apiserver with etcd on loopback (`scripts/kube-apiserver.sh`),
//! stopped when dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use anyhow::{anyhow, ensure, Context, Result};
use serde_json::Value;

use crate::proc::scratch_dir;
use crate::tools::{repo_root, test_python};

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/cni-metrics-helper")
}

/// A values file of `deploy/helm/profiles`.
pub fn profile(name: &str) -> PathBuf {
    repo_root().join("deploy/helm/profiles").join(format!("{name}.yaml"))
}

/// The directory holding `helm`, `kubectl` and `checkov`, fetched once per test process.
pub fn tools_dir() -> Result<&'static Path> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/helm-tools.sh"))
            .output()
            .map_err(|e| format!("cannot run scripts/helm-tools.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!("scripts/helm-tools.sh failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .as_deref()
    .map_err(|e| anyhow!("{e}"))
}

/// A command of the cached tools (`helm`, `kubectl`, `checkov`).
pub fn tool(name: &str) -> Result<Command> {
    let mut cmd = Command::new(tools_dir()?.join(name));
    // helm keeps its cache, config and data under HOME unless told; keep them in the scratch space.
    let home = scratch_dir("helm-home")?;
    cmd.env("HELM_CACHE_HOME", home.join("cache")).env("HELM_CONFIG_HOME", home.join("config"));
    cmd.env("HELM_DATA_HOME", home.join("data"));
    Ok(cmd)
}

/// Runs a command and returns its stdout; a failure carries both outputs.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, text(&out));
    Ok(String::from_utf8(out.stdout)?)
}

/// Stdout and stderr of a finished command, as one text.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The command `helm template cni-metrics-helper <chart> -n kube-system` with these extra arguments
/// (`-f`, `--set`).
pub fn helm_template_command(args: &[&str]) -> Result<Command> {
    let mut cmd = tool("helm")?;
    cmd.args(["template", "cni-metrics-helper"]).arg(chart_dir()).args(["-n", "kube-system"]).args(args);
    Ok(cmd)
}

/// What [`helm_template_command`] renders (an error carries helm's message).
pub fn helm_template(args: &[&str]) -> Result<String> {
    run(&mut helm_template_command(args)?)
}

/// The documents of a YAML stream as JSON values (PyYAML in the test venv: no YAML crate in the tests).
pub fn yaml_docs(yaml: &str) -> Result<Vec<Value>> {
    let file = scratch_dir("yaml")?.join(format!("docs-{}.yaml", fastrand::u64(..)));
    std::fs::write(&file, yaml)?;
    let json = Command::new(test_python()?)
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))"])
        .arg(&file)
        .output()?;
    ensure!(json.status.success(), "yaml to json: {}", String::from_utf8_lossy(&json.stderr));
    let _ = std::fs::remove_file(&file);
    Ok(serde_json::from_slice(&json.stdout)?)
}

/// Labels Helm adds of its own (`helm.sh/chart`, the release's instance, manager and version).
const HELM_LABELS: &[&str] = &["helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"];

/// Where each tool rolls pods on a configuration change: kustomize a hash suffix on the ConfigMap's name,
/// Helm a checksum annotation on the pod template.
const ROLL_ANNOTATION: &str = "checksum/config";

/// Objects by (kind, name), normalised so that a kustomize render and a Helm render of the same install
/// compare equal: Helm's own labels and its checksum annotation dropped, kustomize's ConfigMap hash suffix
/// dropped (`hashed_config_maps`), and lists of named items (env, ports, volumes) in name order.
pub fn objects(docs: &[Value], hashed_config_maps: bool) -> Result<BTreeMap<(String, String), Value>> {
    let mut out = BTreeMap::new();
    for doc in docs {
        let mut doc = doc.clone();
        if hashed_config_maps {
            unhash_config_maps(&mut doc);
        }
        let kind = doc["kind"].as_str().context("an object without kind")?.to_string();
        let name = doc["metadata"]["name"].as_str().context("an object without name")?.to_string();
        normalise(&mut doc);
        ensure!(out.insert((kind.clone(), name.clone()), doc).is_none(), "{kind} {name} appears twice");
    }
    Ok(out)
}

fn unhash(name: &mut Value) {
    if let Some(s) = name.as_str() {
        if let Some((base, hash)) = s.rsplit_once('-') {
            if hash.len() == 10 && hash.chars().all(|c| c.is_ascii_alphanumeric()) {
                *name = Value::from(base);
            }
        }
    }
}

fn unhash_config_maps(doc: &mut Value) {
    if doc["kind"] == "ConfigMap" {
        unhash(&mut doc["metadata"]["name"]);
    }
    for list in ["/spec/template/spec/containers", "/spec/template/spec/initContainers"] {
        for c in doc.pointer_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            for from in c["envFrom"].as_array_mut().into_iter().flatten() {
                if from.get("configMapRef").is_some() {
                    unhash(&mut from["configMapRef"]["name"]);
                }
            }
        }
    }
}

fn normalise(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(labels)) = map.get_mut("labels") {
                labels.retain(|k, _| !HELM_LABELS.contains(&k.as_str()));
            }
            if let Some(Value::Object(annotations)) = map.get_mut("annotations") {
                annotations.remove(ROLL_ANNOTATION);
            }
            map.retain(|k, v| !(matches!(k.as_str(), "labels" | "annotations") && v.as_object().is_some_and(|m| m.is_empty())));
            map.values_mut().for_each(normalise);
        }
        Value::Array(items) => {
            items.iter_mut().for_each(normalise);
            if !items.is_empty() && items.iter().all(|i| i.get("name").is_some_and(Value::is_string)) {
                items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
            }
        }
        _ => {}
    }
}

/// A real kube-apiserver v1.20.2 and etcd on loopback (`scripts/kube-apiserver.sh`), stopped on drop.
pub struct ApiServer {
    dir: PathBuf,
}

impl ApiServer {
    /// Starts one (building the binaries first if no cache holds them: about 5 to 13 minutes).
    pub fn start(name: &str) -> Result<ApiServer> {
        let dir = scratch_dir(&format!("apiserver-{name}"))?;
        let out = Command::new("bash").arg(repo_root().join("scripts/kube-apiserver.sh")).arg("start").arg(&dir).output()?;
        ensure!(out.status.success(), "scripts/kube-apiserver.sh start failed:\n{}", text(&out));
        Ok(ApiServer { dir })
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `kubectl` against this server.
    pub fn kubectl(&self) -> Result<Command> {
        let mut cmd = tool("kubectl")?;
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        Ok(cmd)
    }

    /// `helm` against this server.
    pub fn helm(&self) -> Result<Command> {
        let mut cmd = tool("helm")?;
        cmd.arg("--kubeconfig").arg(self.kubeconfig());
        Ok(cmd)
    }

    /// One object the server stored, as JSON, or None when it does not exist.
    pub fn get(&self, kind: &str, name: &str, namespace: &str) -> Result<Option<Value>> {
        let out = self.kubectl()?.args(["get", kind, name, "-n", namespace, "-o", "json"]).output()?;
        if !out.status.success() {
            let t = text(&out);
            ensure!(t.contains("NotFound"), "kubectl get {kind} {name}: {t}");
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&out.stdout)?))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo_root().join("scripts/kube-apiserver.sh")).arg("stop").arg(&self.dir).status();
    }
}
