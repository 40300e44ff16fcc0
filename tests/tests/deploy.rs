//! The Kubernetes manifests: every overlay renders with `kubectl kustomize`, passes
//! `kubernetes-validate --strict` offline, and keeps the promises the README makes (no RBAC, least
//! privilege, hostNetwork agent on free ports, probes and resources, one publisher). Environment variables
//! the manifests set must be ones the binaries read.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use cni_metrics_e2e::{bin_dir, render_overlay, repo_root, scratch_dir, test_python};
use serde_json::Value;

/// Ports taken on an EKS node: ipamd, the network-policy agent, upstream's helper.
const RESERVED: &[u64] = &[50051, 61678, 61679, 8162, 8163, 61681];

/// Read by both binaries' logging set-up, not by a flag (upstream's log level, and RUST_LOG).
const READ_BY_LOGGING: &[&str] = &["AWS_VPC_K8S_CNI_LOGLEVEL", "RUST_LOG"];

fn render(overlay: &str) -> Result<(String, Vec<Value>)> {
    let (yaml, docs, file) = render_overlay(overlay)?;
    validate(&file)?;
    Ok((yaml, docs))
}

/// Kubernetes versions EKS supports (standard and extended support) at the time of writing.
const EKS_VERSIONS: &[&str] = &["1.31", "1.32", "1.33", "1.34", "1.35"];

fn validate(file: &Path) -> Result<()> {
    let bin = test_python()?.with_file_name("kubernetes-validate");
    let mut text = String::new();
    for v in EKS_VERSIONS {
        let out = Command::new(&bin).args(["--strict", "-k", v]).arg(file).output()?;
        let t = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success() && !t.contains("ERROR"), "kubernetes-validate --strict -k {v} failed:\n{t}");
        text.push_str(&t);
    }
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        // Only the Prometheus operator's CRDs have no built-in schema.
        let crd = ["ServiceMonitor", "PodMonitor", "PrometheusRule", "kind Certificate ", "kind Issuer "].iter().any(|k| line.contains(k));
        ensure!(crd, "unexpected warning: {line}");
    }
    Ok(())
}

/// Deserialize into k8s-openapi's typed objects; any field they do not know is an error.
fn typed(doc: &Value) -> Result<bool> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net, policy::v1 as policy};
    fn check<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<()> {
        let mut unknown = Vec::new();
        let _: T = serde_ignored::deserialize(doc.clone(), |path| unknown.push(path.to_string()))?;
        ensure!(unknown.is_empty(), "unknown fields {unknown:?} in {}/{}", doc["kind"], doc["metadata"]["name"]);
        Ok(())
    }
    match doc["kind"].as_str().unwrap_or_default() {
        "ServiceAccount" => check::<core::ServiceAccount>(doc)?,
        "ConfigMap" => check::<core::ConfigMap>(doc)?,
        "Service" => check::<core::Service>(doc)?,
        "Deployment" => check::<apps::Deployment>(doc)?,
        "DaemonSet" => check::<apps::DaemonSet>(doc)?,
        "PodDisruptionBudget" => check::<policy::PodDisruptionBudget>(doc)?,
        "NetworkPolicy" => check::<net::NetworkPolicy>(doc)?,
        // CRDs of the Prometheus operator and cert-manager: not in k8s-openapi.
        "ServiceMonitor" | "PodMonitor" | "PrometheusRule" | "Certificate" | "Issuer" => return Ok(false),
        other => bail!("no typed check for kind {other}"),
    }
    Ok(true)
}

/// Selectors match their template's labels; images are pinned.
fn selectors_and_images(docs: &[Value]) -> Result<()> {
    for d in docs.iter().filter(|d| d["kind"] == "Deployment" || d["kind"] == "DaemonSet") {
        let sel = d["spec"]["selector"]["matchLabels"].as_object().context("selector")?;
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        for (k, v) in sel {
            ensure!(&labels[k] == v, "{}: selector {k}={v} does not match the template", d["metadata"]["name"]);
        }
        let pod = &d["spec"]["template"]["spec"];
        for c in pod["containers"].as_array().context("containers")?.iter().chain(pod["initContainers"].as_array().into_iter().flatten()) {
            let image = c["image"].as_str().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            ensure!(!tag.is_empty() && tag != "latest" && !tag.contains('/'), "image not pinned: {image}");
        }
    }
    for d in docs.iter().filter(|d| d["kind"] == "Service" || d["kind"] == "PodDisruptionBudget" || d["kind"] == "NetworkPolicy") {
        let sel = if d["kind"] == "Service" {
            &d["spec"]["selector"]
        } else if d["kind"] == "NetworkPolicy" {
            &d["spec"]["podSelector"]["matchLabels"]
        } else {
            &d["spec"]["selector"]["matchLabels"]
        };
        ensure!(sel["app.kubernetes.io/name"] == "cni-metrics-aggregator", "{} {} selects {sel}", d["kind"], d["metadata"]["name"]);
    }
    Ok(())
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).with_context(|| format!("{kind}/{name} missing"))
}

fn restricted(pod: &Value, what: &str, api_token: bool) -> Result<()> {
    ensure!(pod["automountServiceAccountToken"] == api_token, "{what}: API token mounted: {api_token}");
    ensure!(pod["securityContext"]["runAsNonRoot"] == true && pod["securityContext"]["runAsUser"] == 65534, "{what}: non-root");
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", "{what}: seccomp");
    for c in pod["containers"].as_array().context("containers")? {
        let sc = &c["securityContext"];
        ensure!(sc["allowPrivilegeEscalation"] == false && sc["readOnlyRootFilesystem"] == true, "{what}: container securityContext {sc}");
        ensure!(sc["capabilities"]["drop"] == serde_json::json!(["ALL"]), "{what}: capabilities");
        ensure!(c["livenessProbe"].is_object() && c["readinessProbe"].is_object(), "{what}: probes");
        ensure!(c["resources"]["requests"]["cpu"].is_string() && c["resources"]["limits"]["memory"].is_string(), "{what}: resources");
        for p in c["ports"].as_array().into_iter().flatten() {
            let port = p["containerPort"].as_u64().unwrap_or(0);
            ensure!(!RESERVED.contains(&port) || what == "aggregator", "{what}: port {port} is taken on EKS nodes");
        }
    }
    Ok(())
}

/// Every env var a manifest sets is one the binary documents in `--help` (the aggregator: the help of
/// `serve`, the command its manifest runs).
fn env_known(container: &Value, bin: &str) -> Result<()> {
    let args: &[&str] = if bin == "cni-metrics-aggregator" { &["serve", "--help"] } else { &["--help"] };
    let help = Command::new(bin_dir()?.join(bin)).args(args).output()?;
    let help = String::from_utf8_lossy(&help.stdout);
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or_default();
        if READ_BY_LOGGING.contains(&name) {
            continue;
        }
        ensure!(help.contains(&format!("env: {name}=")), "{bin} does not read {name}");
    }
    Ok(())
}

#[test]
fn overlays_render_validate_and_keep_least_privilege() -> Result<()> {
    for overlay in ["cloudwatch", "prometheus", "mtls", "subnets", "large-cluster"] {
        let (yaml, docs) = render(overlay)?;
        ensure!(!yaml.contains("pods/proxy"), "{overlay}: pods/proxy");
        let typed_count = docs.iter().map(typed).collect::<Result<Vec<bool>>>()?.into_iter().filter(|t| *t).count();
        ensure!(typed_count >= 8, "{overlay}: {typed_count} objects checked against k8s-openapi");
        selectors_and_images(&docs)?;
        for d in &docs {
            let kind = d["kind"].as_str().unwrap_or_default();
            if kind.contains("Role") {
                bail!("{overlay}: RBAC object {kind} found; the design needs none");
            }
        }
        let ds = find(&docs, "DaemonSet", "cni-metrics-agent")?;
        let pod = &ds["spec"]["template"]["spec"];
        ensure!(pod["hostNetwork"] == true && pod["dnsPolicy"] == "ClusterFirstWithHostNet", "agent network");
        ensure!(pod["priorityClassName"] == "system-node-critical", "priority");
        ensure!(pod["tolerations"] == serde_json::json!([{"operator": "Exists"}]), "tolerations");
        let terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"].to_string();
        for want in ["kubernetes.io/os", "linux", "amd64", "arm64", "eks.amazonaws.com/compute-type", "fargate", "hybrid", "auto"] {
            ensure!(terms.contains(want), "affinity lacks {want}: {terms}");
        }
        ensure!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "10%", "rollout");
        restricted(pod, "agent", false)?;
        let agent = &pod["containers"][0];
        // Its one token: projected for the aggregator's audience, short-lived, read-only, at TOKEN_FILE.
        let token = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "aggregator-token"))
            .context("aggregator-token volume")?;
        let sat = &token["projected"]["sources"][0]["serviceAccountToken"];
        ensure!(sat["audience"] == "cni-metrics-aggregator" && sat["path"] == "token", "token for the aggregator: {sat}");
        ensure!(sat["expirationSeconds"].as_u64().is_some_and(|s| (600..=3600).contains(&s)), "short-lived token: {sat}");
        ensure!(
            agent["volumeMounts"].as_array().is_some_and(|m| m.contains(&serde_json::json!(
                {"name": "aggregator-token", "mountPath": "/var/run/secrets/cni-metrics", "readOnly": true}
            ))),
            "token mounted read-only"
        );
        ensure!(
            agent["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v["name"] == "TOKEN_FILE" && v["value"] == "/var/run/secrets/cni-metrics/token")),
            "TOKEN_FILE set"
        );
        ensure!(
            agent["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v["name"] == "NODE_NAME" && v["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName")),
            "NODE_NAME from the downward API"
        );
        env_known(agent, "cni-metrics-agent")?;
        // The counting position on the node: a hostPath, the agent's only writable path, prepared by an
        // init container whose one privilege is CAP_CHOWN.
        let state = pod["volumes"].as_array().and_then(|v| v.iter().find(|v| v["name"] == "state")).context("state volume")?;
        ensure!(
            state["hostPath"]["path"] == "/var/lib/cni-metrics-agent" && state["hostPath"]["type"] == "DirectoryOrCreate",
            "state hostPath {state}"
        );
        let mounts = agent["volumeMounts"].as_array().cloned().unwrap_or_default();
        ensure!(
            mounts.contains(&serde_json::json!({"name": "state", "mountPath": "/var/lib/cni-metrics-agent"})),
            "agent mounts its state dir"
        );
        ensure!(
            mounts.iter().all(|m| m["name"] == "state" || m["readOnly"] == true),
            "the state dir is the agent's only writable path: {mounts:?}"
        );
        ensure!(
            agent["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v["name"] == "STATE_DIR" && v["value"] == "/var/lib/cni-metrics-agent")),
            "STATE_DIR set"
        );
        let init = &pod["initContainers"][0];
        ensure!(init["args"] == serde_json::json!(["--prepare-state-dir", "65534:65534"]), "init container prepares the dir: {init}");
        let sc = &init["securityContext"];
        ensure!(sc["capabilities"] == serde_json::json!({"drop": ["ALL"], "add": ["CHOWN"]}), "init container: CAP_CHOWN only");
        ensure!(sc["allowPrivilegeEscalation"] == false && sc["readOnlyRootFilesystem"] == true, "init container securityContext {sc}");
        env_known(init, "cni-metrics-agent")?;

        let dep = find(&docs, "Deployment", "cni-metrics-aggregator")?;
        ensure!(dep["spec"]["replicas"] == 1 && dep["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "one publisher at a time");
        let pod = &dep["spec"]["template"]["spec"];
        // Its API token reads only the public signing keys (no RBAC of its own, checked above).
        restricted(pod, "aggregator", true)?;
        for taint in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
            let t = pod["tolerations"]
                .as_array()
                .and_then(|t| t.iter().find(|t| t["key"] == taint))
                .with_context(|| format!("toleration {taint}"))?;
            ensure!(t["effect"] == "NoExecute" && t["tolerationSeconds"] == 30, "{taint}: rescheduled after 30 s: {t}");
        }
        env_known(&pod["containers"][0], "cni-metrics-aggregator")?;
        find(&docs, "PodDisruptionBudget", "cni-metrics-aggregator")?;
        find(&docs, "NetworkPolicy", "cni-metrics-aggregator")?;
        let svc = find(&docs, "Service", "cni-metrics-aggregator")?;
        let names: Vec<&str> = svc["spec"]["ports"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        ensure!(names == ["grpc", "http-metrics"], "service ports {names:?}");

        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").context("config map")?;
        ensure!(cm["data"]["AGENT_AUTH"] == "token", "{overlay}: agents prove their node with a token");
        let sa = find(&docs, "ServiceAccount", "cni-metrics-aggregator")?;
        let role = &sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"];
        match overlay {
            "cloudwatch" | "large-cluster" => {
                ensure!(cm["data"]["USE_CLOUDWATCH"] == "true" && cm["data"]["AWS_CLUSTER_ID"] != "", "cloudwatch settings");
                ensure!(role.is_string(), "IRSA annotation");
                // The stream limit follows the open-file limit: no cap below the cluster's size.
                ensure!(cm["data"]["MAX_STREAMS"].is_null(), "{overlay}: MAX_STREAMS is derived, not set");
            }
            "subnets" => {
                ensure!(cm["data"]["USE_CLOUDWATCH"] == "true" && cm["data"]["SUBNET_METRICS"] == "true", "subnet settings");
                ensure!(cm["data"]["SUBNET_DISCOVERY"] == "true", "discovery on");
                ensure!(role.is_string(), "IRSA annotation");
                // Every key the overlay sets is a flag the aggregator reads.
                let help = Command::new(bin_dir()?.join("cni-metrics-aggregator")).args(["serve", "--help"]).output()?;
                let help = String::from_utf8_lossy(&help.stdout);
                for key in cm["data"].as_object().into_iter().flatten().map(|(k, _)| k).filter(|k| !READ_BY_LOGGING.contains(&k.as_str())) {
                    ensure!(help.contains(&format!("env: {key}=")), "the aggregator does not read {key}");
                }
                let policy: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/iam-policy-subnets.json"))?)?;
                // Least privilege: exactly the calls the aggregator makes, reads only on EC2.
                let actions: Vec<&str> = policy["Statement"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|s| match &s["Action"] {
                        Value::String(a) => vec![a.as_str()],
                        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
                        _ => Vec::new(),
                    })
                    .collect();
                let want =
                    ["cloudwatch:PutMetricData", "ec2:DescribeSubnets", "ec2:DescribeNetworkInterfaces", "ec2:GetSubnetCidrReservations"];
                ensure!(actions == want, "subnet policy actions {actions:?}");
            }
            "mtls" => {
                let env = |c: &Value, name: &str| {
                    c["env"]
                        .as_array()
                        .and_then(|e| e.iter().find(|v| v["name"] == name))
                        .map(|v| v["value"].as_str().unwrap_or("").to_owned())
                };
                ensure!(env(agent, "AGGREGATOR_URL").is_some_and(|u| u.starts_with("https://")), "agents use https");
                ensure!(env(agent, "AGENT_TLS_CERT").is_some() && env(&pod["containers"][0], "TLS_CLIENT_CA").is_some(), "TLS files wired");
                let secret = |p: &Value| {
                    p["volumes"].as_array().into_iter().flatten().find_map(|v| v["secret"]["secretName"].as_str()).unwrap_or("").to_owned()
                };
                ensure!(secret(pod) == "cni-metrics-aggregator-tls", "aggregator secret");
                ensure!(secret(&ds["spec"]["template"]["spec"]) == "cni-metrics-agent-tls", "agent secret");
                for name in ["cni-metrics-aggregator-tls", "cni-metrics-agent-tls"] {
                    find(&docs, "Certificate", name)?;
                }
            }
            _ => {
                ensure!(cm["data"]["USE_CLOUDWATCH"] == "false", "prometheus only");
                ensure!(role.is_null(), "no AWS role without CloudWatch");
                find(&docs, "ServiceMonitor", "cni-metrics-aggregator")?;
                find(&docs, "PodMonitor", "cni-metrics-agent")?;
            }
        }
    }
    let policy: Value = serde_json::from_str(&std::fs::read_to_string(repo_root().join("deploy/iam-policy.json"))?)?;
    ensure!(policy["Statement"][0]["Action"] == "cloudwatch:PutMetricData" && policy["Statement"].as_array().map(Vec::len) == Some(1));
    Ok(())
}

/// Every metric a dashboard, alarm or alert rule uses exists: CloudWatch names in the catalogue, PromQL
/// names on a live aggregator's and agent's /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_use_real_metric_names() -> Result<()> {
    use cni_metrics_proto::catalog;
    let root = repo_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p));
    // CloudWatch.
    let known_cw =
        |n: &str| catalog::FAMILIES.iter().any(|f| f.cloudwatch_name == Some(n)) || catalog::DERIVED_CLOUDWATCH_NAMES.contains(&n);
    let dash: Value = serde_json::from_str(&read("deploy/dashboards/cloudwatch-dashboard.json")?)?;
    let mut cw = Vec::new();
    for w in dash["widgets"].as_array().context("widgets")? {
        for m in w["properties"]["metrics"].as_array().context("metrics")? {
            cw.push(m[1].as_str().unwrap_or_default().to_owned());
        }
    }
    for line in read("deploy/dashboards/cloudwatch-alarms.yaml")?.lines() {
        if let Some(n) = line.trim().strip_prefix("MetricName: ") {
            cw.push(n.trim().to_owned());
        }
    }
    ensure!(cw.len() > 10);
    for n in &cw {
        ensure!(known_cw(n), "CloudWatch metric {n} is never published");
    }

    // Prometheus: a live aggregator (with breakdowns and a CloudWatch sink) and agent.
    let dir = scratch_dir("dashboards")?;
    let mut sim = cni_metrics_testkit::sim::SimIpamd::new(cni_metrics_testkit::sim::PageStyle::Modern, 5, 1.0);
    for _ in 0..10 {
        sim.step();
    }
    let fake = cni_metrics_testkit::FakeIpamd::start(sim, std::net::SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    // Subnet metrics on, EC2 unreachable (a closed port): their families are declared all the same.
    let closed = format!("http://127.0.0.1:{}", cni_metrics_e2e::free_port()?);
    let agg = cni_metrics_e2e::Aggregator::start_with(
        cni_metrics_e2e::Aggregator::launch(&dir, "aggregator")?
            .args(["--cluster-id", "e2e", "--breakdown", "az,subnet", "--cloudwatch", "true", "--subnet-metrics", "true"])
            .envs(&[("AWS_ENDPOINT_URL", Some(closed.as_str()))]),
    )?;
    let agent = cni_metrics_e2e::start_agent(&dir, "node-1", &fake.url(), &agg.grpc, &["--availability-zone", "eu-west-1a"])?;
    let line = agent.wait_log("agent HTTP endpoint", std::time::Duration::from_secs(10))?;
    let agent_http = cni_metrics_e2e::json_field(&line, "http").unwrap_or_default();
    let mut families = std::collections::BTreeSet::new();
    cni_metrics_e2e::eventually(std::time::Duration::from_secs(10), || async {
        let page = agg.metrics().await?;
        Ok(if page.contains("cni_metrics_total_ip_addresses_by_subnet_id{") { Ok(()) } else { Err("no subnet data yet".into()) })
    })
    .await?;
    let pages = [agg.metrics().await?, reqwest::get(format!("http://{agent_http}/metrics")).await?.text().await?];
    for page in &pages {
        for l in page.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                families.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            }
        }
    }
    for file in ["deploy/dashboards/grafana-dashboard.json", "deploy/overlays/prometheus/rules.yaml"] {
        let text = read(file)?;
        let mut rest = text.as_str();
        let mut seen = 0;
        while let Some(i) = rest.find(['a', 'c']) {
            rest = &rest[i..];
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let token = &rest[..end];
            if token.starts_with("awscni_") || token.starts_with("cni_metrics_") {
                seen += 1;
                // Sparse ipamd families (errors) appear only once something happened: the catalogue vouches.
                let known = families.contains(token) || catalog::family(token).is_some();
                ensure!(known, "{file}: {token} is not exposed (families: {families:?})");
            }
            rest = &rest[end.max(1)..];
        }
        ensure!(seen >= 5, "{file}: only {seen} metric names found");
    }
    Ok(())
}

/// The CloudWatch alarms template passes `cfn-lint` (moto's CloudFormation cannot create
/// `AWS::CloudWatch::Alarm`, so the template is linted against CloudFormation's schemas instead), and
/// every alarm names a metric the aggregator publishes.
#[test]
fn cloudwatch_alarms_template_passes_cfn_lint() -> Result<()> {
    let template = repo_root().join("deploy/dashboards/cloudwatch-alarms.yaml");
    let python = test_python()?;
    let lint = python.with_file_name("cfn-lint");
    let out = Command::new(&lint).arg(&template).output().with_context(|| format!("running {}", lint.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "cfn-lint deploy/dashboards/cloudwatch-alarms.yaml: {text}");
    // A broken template must fail: the check can fail.
    let dir = scratch_dir("cfn-lint")?;
    let broken = std::fs::read_to_string(&template)?.replacen("ComparisonOperator: GreaterThanThreshold", "ComparisonOperator: Bigger", 1);
    std::fs::write(dir.join("broken.yaml"), broken)?;
    let out = Command::new(&lint).arg(dir.join("broken.yaml")).output()?;
    ensure!(!out.status.success(), "cfn-lint accepted a template with an invalid ComparisonOperator");
    let yaml = std::fs::read_to_string(&template)?;
    for alarm in ["subnetsLowOnIPs", "subnetsLowOnPrefixes", "subnetHoursToExhaustion"] {
        ensure!(yaml.contains(&format!("MetricName: {alarm}")), "no alarm on {alarm}");
        ensure!(cni_metrics_proto::catalog::DERIVED_CLOUDWATCH_NAMES.contains(&alarm), "{alarm} is not published");
    }
    Ok(())
}

/// The PrometheusRule's rules pass `promtool check rules`, and every alert passes its unit tests
/// (`tests/support/prometheus/alerts.test.yaml`: fires when it should, silent when it should not).
#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() -> Result<()> {
    let (_, docs) = render("prometheus")?;
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").context("PrometheusRule in the prometheus overlay")?;
    let groups = &rule["spec"]["groups"];
    let alerts: Vec<&str> = groups
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let tests = std::fs::read_to_string(repo_root().join("tests/support/prometheus/alerts.test.yaml"))?;
    for alert in &alerts {
        ensure!(tests.contains(&format!("alertname: {alert}\n")), "alert {alert} has no promtool unit test");
    }
    let dir = scratch_dir("promtool-rules")?;
    std::fs::write(dir.join("rules.json"), serde_json::to_string_pretty(&serde_json::json!({ "groups": groups }))?)?;
    std::fs::write(dir.join("alerts.test.yaml"), &tests)?;
    for args in [&["check", "rules", "rules.json"][..], &["test", "rules", "alerts.test.yaml"][..]] {
        let out = match Command::new("promtool").args(args).current_dir(&dir).output() {
            Ok(o) => o,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && std::env::var_os("CI").is_none() => {
                eprintln!("NOTE: promtool not installed (apt-get install prometheus); alert rules not checked");
                return Ok(());
            }
            Err(e) => bail!("cannot run promtool (Debian package prometheus): {e}"),
        };
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ensure!(out.status.success(), "promtool {}: {text}", args.join(" "));
        eprintln!("promtool {}: {}", args.join(" "), text.lines().last().unwrap_or_default());
    }
    ensure!(alerts.len() >= 7, "alerts found: {alerts:?}");
    Ok(())
}

/// Bytes of a Kubernetes memory quantity in the forms the manifests use (`512Mi`, `6Gi`).
fn quantity_bytes(q: &str) -> Option<f64> {
    let (num, unit) = q.find(|c: char| !c.is_ascii_digit()).map_or((q, ""), |i| q.split_at(i));
    let mult = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

/// The aggregator's memory from the fleet bench (docs/install.md, Sizing): base + per connected node.
fn aggregator_bytes(nodes: f64) -> f64 {
    9.0 * 1024.0 * 1024.0 + 41.0 * 1024.0 * nodes
}

#[test]
fn memory_limits_fit_the_cluster_sizes_they_state() -> Result<()> {
    // (overlay, nodes the docs say it is sized for)
    for (overlay, nodes) in [("cloudwatch", 5_000.0), ("large-cluster", 100_000.0)] {
        let (_, docs) = render(overlay)?;
        let d = find(&docs, "Deployment", "cni-metrics-aggregator")?;
        let r = &d["spec"]["template"]["spec"]["containers"][0]["resources"];
        let limit = r["limits"]["memory"].as_str().and_then(quantity_bytes).context("memory limit")?;
        let request = r["requests"]["memory"].as_str().and_then(quantity_bytes).context("memory request")?;
        let need = aggregator_bytes(nodes);
        // Headroom for a reconnect storm and allocator slack: 15 % over the measured need.
        ensure!(limit >= need * 1.15, "{overlay}: limit {limit} below {need} x 1.15 for {nodes} nodes");
        ensure!(request <= limit, "{overlay}: request above limit");
    }
    assert_eq!(quantity_bytes("512Mi"), Some(536_870_912.0));
    assert_eq!(quantity_bytes("1.5Gi"), None);
    Ok(())
}
