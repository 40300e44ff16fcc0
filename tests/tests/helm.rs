//! The Helm chart (`deploy/helm/cni-metrics-helper`), with the real helm 4 and kubectl binaries: it lints
//! strictly; each profile renders the objects of the matching kustomize overlay; upstream's chart values
//! mean here what they meant there; the schema and the chart refuse bad values by name; checkov fails no
//! check on any render (each skip carries its reason); and a real kube-apiserver accepts every render and
//! a release's install, upgrade and uninstall.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use cni_metrics_e2e::kube::{chart_dir, helm_template, helm_template_command, objects, profile, run, text, tool, yaml_docs, ApiServer};
use cni_metrics_e2e::{bin_dir, render_overlay, repo_root, scratch_dir};
use serde_json::Value;

/// Each values file of `deploy/helm/profiles` and the kustomize directory it stands for.
const PROFILES: &[(&str, &str)] = &[
    ("base", "../base"),
    ("cloudwatch", "cloudwatch"),
    ("prometheus", "prometheus"),
    ("mtls", "mtls"),
    ("subnets", "subnets"),
    ("large-cluster", "large-cluster"),
];

fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                let (p, q) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                first_difference(p, q, &format!("{path}/{k}"))
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}/{i}")))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: kustomize {a}, helm {b}")),
    }
}

fn helm_objects(args: &[&str]) -> Result<std::collections::BTreeMap<(String, String), Value>> {
    objects(&yaml_docs(&helm_template(args)?)?, false)
}

fn get<'a>(objs: &'a std::collections::BTreeMap<(String, String), Value>, kind: &str, name: &str) -> Result<&'a Value> {
    objs.get(&(kind.to_string(), name.to_string())).with_context(|| format!("no {kind} {name} in the render"))
}

fn env_of(container: &Value, name: &str) -> Option<String> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name).and_then(|e| e["value"].as_str()).map(str::to_string)
}

#[test]
fn chart_lints_strictly_and_each_profile_renders_its_kustomize_overlay() -> Result<()> {
    let lint = run(tool("helm")?.args(["lint", "--strict"]).arg(chart_dir()))?;
    ensure!(lint.contains("0 chart(s) failed"), "helm lint --strict:\n{lint}");
    for (name, overlay) in PROFILES {
        let values = profile(name);
        let lint = run(tool("helm")?.args(["lint", "--strict"]).arg(chart_dir()).arg("-f").arg(&values))?;
        ensure!(lint.contains("0 chart(s) failed"), "helm lint --strict -f {name}:\n{lint}");
        let raw = yaml_docs(&helm_template(&["-f", values.to_str().context("path")?])?)?;
        for doc in &raw {
            let labels = &doc["metadata"]["labels"];
            ensure!(labels["helm.sh/chart"].is_string(), "{name}: {} {} lacks helm.sh/chart", doc["kind"], doc["metadata"]["name"]);
            ensure!(labels["app.kubernetes.io/part-of"] == "cni-metrics", "{name}: {} lacks part-of", doc["metadata"]["name"]);
            ensure!(doc["metadata"]["namespace"] == "kube-system", "{name}: {} is not in the release namespace", doc["metadata"]["name"]);
        }
        let helm = objects(&raw, false)?;
        let (_, docs, _) = render_overlay(overlay)?;
        let kustomize = objects(&docs, true)?;
        let (h, k): (BTreeSet<_>, BTreeSet<_>) = (helm.keys().collect(), kustomize.keys().collect());
        ensure!(h == k, "{name}: only in helm {:?}, only in kustomize {:?}", h.difference(&k), k.difference(&h));
        for (key, object) in &kustomize {
            if let Some(diff) = first_difference(object, &helm[key], "") {
                anyhow::bail!("profile {name}, {} {}: {diff}", key.0, key.1);
            }
        }
    }
    Ok(())
}

fn app_version() -> Result<String> {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml"))?;
    let doc = yaml_docs(&chart)?.into_iter().next().context("empty Chart.yaml")?;
    Ok(doc["appVersion"].as_str().context("no appVersion")?.to_string())
}

/// Upstream chart 1.23.1's values file plus what a user of it sets: a cluster id, the IRSA role and a
/// toleration.
const UPSTREAM_USER: &[&str] = &[
    "--set",
    "env.AWS_CLUSTER_ID=prod-eu-1",
    "--set",
    "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/cni-metrics-helper",
    "--set-json",
    r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"monitoring","effect":"NoSchedule"}]"#,
];

#[test]
fn upstream_chart_values_mean_what_they_meant() -> Result<()> {
    let upstream = repo_root().join("tests/support/upstream-chart/values.yaml");
    let mut args = vec!["-f", upstream.to_str().context("path")?];
    args.extend_from_slice(UPSTREAM_USER);
    let objs = helm_objects(&args)?;
    let version = app_version()?;

    // Upstream's env map is the aggregator's settings.
    let config = &get(&objs, "ConfigMap", "cni-metrics-helper-aggregator")?["data"];
    for (k, v) in [("AWS_CLUSTER_ID", "prod-eu-1"), ("USE_CLOUDWATCH", "true"), ("USE_PROMETHEUS", "false")] {
        ensure!(config[k] == v, "{k} is {} in the aggregator's settings, not {v}", config[k]);
    }
    // Upstream's ServiceAccount name (its fullname) and its IRSA role, so the role's trust still holds.
    let sa = get(&objs, "ServiceAccount", "cni-metrics-helper")?;
    ensure!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/cni-metrics-helper");
    let deployment = get(&objs, "Deployment", "cni-metrics-helper-aggregator")?;
    let pod = &deployment["spec"]["template"]["spec"];
    ensure!(pod["serviceAccountName"] == "cni-metrics-helper", "the aggregator runs as {}", pod["serviceAccountName"]);
    // The toleration is the aggregator's (upstream's Deployment), exactly as given; the agent keeps its own.
    let want: Value = serde_json::json!([{"key":"dedicated","operator":"Equal","value":"monitoring","effect":"NoSchedule"}]);
    ensure!(pod["tolerations"] == want, "aggregator tolerations {}", pod["tolerations"]);
    ensure!(deployment["spec"]["revisionHistoryLimit"] == 10, "revisionHistoryLimit {}", deployment["spec"]["revisionHistoryLimit"]);
    // Upstream's empty defaults ({}) leave this chart's measured sizing, restricted security and one publisher.
    let container = &pod["containers"][0];
    ensure!(container["resources"]["limits"]["memory"] == "512Mi", "resources {}", container["resources"]);
    ensure!(pod["securityContext"]["runAsNonRoot"] == true && container["securityContext"]["readOnlyRootFilesystem"] == true);
    ensure!(deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "strategy {}", deployment["spec"]["strategy"]);
    // Upstream's image (Amazon's registry, its v1.23.1 tag) does not hold these images: ours are used.
    let expected = format!("public.ecr.aws/example/cni-metrics-aggregator:{version}");
    ensure!(container["image"] == expected.as_str(), "aggregator image {}", container["image"]);
    let agent = get(&objs, "DaemonSet", "cni-metrics-helper-agent")?;
    let agent_pod = &agent["spec"]["template"]["spec"];
    ensure!(agent_pod["tolerations"] == serde_json::json!([{"operator": "Exists"}]), "agent tolerations {}", agent_pod["tolerations"]);
    let agent_container = &agent_pod["containers"][0];
    ensure!(agent_container["image"] == format!("public.ecr.aws/example/cni-metrics-agent:{version}").as_str());
    ensure!(env_of(agent_container, "AGGREGATOR_URL").as_deref() == Some("http://cni-metrics-helper-aggregator.kube-system.svc:61690"));
    ensure!(env_of(agent_container, "AWS_VPC_K8S_CNI_LOGLEVEL").as_deref() == Some("INFO"));

    // NOTES.txt says what was ignored, and how to check the install.
    let mut install = tool("helm")?;
    install.args(["install", "cni-metrics-helper"]).arg(chart_dir()).args(["-n", "kube-system", "--dry-run=client"]).args(&args);
    let notes = run(&mut install)?;
    ensure!(notes.contains("were ignored") && notes.contains("v1.23.1"), "NOTES do not say the upstream image was ignored:\n{notes}");
    ensure!(notes.contains("cni-metrics-aggregator watch") && notes.contains("61681/metrics"), "NOTES lack the checks:\n{notes}");
    Ok(())
}

#[test]
fn upstream_image_forms_name_a_mirror_and_the_poll_interval_is_the_agents() -> Result<()> {
    let objs = helm_objects(&[
        "--set",
        "image.account=111122223333",
        "--set",
        "image.region=eu-west-1",
        "--set",
        "image.tag=0.2.0",
        "--set",
        "env.METRIC_UPDATE_INTERVAL=60",
    ])?;
    let agent = &get(&objs, "DaemonSet", "cni-metrics-agent")?["spec"]["template"]["spec"]["containers"][0];
    ensure!(agent["image"] == "111122223333.dkr.ecr.eu-west-1.amazonaws.com/cni-metrics-agent:0.2.0", "agent image {}", agent["image"]);
    ensure!(env_of(agent, "METRIC_UPDATE_INTERVAL").as_deref() == Some("60"), "interval {:?}", env_of(agent, "METRIC_UPDATE_INTERVAL"));
    let config = &get(&objs, "ConfigMap", "cni-metrics-aggregator")?["data"];
    ensure!(config.get("METRIC_UPDATE_INTERVAL").is_none(), "the aggregator got the agents' interval");

    let objs = helm_objects(&["--set", "image.override=registry.example/team/aggregator:7"])?;
    let aggregator = &get(&objs, "Deployment", "cni-metrics-aggregator")?["spec"]["template"]["spec"]["containers"][0];
    ensure!(aggregator["image"] == "registry.example/team/aggregator:7", "override gave {}", aggregator["image"]);
    let agent = &get(&objs, "DaemonSet", "cni-metrics-agent")?["spec"]["template"]["spec"]["containers"][0];
    ensure!(agent["image"].as_str().is_some_and(|i| i.starts_with("public.ecr.aws/example/cni-metrics-agent:")));
    Ok(())
}

#[test]
fn bad_values_are_refused_by_name() -> Result<()> {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "bogus=1"], "additional properties 'bogus' not allowed"),
        (&["--set", "env.USE_CLOUDWACH=true"], "'USE_CLOUDWACH'"),
        (&["--set", "env.GRPC_LISTEN=0.0.0.0:1"], "'GRPC_LISTEN'"),
        (&["--set", "agent.env.NODE_NAME=x"], "'NODE_NAME'"),
        (&["--set", "resources=big"], "/resources"),
        (&["--set", "aggregator.replicas=2"], "/aggregator/replicas"),
        (&["--set-string", "serviceAccount.create=yes"], "/serviceAccount/create"),
        (&["--set", "image.digest=latest"], "/image/digest"),
        (&["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
        (&["--set", "aggregator.networkPolicy.agentCidrs={10.0.0.0}"], "/aggregator/networkPolicy/agentCidrs/0"),
        (&["--set", "updateStrategy.rollingUpdate.maxSurge=1"], "maxSurge is 1"),
        (&["--set", "image.account=111122223333"], "image.region is required"),
    ];
    for (args, expected) in cases {
        let out = helm_template_command(args)?.output()?;
        let t = text(&out);
        ensure!(!out.status.success(), "helm template {args:?} was accepted");
        ensure!(t.contains(expected), "helm template {args:?} failed without naming {expected}:\n{t}");
    }
    Ok(())
}

/// The names a binary reads from its environment, from its --help.
fn env_names(bin: &str, args: &[&str]) -> Result<BTreeSet<String>> {
    let help = run(std::process::Command::new(bin_dir()?.join(bin)).args(args))?;
    Ok(help.split("[env: ").skip(1).filter_map(|s| s.split('=').next()).map(str::to_string).collect())
}

fn schema_keys(schema: &Value, pointer: &str) -> Result<BTreeSet<String>> {
    let props = schema.pointer(pointer).and_then(Value::as_object).with_context(|| format!("no {pointer} in the schema"))?;
    Ok(props.keys().cloned().collect())
}

/// A binary's settings the chart's values may carry: what it reads from its environment, without what the
/// chart sets itself, with upstream's log level and RUST_LOG (read by the logging set-up of both, not by a
/// flag) and `extra`.
fn settable(bin: &str, args: &[&str], chart_sets: &[&str], extra: &[&str]) -> Result<BTreeSet<String>> {
    let mut names = env_names(bin, args)?;
    names.retain(|n| !chart_sets.contains(&n.as_str()));
    names.extend(["AWS_VPC_K8S_CNI_LOGLEVEL", "RUST_LOG"].iter().chain(extra).map(|s| s.to_string()));
    Ok(names)
}

#[test]
fn env_values_are_exactly_the_settings_the_binaries_read() -> Result<()> {
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(chart_dir().join("values.schema.json"))?)?;
    let aggregator_sets = ["GRPC_LISTEN", "HTTP_LISTEN", "LOG_FORMAT", "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA"];
    let agent_sets = [
        "NODE_NAME",
        "AGGREGATOR_URL",
        "AGENT_HTTP_LISTEN",
        "STATE_DIR",
        "TOKEN_FILE",
        "LOG_FORMAT",
        "AGENT_TLS_CERT",
        "AGENT_TLS_KEY",
        "AGENT_TLS_CA",
    ];
    let cases = [
        // Upstream's poll interval goes to the agents.
        (
            "env",
            "/properties/env/properties",
            settable("cni-metrics-aggregator", &["serve", "--help"], &aggregator_sets, &["METRIC_UPDATE_INTERVAL"])?,
        ),
        ("agent.env", "/properties/agent/properties/env/properties", settable("cni-metrics-agent", &["--help"], &agent_sets, &[])?),
    ];
    for (what, pointer, want) in cases {
        let have = schema_keys(&schema, pointer)?;
        ensure!(have == want, "{what}: schema only {:?}, binary only {:?}", have.difference(&want), want.difference(&have));
    }
    Ok(())
}

/// Every render this project ships: the chart's profiles and the kustomize directories.
fn all_renders() -> Result<Vec<(String, String)>> {
    let mut renders = Vec::new();
    for (name, overlay) in PROFILES {
        let values = profile(name);
        renders.push((format!("helm-{name}"), helm_template(&["-f", values.to_str().context("path")?])?));
        renders.push((format!("kustomize-{name}"), render_overlay(overlay)?.0));
    }
    Ok(renders)
}

/// checkov's summary and skipped checks for the renders in `dir`.
fn checkov(dir: &std::path::Path) -> Result<(u64, u64, Vec<Value>)> {
    let out = tool("checkov")?
        .args(["--framework", "kubernetes", "--skip-download", "-o", "json", "-d"])
        .arg(dir)
        .env("BC_SKIP_MAPPING", "TRUE")
        .output()?;
    let report: Value = serde_json::from_slice(&out.stdout).with_context(|| format!("checkov's output:\n{}", text(&out)))?;
    let reports = if report.is_array() { report.as_array().cloned().unwrap_or_default() } else { vec![report] };
    let (mut passed, mut failed, mut skipped) = (0, 0, Vec::new());
    for r in &reports {
        passed += r["summary"]["passed"].as_u64().unwrap_or(0);
        failed += r["summary"]["failed"].as_u64().unwrap_or(0);
        skipped.extend(r["results"]["skipped_checks"].as_array().cloned().unwrap_or_default());
    }
    Ok((passed, failed, skipped))
}

#[test]
fn checkov_fails_no_check_on_any_render_and_every_skip_says_why() -> Result<()> {
    let dir = scratch_dir("checkov")?;
    let renders = all_renders()?;
    for (name, yaml) in &renders {
        std::fs::write(dir.join(format!("{name}.yaml")), yaml)?;
    }
    let (passed, failed, skipped) = checkov(&dir)?;
    ensure!(failed == 0, "checkov: {failed} failed checks (run it on {})", dir.display());
    ensure!(passed > 100, "checkov passed only {passed} checks: did it scan the renders?");
    for s in &skipped {
        let why = s["check_result"]["suppress_comment"].as_str().unwrap_or_default();
        ensure!(why.len() > 20, "{} on {} is skipped without a reason", s["check_id"], s["resource"]);
    }
    let ids: BTreeSet<&str> = skipped.iter().filter_map(|s| s["check_id"].as_str()).collect();
    ensure!(ids.contains("CKV_K8S_19"), "the agent's hostNetwork skip is not seen: {ids:?}");

    // The same renders without the skip annotations: checkov fails them (the check can fail).
    let bare = scratch_dir("checkov-bare")?;
    let (name, yaml) = &renders[0];
    let mut stripped = String::new();
    for mut doc in yaml_docs(yaml)? {
        if let Some(annotations) = doc.pointer_mut("/metadata/annotations").and_then(Value::as_object_mut) {
            annotations.retain(|k, _| !k.starts_with("checkov.io/"));
        }
        stripped.push_str(&format!("---\n{}\n", serde_json::to_string(&doc)?));
    }
    std::fs::write(bare.join(format!("{name}.yaml")), stripped)?;
    let (_, failed, _) = checkov(&bare)?;
    ensure!(failed >= 6, "without its skips the render fails only {failed} checks");
    Ok(())
}

/// The kustomize render for a v1.20 server: its PodDisruptionBudget as policy/v1beta1 (v1.20 serves no
/// policy/v1; the spec is the same), which the chart picks by itself from the server's capabilities.
fn for_v1_20(docs: &[Value]) -> Result<String> {
    let mut out = String::new();
    for doc in docs {
        let mut doc = doc.clone();
        if doc["kind"] == "PodDisruptionBudget" {
            doc["apiVersion"] = Value::from("policy/v1beta1");
        }
        out.push_str(&serde_json::to_string(&doc)?);
        out.push('\n');
    }
    Ok(out)
}

fn apply_dry_run(api: &ApiServer, name: &str, manifest: &str) -> Result<()> {
    let file = scratch_dir("dry-run")?.join(format!("{name}.yaml"));
    std::fs::write(&file, manifest)?;
    let out = run(api.kubectl()?.args(["apply", "--dry-run=server", "-f"]).arg(&file))?;
    ensure!(out.contains("(server dry run)"), "{name}: {out}");
    Ok(())
}

fn checksum(api: &ApiServer) -> Result<String> {
    let d = api.get("deployment", "cni-metrics-aggregator", "kube-system")?.context("no aggregator Deployment")?;
    Ok(d["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().unwrap_or_default().to_string())
}

#[test]
fn a_real_api_server_takes_every_render_and_a_release_lifecycle() -> Result<()> {
    let api = ApiServer::start("helm")?;
    run(api.kubectl()?.arg("apply").arg("-f").arg(repo_root().join("tests/support/crds.yaml")))?;
    run(api.kubectl()?.args(["wait", "--for", "condition=established", "--timeout=60s", "crd", "--all"]))?;

    for (name, overlay) in PROFILES {
        let values = profile(name);
        let mut template = api.helm()?;
        template.args(["template", "cni-metrics-helper"]).arg(chart_dir());
        template.args(["-n", "kube-system", "--dry-run=server", "-f"]).arg(&values);
        let rendered = run(&mut template)?;
        ensure!(rendered.contains("apiVersion: policy/v1beta1"), "{name}: the chart did not pick policy/v1beta1 on v1.20");
        apply_dry_run(&api, &format!("helm-{name}"), &rendered)?;
        let (_, docs, _) = render_overlay(overlay)?;
        apply_dry_run(&api, &format!("kustomize-{name}"), &for_v1_20(&docs)?)?;
    }

    let cloudwatch = profile("cloudwatch");
    let mut install = api.helm()?;
    install.args(["install", "cni-metrics-helper"]).arg(chart_dir()).args(["-n", "kube-system", "-f"]).arg(&cloudwatch);
    run(install.args(["--set", "env.AWS_CLUSTER_ID=first"]))?;
    let config = api.get("configmap", "cni-metrics-aggregator", "kube-system")?.context("no ConfigMap after install")?;
    ensure!(config["data"]["AWS_CLUSTER_ID"] == "first", "stored cluster id {}", config["data"]["AWS_CLUSTER_ID"]);
    let pdb = api.get("pdb", "cni-metrics-aggregator", "kube-system")?.context("no PodDisruptionBudget")?;
    ensure!(pdb["spec"]["maxUnavailable"] == 1);
    let sa = api.get("serviceaccount", "cni-metrics-aggregator", "kube-system")?.context("no ServiceAccount")?;
    ensure!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string(), "no IRSA annotation stored");
    ensure!(api.get("daemonset", "cni-metrics-agent", "kube-system")?.is_some(), "no agent DaemonSet stored");
    let before = checksum(&api)?;

    let mut upgrade = api.helm()?;
    upgrade.args(["upgrade", "cni-metrics-helper"]).arg(chart_dir()).args(["-n", "kube-system", "-f"]).arg(&cloudwatch);
    run(upgrade.args(["--set", "env.AWS_CLUSTER_ID=second", "--set", "resources.limits.memory=1Gi"]))?;
    let config = api.get("configmap", "cni-metrics-aggregator", "kube-system")?.context("no ConfigMap after upgrade")?;
    ensure!(config["data"]["AWS_CLUSTER_ID"] == "second", "upgraded cluster id {}", config["data"]["AWS_CLUSTER_ID"]);
    let d = api.get("deployment", "cni-metrics-aggregator", "kube-system")?.context("no Deployment after upgrade")?;
    let limits = &d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"];
    ensure!(limits["memory"] == "1Gi", "upgraded limits {limits}");
    ensure!(checksum(&api)? != before, "a changed setting did not change the pod template (no roll)");
    let history = run(api.helm()?.args(["history", "cni-metrics-helper", "-n", "kube-system"]))?;
    ensure!(history.lines().count() == 3, "helm history:\n{history}");

    run(api.helm()?.args(["uninstall", "cni-metrics-helper", "-n", "kube-system"]))?;
    for (kind, name) in
        [("deployment", "cni-metrics-aggregator"), ("daemonset", "cni-metrics-agent"), ("configmap", "cni-metrics-aggregator")]
    {
        ensure!(api.get(kind, name, "kube-system")?.is_none(), "{kind} {name} is still there after uninstall");
    }
    Ok(())
}

#[test]
fn helm_upgrade_replaces_an_upstream_release_in_place() -> Result<()> {
    let api = ApiServer::start("upstream")?;
    let upstream_chart = repo_root().join("tests/support/upstream-chart");
    let values = upstream_chart.join("values.yaml");
    let role = "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/cni-metrics-helper";
    run(api.helm()?.args(["install", "cni-metrics-helper"]).arg(&upstream_chart).args(["-n", "kube-system", "--set", role]))?;
    ensure!(api.get("deployment", "cni-metrics-helper", "kube-system")?.is_some(), "the stand-in upstream release is not installed");

    let mut upgrade = api.helm()?;
    upgrade.args(["upgrade", "cni-metrics-helper"]).arg(chart_dir()).args(["-n", "kube-system", "-f"]).arg(&values);
    run(upgrade.args(UPSTREAM_USER))?;

    // Upstream's Deployment and its cluster-wide pods/proxy role are gone with the old release's objects.
    for (kind, name) in
        [("deployment", "cni-metrics-helper"), ("clusterrole", "cni-metrics-helper"), ("clusterrolebinding", "cni-metrics-helper")]
    {
        ensure!(api.get(kind, name, "kube-system")?.is_none(), "upstream's {kind} {name} survived the upgrade");
    }
    // Its ServiceAccount stays, with the IRSA role, and now runs the aggregator: the role's trust still holds.
    let sa = api.get("serviceaccount", "cni-metrics-helper", "kube-system")?.context("upstream's ServiceAccount is gone")?;
    ensure!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == "arn:aws:iam::123456789012:role/cni-metrics-helper");
    let d = api.get("deployment", "cni-metrics-helper-aggregator", "kube-system")?.context("no aggregator after the upgrade")?;
    ensure!(
        d["spec"]["template"]["spec"]["serviceAccountName"] == "cni-metrics-helper",
        "aggregator runs as {}",
        d["spec"]["template"]["spec"]["serviceAccountName"]
    );
    let config = api.get("configmap", "cni-metrics-helper-aggregator", "kube-system")?.context("no aggregator settings")?;
    ensure!(config["data"]["AWS_CLUSTER_ID"] == "prod-eu-1", "cluster id {}", config["data"]["AWS_CLUSTER_ID"]);
    ensure!(api.get("daemonset", "cni-metrics-helper-agent", "kube-system")?.is_some(), "no agent DaemonSet after the upgrade");
    Ok(())
}
