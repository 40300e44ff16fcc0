//! `serve`'s flags as a user meets them: switches, blank values, floors, the rules across flags and the
//! defaults the cores assume.

use clap::Parser as _;

use super::*;

fn serve(a: &[&str]) -> Result<ServeArgs, String> {
    Serve::try_parse_from(std::iter::once("serve").chain(a.iter().copied())).map(|s| s.args).map_err(|e| e.to_string())
}

fn message(r: Result<ServeArgs, String>) -> String {
    r.err().unwrap_or_default()
}

#[test]
fn switches() {
    assert!(message(serve(&["--prometheus", "maybe"])).contains("maybe"));
    assert_eq!(serve(&["--stdout", "YES"]).map(|c| c.publish.stdout), Ok(true));
    assert!(serve(&["--cloudwatch", "maybe"]).is_err());
}

#[test]
fn blank_means_unset_the_same_way_in_every_optional_flag() {
    // Upstream's manifest sets AWS_CLUSTER_ID="": blank means unset, never a cluster called "".
    let s = serve(&["--cluster-id", "  ", "--region", "", "--node-ttl", "", "--max-streams", "", "--token-issuer", " ", "--tls-cert", ""]);
    let s = s.expect("blank values parse");
    assert_eq!(
        (s.state.cluster_id.is_set(), s.aws.region.is_set(), s.state.node_ttl.is_set(), s.ingest.max_streams.is_set()),
        (false, false, false, false)
    );
    assert!(!s.auth.token_issuer.is_set() && !s.tls.tls_cert.is_set());
    let s = serve(&["--cluster-id", "prod", "--node-ttl", "90s", "--max-streams", "7"]).expect("values parse");
    assert_eq!(s.state.config().cluster_id, "prod");
    assert_eq!((s.state.node_ttl.get().copied(), s.ingest.max_streams.get().copied()), (Some(Duration::from_secs(90)), Some(7)));
    assert!(message(serve(&["--node-ttl", "soon"])).contains("soon"));
}

#[test]
fn floors_are_refused_in_words() {
    // (flag, value below its floor, what the error says)
    let cases = [
        ("--max-message-bytes", "1024", "at least 64 KiB"),
        ("--max-cluster-series", "0", "at least 1"),
        ("--max-series-per-node", "0", "at least 1"),
        ("--max-backlog-windows", "0", "at least 1"),
        ("--max-tls-handshakes", "0", "at least 1"),
        ("--max-streams", "0", "at least 1"),
        ("--publish-interval", "0", "publish-interval"),
        ("--storage-resolution", "30", "60 or 1"),
    ];
    for (flag, value, says) in cases {
        let err = message(serve(&[flag, value]));
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
    assert_eq!(serve(&["--storage-resolution", "1"]).map(|c| c.cloudwatch.storage_resolution), Ok(1));
}

#[test]
fn rules_across_flags_are_checked_once_into_the_typed_config() {
    let allow = serve(&["--metric-allow-list", "addReqCount,assignIPAddresses", "--cloudwatch", "true"]).expect("parses");
    let cw = allow.validate().map(|c| c.cloudwatch.and_then(|c| c.allow_list).map(|l| l.len()));
    assert!(matches!(cw, Ok(Some(2))), "{cw:?}");
    let typo = serve(&["--metric-allow-list", "addReqCnt"]).expect("parses");
    assert!(matches!(typo.validate(), Err(ConfigError::UnknownMetric(_))));
    let half = serve(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"]).expect("parses");
    assert!(matches!(half.validate(), Err(ConfigError::TlsIncomplete(_))));
    let full = serve(&["--tls-cert", "/c", "--tls-key", "/k", "--tls-client-ca", "/ca"]).expect("parses");
    assert_eq!(full.validate().ok().and_then(|c| c.tls).map(|t| t.files.client_ca), Some("/ca".into()));
    // Off by default: no sink, no refresher, no verifier is configured.
    let d = ServeArgs::defaults().validate().expect("the defaults are valid");
    assert!(d.cloudwatch.is_none() && d.subnets.is_none() && d.tls.is_none() && d.auth.is_none() && d.prometheus);
    let on =
        serve(&["--subnet-metrics", "true", "--agent-auth", "token", "--region", "eu-west-1"]).expect("parses").validate().expect("valid");
    assert_eq!(on.subnets.map(|s| s.refresher.region), Some(Some("eu-west-1".to_owned())));
    assert_eq!(on.auth.map(|a| a.issuer), Some(None), "a blank issuer is discovered");
}

#[test]
fn breakdown_groups_under_the_new_and_the_old_name() {
    for flag in ["--max-breakdown-groups", "--max-series"] {
        assert_eq!(serve(&[flag, "7"]).map(|c| c.state.max_breakdown_groups), Ok(7), "{flag}");
    }
    assert_eq!(serve(&[]).map(|c| c.state.max_breakdown_groups), Ok(1_000));
}

#[test]
fn defaults_parse_and_match_the_cores() {
    let d = ServeArgs::defaults();
    assert_eq!((d.listen.grpc_listen.port(), d.listen.http_listen.port()), (61690, 61681));
    assert_eq!(d.publish.publish_interval, Duration::from_secs(60));
    let (state, core) = (d.state.config(), StateConfig::default());
    assert_eq!(
        (
            state.node_ttl,
            state.max_cluster_series,
            state.max_series_per_node,
            state.low_ip_threshold,
            state.max_breakdown_groups,
            state.max_departed
        ),
        (
            core.node_ttl,
            core.max_cluster_series,
            core.max_series_per_node,
            core.low_ip_threshold,
            core.max_breakdown_groups,
            core.max_departed
        ),
        "StateConfig::default drifted from the flags"
    );
    let (cw, core) = (d.cloudwatch.sink_config(None), CloudWatchConfig::default());
    assert_eq!(
        (&cw.namespace, cw.storage_resolution, cw.max_backlog_windows, format!("{:?}", cw.auth_backoff)),
        (&core.namespace, core.storage_resolution, core.max_backlog_windows, format!("{:?}", core.auth_backoff)),
        "CloudWatchConfig::default drifted from the flags"
    );
    let t = ServerConfig::for_test("x");
    assert_eq!(
        (t.ingest.max_streams, t.publish.publish_interval, t.cloudwatch.is_none()),
        (d.ingest.max_streams, d.publish.publish_interval, true)
    );
    assert_eq!(t.state.cluster_id, "x");
}
