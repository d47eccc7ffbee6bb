use super::*;
use prometheus_client::encoding::text::encode;

fn render(m: &Metrics) -> String {
    let mut out = String::new();
    encode(&mut out, &registry(m, None)).expect("encode");
    out
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn names_follow_prometheus_conventions() {
    let m = Metrics::default();
    // A family without series is not written at all, so give each one.
    m.renewal(CertKind::Identity, true);
    m.rpc("phoenix.v1.Agent", "Session", tonic::Code::Ok);
    let text = render(&m);
    let types: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let names: Vec<&str> = types.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "phoenix_build",
            "phoenix_cert_renewals",
            "phoenix_rpcs",
            "phoenix_apply_report_latency_seconds",
            "phoenix_report_watch_lagged"
        ],
        "{text}"
    );
    for (name, kind) in &types {
        assert!(name.starts_with("phoenix_"), "{name} lacks the prefix");
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
        match *kind {
            // OpenMetrics names the family without `_total`; the samples carry it.
            "counter" => assert!(
                text.contains(&format!("\n{name}_total{{"))
                    || text.contains(&format!("\n{name}_total ")),
                "counter {name} has no _total sample:\n{text}"
            ),
            "histogram" => assert!(name.ends_with("_seconds"), "{name} has no unit"),
            "info" => assert!(text.contains(&format!("\n{name}_info{{")), "{text}"),
            _ => {}
        }
    }
}

#[test]
fn renewals_count_by_kind_and_result() {
    let m = Metrics::default();
    let ok = r#"phoenix_cert_renewals_total{kind="service",result="ok"}"#;
    let failed = r#"phoenix_cert_renewals_total{kind="service",result="failed"}"#;
    assert_eq!(sample(&render(&m), ok), None);
    m.renewal(CertKind::Service, true);
    m.renewal(CertKind::Service, false);
    m.renewal(CertKind::Service, false);
    let text = render(&m);
    assert_eq!(sample(&text, ok), Some(1.0), "{text}");
    assert_eq!(sample(&text, failed), Some(2.0), "{text}");
}

#[test]
fn unknown_methods_share_one_series() {
    let m = Metrics::default();
    m.rpc("phoenix.v1.Agent", "Renew", tonic::Code::PermissionDenied);
    m.rpc("phoenix.v1.Agent", "Made_Up_1", tonic::Code::Unimplemented);
    m.rpc("phoenix.v1.Agent", "Made_Up_2", tonic::Code::Unimplemented);
    let text = render(&m);
    assert_eq!(
        sample(
            &text,
            r#"phoenix_rpcs_total{service="phoenix.v1.Agent",method="Renew",code="PermissionDenied"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"phoenix_rpcs_total{service="phoenix.v1.Agent",method="unknown",code="Unimplemented"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("Made_Up"), "{text}");
}

#[test]
fn latency_is_timed_once_for_the_revision_pushed_last() {
    let m = Metrics::default();
    let g = GuestId::try_from(101u32).expect("guest id");
    let count = "phoenix_apply_report_latency_seconds_count";
    m.pushed(g, 7);
    m.reported(g, 6); // an older revision's report: not this push
    assert_eq!(sample(&render(&m), count), Some(0.0));
    m.reported(g, 7);
    m.reported(g, 7); // a drift re-check re-reports the same revision: timed once
    assert_eq!(sample(&render(&m), count), Some(1.0));
}

#[test]
fn dropped_events_add_up() {
    let m = Metrics::default();
    m.watch_lagged(3);
    m.watch_lagged(2);
    assert_eq!(
        sample(&render(&m), "phoenix_report_watch_lagged_total"),
        Some(5.0)
    );
}

#[test]
fn dropped_events_are_counted_by_reason() {
    let m = Metrics::default();
    m.events_dropped(EventDrop::AgentOutbox, 3);
    m.events_dropped(EventDrop::Store, 1);
    m.events_dropped(EventDrop::AgentOutbox, 2);
    let text = render(&m);
    assert_eq!(
        sample(
            &text,
            "phoenix_events_dropped_total{reason=\"agent_outbox\"}"
        ),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "phoenix_events_dropped_total{reason=\"store\"}"),
        Some(1.0)
    );
}
