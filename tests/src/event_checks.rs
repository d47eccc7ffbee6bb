//! What every `Store` must do with events and `forget_guest`, run against the embedded
//! redb store and a real etcd cluster (tests/tests/it/event_store.rs).

use crate::store_checks::{agent, g, token};
use phoenix_coordinator::store::{
    Event, LeaderTerm, ReportRecord, Retention, ServiceCertRecord, Store, Topic,
};
use phoenix_proto::model::ApplyReport;
use std::time::Duration;

fn event(key: &str, time_unix_ms: i64) -> Event {
    Event {
        index: 0,
        time_unix_ms,
        topic: Topic::Session,
        kind: "SessionOpened".into(),
        key: key.into(),
        payload: serde_json::json!({ "peer": "127.0.0.1:1" }),
    }
}

fn append1(s: &dyn Store, ev: Event) -> u64 {
    let got = s.append_events(&[ev]).expect("append");
    assert_eq!(got.len(), 1);
    got[0]
}

fn lead(s: &dyn Store) -> LeaderTerm {
    s.try_lead("event-checks")
        .expect("campaign")
        .expect("the only replica leads")
}

pub fn all(open: &dyn Fn(&str) -> Box<dyn Store>) {
    indexes_increase_and_survive_a_reopen(&|| open("event-index"));
    retention_drops_the_oldest_by_age_and_count(&*open("event-prune"));
    forget_removes_every_record_of_one_guest(&*open("forget"));
}

/// The contract `phoenix events --since` relies on: indexes only grow, a reader resumes
/// after the last one it saw, and a restarted coordinator goes on where it stopped.
fn indexes_increase_and_survive_a_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    let (first, second) = {
        let s = open();
        assert_eq!(s.event_bounds().expect("bounds").last, 0);
        let a = append1(&*s, event("1", 1_000));
        let b = append1(&*s, event("2", 2_000));
        assert!(b > a && a > 0, "indexes {a}, {b}");
        let all = s.events_since(0, 10).expect("read");
        assert_eq!(
            all.iter().map(|e| e.index).collect::<Vec<_>>(),
            [a, b],
            "stored with their index"
        );
        assert_eq!(all[1].key, "2");
        assert_eq!(all[1].payload["peer"], "127.0.0.1:1");
        assert_eq!(s.events_since(a, 10).expect("resume").len(), 1);
        assert_eq!(s.events_since(0, 1).expect("limit").len(), 1);
        (a, b)
    };
    let s = open();
    let again = s.events_since(0, 10).expect("read after reopen");
    assert_eq!(
        again.iter().map(|e| e.index).collect::<Vec<_>>(),
        [first, second]
    );
    let c = append1(&*s, event("3", 3_000));
    assert!(c > second, "index {c} after a reopen must exceed {second}");
    // A batch gets consecutive indexes in its order, after everything before it.
    let batch: Vec<Event> = (0..100).map(|i| event(&i.to_string(), 4_000)).collect();
    let got = s.append_events(&batch).expect("append a batch");
    assert_eq!(got.len(), 100);
    assert!(got[0] > c && got.windows(2).all(|w| w[1] > w[0]), "{got:?}");
    let read = s.events_since(c, 1000).expect("read the batch");
    assert_eq!(read.len(), 100);
    assert_eq!(read[99].key, "99");
    let b = s.event_bounds().expect("bounds");
    assert_eq!((b.first, b.last, b.count), (first, got[99], 103));
}

fn retention_drops_the_oldest_by_age_and_count(s: &dyn Store) {
    let now = 10_000_000;
    // Two events older than an hour, then five recent ones.
    let old: Vec<u64> = (0..2)
        .map(|i| append1(s, event("1", now - 7_200_000 + i)))
        .collect();
    let recent: Vec<u64> = (0..5)
        .map(|i| append1(s, event("1", now - 1_000 + i)))
        .collect();
    let term = lead(s);
    let by_age = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 100,
    };
    assert_eq!(s.prune_events(term, &by_age, now).expect("prune"), 2);
    let left: Vec<u64> = s
        .events_since(0, 100)
        .expect("read")
        .iter()
        .map(|e| e.index)
        .collect();
    assert_eq!(left, recent, "only the old ones went");
    assert_eq!(s.prune_events(term, &by_age, now).expect("again"), 0);
    let by_count = Retention {
        max_age: Duration::from_secs(3600),
        max_count: 3,
    };
    assert_eq!(s.prune_events(term, &by_count, now).expect("prune"), 2);
    let b = s.event_bounds().expect("bounds");
    assert_eq!((b.first, b.count), (recent[2], 3));
    // Pruning never gives an index out again.
    let next = append1(s, event("1", now));
    assert!(next > recent[4] && !old.contains(&next));
}

fn forget_removes_every_record_of_one_guest(s: &dyn Store) {
    for n in [7, 70] {
        s.put_token(&format!("hash-{n}"), &token(n, i64::MAX))
            .expect("token");
        s.enroll(
            &format!("hash-{n}"),
            g(n),
            1,
            None,
            &agent(&format!("serial-{n}")),
        )
        .expect("enroll");
        s.put_declared(g(n), b"{}").expect("declared");
        s.put_service_cert(
            g(n),
            &ServiceCertRecord {
                name: "web".into(),
                common_name: "web.lab".into(),
                sans: vec![],
                serial: "s".into(),
                not_after_unix: 1,
                issued_unix: 1,
                result: "ok".into(),
                revoked: None,
            },
        )
        .expect("service cert");
        s.put_report(
            g(n),
            &ReportRecord {
                seq: 0,
                event: 0,
                received_unix: 1,
                report: ApplyReport {
                    revision: 1,
                    digest: "d".into(),
                    dry_run: false,
                    results: vec![],
                    duration_micros: 1,
                    trigger: "push r1".into(),
                },
            },
        )
        .expect("report");
    }
    let rev = s
        .put_desired(&[
            (g(7), "d".into(), b"{}".to_vec()),
            (g(70), "d".into(), b"{}".to_vec()),
        ])
        .expect("desired");
    let gone = s.forget_guest(g(7)).expect("forget");
    assert_eq!(gone.serial.as_deref(), Some("serial-7"));
    assert_eq!(gone.desired_revision, Some(rev));
    assert!(gone.had_report && gone.had_declared);
    assert_eq!((gone.service_certs, gone.tokens), (1, 1));
    assert!(s.agent(g(7)).expect("read").is_none());
    assert!(s.desired(g(7)).expect("read").is_none());
    assert!(s.declared(g(7)).expect("read").is_none());
    assert!(s.report(g(7)).expect("read").is_none());
    assert!(
        s.reports_since(0)
            .expect("read")
            .iter()
            .all(|(x, _)| *x != g(7))
    );
    assert!(
        s.service_certs()
            .expect("read")
            .iter()
            .all(|(x, _)| *x != g(7))
    );
    assert!(
        s.check_token("hash-7", g(7), 2).is_err(),
        "its token went too"
    );
    // Guest 70 (a key with 7 as its prefix) keeps everything.
    assert!(s.agent(g(70)).expect("read").is_some());
    assert!(s.desired(g(70)).expect("read").is_some());
    assert!(s.report(g(70)).expect("read").is_some());
    assert_eq!(s.service_certs().expect("read").len(), 1);
    // Forgetting again finds nothing.
    assert!(!s.forget_guest(g(7)).expect("forget again").anything());
}
