//! The metrics as Prometheus sees them: a real `/metrics` scrape of running servers (a follower
//! that redirected, a coordinator that executed) and the controller's exposition pass
//! `promtool check metrics` (Prometheus's own linter: names, units, `_total` counters, help
//! texts), and every metric the chart's alerting rules and Grafana dashboard query is one the
//! servers or the controller export.
//!
//! promtool comes from Debian's `prometheus` package (scripts/install-promtool.sh). Without it
//! the promtool checks are skipped with a message, unless `BULLY_REQUIRE_PROMTOOL=1` (CI), where
//! that fails; the metric-name checks always run.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use bully_client::{Command as BullyCommand, CommandRequest};
use bully_tests::cluster::{Cluster, StoreSpec};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The OpenMetrics exposition (what `/metrics` serves) in the classic text format, which is
/// all `promtool check metrics` (2.42, Debian's) parses: a counter family `x` declared as
/// `# TYPE x counter` with samples `x_total` becomes `# TYPE x_total counter`, as Prometheus
/// itself names it after the scrape, and the `# EOF` trailer goes.
fn classic_text_format(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::new();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// `promtool check metrics` on an OpenMetrics exposition; `None` when promtool is missing (and
/// allowed to be).
fn promtool_check_metrics(what: &str, openmetrics: &str) -> Option<String> {
    let text = classic_text_format(openmetrics);
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) if std::env::var("BULLY_REQUIRE_PROMTOOL").as_deref() == Ok("1") => {
            panic!(
                "promtool: {err}; BULLY_REQUIRE_PROMTOOL=1 (install: scripts/install-promtool.sh)"
            )
        }
        Err(err) => {
            eprintln!(
                "WARNING: promtool not found ({err}): `promtool check metrics` of the {what} NOT run \
                 (install: scripts/install-promtool.sh)"
            );
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems in the {what}:\n{report}\n--- exposition:\n{text}"
    );
    Some(report)
}

/// Every series name an exposition can yield: sample names, and for each declared family its
/// samples' names by type (families without samples yet count: they are declared).
fn series_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", ""],
                "histogram" => &["_bucket", "_count", "_sum", ""],
                _ => &[""],
            };
            for suffix in suffixes {
                names.insert(format!("{name}{suffix}"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The `bully_...` metric names in a query or rule file.
fn used_metrics(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("bully_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if boundary {
            used.insert(text[start..end].to_string());
        }
        i = end;
    }
    used
}

/// The controller's exposition, every family with a sample, as its `/metrics` serves it.
fn controller_exposition() -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = bully_controller::metrics::Metrics::default().register(&mut registry);
    drop(metrics.start("default/bully"));
    metrics.error("default/bully", "api_500");
    metrics.label_change("default/bully", "coordinator");
    metrics.coordinator_change("default/bully");
    metrics.status_failure("default/bully", "Unreachable");
    metrics.leader.set(1);
    bully_controller::metrics::encode(&registry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_cover_the_rules_and_the_dashboard() {
    let cluster = Cluster::start(&[1, 2], StoreSpec::Embedded);
    cluster.await_coordinator(1, Duration::from_secs(20)).await;
    // Through the follower first: a redirect (a not_coordinator error), then commands of a few
    // kinds and outcomes on the coordinator.
    let follower_first = bully_client::Client::new(
        vec![
            cluster.servers[0].client_addr.clone(),
            cluster.servers[1].client_addr.clone(),
        ],
        Default::default(),
    )
    .unwrap();
    for command in [
        BullyCommand::Put {
            key: "k".into(),
            value: serde_json::json!(1),
            lease: None,
        },
        BullyCommand::Get { key: "k".into() },
        BullyCommand::Get {
            key: "absent".into(),
        },
    ] {
        follower_first
            .execute(&CommandRequest::new(command))
            .await
            .expect("command");
    }
    let http = reqwest::Client::new();
    let mut scrapes = Vec::new();
    for server in &cluster.servers {
        let response = http
            .get(format!("http://{}/metrics", server.client_addr))
            .send()
            .await
            .expect("scrape");
        assert!(response.status().is_success());
        scrapes.push(response.text().await.unwrap());
    }
    let controller = controller_exposition();

    for (i, text) in scrapes.iter().enumerate() {
        promtool_check_metrics(&format!("/metrics of server {}", i + 1), text);
    }
    promtool_check_metrics("controller's /metrics", &controller);

    let mut exported: BTreeSet<String> = scrapes.iter().flat_map(|t| series_names(t)).collect();
    exported.extend(series_names(&controller));
    for expected in [
        "bully_role",
        "bully_term",
        "bully_ready",
        "bully_queue_capacity",
        "bully_command_errors_total",
        "bully_store_errors_total",
        "bully_controller_leader",
    ] {
        assert!(
            exported.contains(expected),
            "{expected} missing from {exported:?}"
        );
    }
    assert!(
        scrapes[0].contains(r#"bully_command_errors_total{code="not_coordinator"}"#),
        "the follower counted its redirect:\n{}",
        scrapes[0]
    );

    // The dashboard: valid JSON, every panel queries, and only metrics that exist.
    let path = repo().join("charts/bully/dashboards/bully.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut ids = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "duplicate id: {title}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            let used = used_metrics(expr);
            assert!(
                !used.is_empty(),
                "panel {title}: {expr} uses no bully metric"
            );
            for metric in used {
                assert!(
                    exported.contains(&metric),
                    "panel {title}: {metric} is not exported"
                );
            }
        }
    }

    // The alerting rules.
    let rules = std::fs::read_to_string(
        repo().join("charts/bully/templates/monitoring-prometheusrule.yaml"),
    )
    .unwrap();
    let used = used_metrics(&rules);
    assert!(used.len() >= 8, "{used:?}");
    for metric in used {
        assert!(
            exported.contains(&metric),
            "the PrometheusRule uses {metric}, which is not exported"
        );
    }
}

#[test]
fn metric_names_are_found() {
    assert_eq!(
        used_metrics("sum(rate(bully_commands_total{a=\"x\"}[5m])) / bully_queue_capacity"),
        BTreeSet::from([
            "bully_commands_total".to_string(),
            "bully_queue_capacity".to_string()
        ])
    );
    let exposition = "# HELP bully_elections Elections.\n# TYPE bully_elections counter\nbully_elections_total 1\n# TYPE bully_x histogram\nbully_term 3\n# EOF\n";
    assert_eq!(
        classic_text_format(exposition),
        "# HELP bully_elections_total Elections.\n# TYPE bully_elections_total counter\nbully_elections_total 1\n# TYPE bully_x histogram\nbully_term 3\n"
    );
    let names = series_names(exposition);
    assert!(names.contains("bully_elections_total") && names.contains("bully_x_bucket"));
    assert!(names.contains("bully_term"));
}
