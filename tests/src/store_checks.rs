//! What every implementation of the coordinator's `Store` must do, run against the
//! embedded redb store and against etcd (tests/tests/it/store_backends.rs).

use phoenix_coordinator::store::{
    AgentRecord, ReportRecord, ServiceCertRecord, Store, StoreError, TokenRecord,
};
use phoenix_proto::model::{ApplyReport, GuestId};

pub fn g(n: u32) -> GuestId {
    GuestId::try_from(n).expect("valid guest id")
}

pub fn token(guest: u32, expires_unix: i64) -> TokenRecord {
    TokenRecord {
        guest: g(guest),
        expires_unix,
        used_unix: None,
        issued_serial: None,
        replace: false,
    }
}

pub fn agent(serial: &str) -> AgentRecord {
    AgentRecord {
        serial: serial.into(),
        confirmed: false,
        ..AgentRecord::default()
    }
}

/// Every check below, each on its own state: `open(name)` opens the store state called
/// `name`, and again after the previous handle was dropped (the restart checks).
pub fn all(open: &dyn Fn(&str) -> Box<dyn Store>) {
    tokens_are_single_use_expiring_and_guest_bound(&*open("tokens"));
    enroll_refuses_when_the_identity_changed_meanwhile(&*open("enroll"));
    a_revoke_during_a_renewal_is_not_undone(&*open("revoke"));
    revisions_increase_and_survive_reopen(&|| open("revisions"));
    records_round_trip_in_guest_order(&*open("records"));
    the_leader_prunes_expired_tokens(&*open("prune"));
    reports_since_gives_each_guests_last_report_after_a_position(&*open("reports"));
}

/// A report watcher that fell behind re-reads what came after the last position it saw.
pub fn reports_since_gives_each_guests_last_report_after_a_position(s: &dyn Store) {
    let rec = |revision| ReportRecord {
        seq: 0,
        event: revision * 10,
        received_unix: 1,
        report: ApplyReport {
            revision,
            digest: String::new(),
            dry_run: false,
            results: Vec::new(),
            duration_micros: 1,
            trigger: "push".into(),
        },
    };
    let a = s.put_report(g(1), &rec(1)).expect("put");
    let b = s.put_report(g(2), &rec(1)).expect("put");
    let c = s.put_report(g(1), &rec(2)).expect("put");
    assert!(a < b && b < c, "positions increase: {a} {b} {c}");
    // Stored whole, with the position it was given.
    assert_eq!(
        s.report(g(1)).expect("read"),
        Some(ReportRecord { seq: c, ..rec(2) })
    );
    let since = |after| -> Vec<(u32, u64, u64)> {
        s.reports_since(after)
            .expect("read")
            .into_iter()
            .map(|(g, r)| (g.get(), r.seq, r.report.revision))
            .collect()
    };
    // Guest 1's first report was superseded: only its last one is returned.
    assert_eq!(since(0), [(2, b, 1), (1, c, 2)]);
    assert_eq!(since(b), [(1, c, 2)]);
    assert_eq!(since(c), []);
}

pub fn tokens_are_single_use_expiring_and_guest_bound(s: &dyn Store) {
    s.put_token("h1", &token(101, 1000)).expect("put");
    s.put_token("h2", &token(101, 1000)).expect("put");
    assert!(matches!(
        s.check_token("h1", g(102), 10),
        Err(StoreError::TokenGuest { .. })
    ));
    assert!(matches!(
        s.check_token("h2", g(101), 1000),
        Err(StoreError::TokenExpired { .. })
    ));
    s.check_token("h1", g(101), 10).expect("valid");
    s.enroll("h1", g(101), 10, None, &agent("aa"))
        .expect("first use");
    // The identity was never used: the agent may have refused it, so the token works again.
    s.check_token("h1", g(101), 11)
        .expect("unconfirmed identity");
    s.enroll("h1", g(101), 11, Some("aa"), &agent("bb"))
        .expect("second use before confirmation");
    s.update_agent(g(101), Some("bb"), true, &mut |r| r.confirmed = true)
        .expect("confirm");
    assert!(matches!(
        s.check_token("h1", g(101), 12),
        Err(StoreError::TokenUsed { .. })
    ));
    assert!(matches!(
        s.enroll("h1", g(101), 12, Some("bb"), &agent("cc")),
        Err(StoreError::TokenUsed { .. })
    ));
    assert!(matches!(
        s.check_token("nope", g(101), 11),
        Err(StoreError::TokenUnknown)
    ));
}

pub fn enroll_refuses_when_the_identity_changed_meanwhile(s: &dyn Store) {
    s.put_token("h1", &token(101, 1000)).expect("put");
    s.put_token("h2", &token(101, 1000)).expect("put");
    // Both joins checked their token while the guest had no identity; the second
    // to commit must not overwrite the first.
    s.enroll("h1", g(101), 10, None, &agent("aa"))
        .expect("first");
    assert!(matches!(
        s.enroll("h2", g(101), 10, None, &agent("bb")),
        Err(StoreError::Changed { .. })
    ));
    assert_eq!(
        s.agent(g(101)).expect("get").map(|r| r.serial),
        Some("aa".into())
    );
    // The refused join did not use its token.
    s.check_token("h2", g(101), 11).expect("still unused");
}

pub fn a_revoke_during_a_renewal_is_not_undone(s: &dyn Store) {
    s.put_token("h1", &token(101, 1000)).expect("put");
    s.enroll("h1", g(101), 10, None, &agent("aa"))
        .expect("enroll");
    // A renewal read serial "aa", then waited for the CA; the revoke lands meanwhile.
    let seen = s.agent(g(101)).expect("read").expect("enrolled");
    s.revoke_agent(g(101), 20).expect("revoke");
    let renewed = s.update_agent(g(101), Some(&seen.serial), true, &mut |r| {
        r.serial = "bb".into();
    });
    assert!(matches!(renewed, Err(StoreError::Revoked { at: 20, .. })));
    let rec = s.agent(g(101)).expect("read").expect("enrolled");
    assert_eq!((rec.serial.as_str(), rec.revoked_unix), ("aa", Some(20)));
    // A renewal that lost the race against another renewal is refused too.
    s.put_token("h2", &token(101, 1000)).expect("put");
    s.enroll("h2", g(101), 30, Some("aa"), &agent("cc"))
        .expect("re-join");
    s.update_agent(g(101), Some("cc"), true, &mut |r| r.serial = "dd".into())
        .expect("renew");
    assert!(matches!(
        s.update_agent(g(101), Some("cc"), true, &mut |r| r.serial = "ee".into()),
        Err(StoreError::Changed { .. })
    ));
    assert!(matches!(
        s.update_agent(g(999), None, true, &mut |_| {}),
        Err(StoreError::NotEnrolled { .. })
    ));
}

pub fn revisions_increase_and_survive_reopen(open: &dyn Fn() -> Box<dyn Store>) {
    {
        let s = open();
        let r1 = s
            .put_desired(&[(g(1), "d1".into(), b"{}".to_vec())])
            .expect("put");
        assert_eq!(r1, 1);
        let r2 = s
            .put_desired(&[(g(2), "d2".into(), b"{}".to_vec())])
            .expect("put");
        assert_eq!(r2, 2);
    }
    let s = open();
    assert_eq!(s.desired(g(1)).expect("get").map(|d| d.revision), Some(1));
    let r3 = s
        .put_desired(&[(g(1), "d3".into(), b"{}".to_vec())])
        .expect("put");
    assert_eq!(r3, 3);
    let all = s.all_desired().expect("all");
    let got: Vec<(u32, u64, &str)> = all
        .iter()
        .map(|(g, d)| (g.get(), d.revision, d.digest.as_str()))
        .collect();
    assert_eq!(got, vec![(1, 3, "d3"), (2, 2, "d2")]);
}

/// Listings come back complete and in guest order (more guests than one etcd page).
pub fn records_round_trip_in_guest_order(s: &dyn Store) {
    // 9 sorts after 10 as text: the order must be numeric.
    let guests: Vec<u32> = (1..=120).rev().chain([9, 10]).collect();
    let states: Vec<(GuestId, String, Vec<u8>)> = guests
        .iter()
        .map(|n| (g(*n), format!("d{n}"), vec![b'x'; 100]))
        .collect();
    let rev = s.put_desired(&states).expect("put desired");
    let all = s.all_desired().expect("all desired");
    assert_eq!(all.len(), 120);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "sorted by guest");
    assert!(
        all.iter()
            .all(|(g, d)| d.revision == rev && d.digest == format!("d{g}"))
    );
    // Many at once (more than one etcd transaction's worth), in the order asked, absent
    // guests as None.
    let ask: Vec<GuestId> = (1..=130).rev().map(g).collect();
    let many = s.desired_many(&ask).expect("desired many");
    assert_eq!(many.len(), 130);
    for (id, d) in ask.iter().zip(&many) {
        match d {
            Some(d) => assert_eq!(d.digest, format!("d{id}")),
            None => assert!(id.get() > 120, "guest {id} missing"),
        }
    }

    s.put_declared(g(7), b"{\"a\":1}").expect("declared");
    assert_eq!(
        s.declared(g(7)).expect("read").as_deref(),
        Some(&b"{\"a\":1}"[..])
    );
    assert_eq!(s.declared(g(8)).expect("read"), None);
    // A batch replaces some and adds others.
    let batch: Vec<(GuestId, Vec<u8>)> = (7..=40)
        .map(|n| (g(n), format!("{{\"b\":{n}}}").into_bytes()))
        .collect();
    s.put_declared_many(&batch).expect("declared batch");
    for (guest, json) in &batch {
        assert_eq!(s.declared(*guest).expect("read").as_ref(), Some(json));
    }

    let report = ReportRecord {
        seq: 0,
        event: 0,
        received_unix: 5,
        report: ApplyReport {
            revision: rev,
            digest: "d7".into(),
            dry_run: false,
            results: vec![],
            duration_micros: 1,
            trigger: "push".into(),
        },
    };
    let seq = s.put_report(g(7), &report).expect("report");
    assert_eq!(
        s.report(g(7)).expect("read"),
        Some(ReportRecord { seq, ..report })
    );

    for (guest, name) in [(10, "web"), (9, "db"), (10, "api")] {
        let cert = ServiceCertRecord {
            name: name.into(),
            common_name: format!("{name}.lan"),
            sans: vec![],
            serial: "01".into(),
            not_after_unix: 1,
            issued_unix: 1,
            result: "ok".into(),
            revoked: None,
        };
        s.put_service_cert(g(guest), &cert).expect("cert");
    }
    // redb keys them "<guest>/<name>" as text, so only the set is common to both.
    let mut certs: Vec<(u32, String)> = s
        .service_certs()
        .expect("certs")
        .into_iter()
        .map(|(g, c)| (g.get(), c.name))
        .collect();
    certs.sort();
    assert_eq!(
        certs,
        vec![(9, "db".into()), (10, "api".into()), (10, "web".into())]
    );

    for n in [12, 3] {
        s.put_token(&format!("t{n}"), &token(n, 1000))
            .expect("token");
        s.enroll(&format!("t{n}"), g(n), 1, None, &agent(&format!("s{n}")))
            .expect("enroll");
    }
    let agents: Vec<(u32, String)> = s
        .agents()
        .expect("agents")
        .into_iter()
        .map(|(g, a)| (g.get(), a.serial))
        .collect();
    assert_eq!(agents, vec![(3, "s3".into()), (12, "s12".into())]);
}

pub fn the_leader_prunes_expired_tokens(s: &dyn Store) {
    s.put_token("old", &token(1, 100)).expect("put");
    s.put_token("new", &token(1, 1000)).expect("put");
    let term = s
        .try_lead("replica-a")
        .expect("campaign")
        .expect("the only replica leads");
    assert_eq!(s.prune_tokens(term, 500).expect("prune"), 1);
    assert!(matches!(
        s.check_token("old", g(1), 10),
        Err(StoreError::TokenUnknown)
    ));
    s.check_token("new", g(1), 10).expect("kept");
    s.resign(term).expect("resign");
}
