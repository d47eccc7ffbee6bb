//! One live session per agent identity across coordinator replicas (docs/design/0012,
//! issue 15): a real 3-member etcd cluster on loopback, real `phoenix serve --store etcd`
//! replicas, and a real identity (key and certificate, enrolled through a replica) used
//! twice at once, as a copied key or a cloned guest would be.

use phoenix_tests::etcd::EtcdCluster;
use phoenix_tests::replicas::{LEASE, replica};
use phoenix_tests::sim::{self, Enrolled, Session};
use phoenix_tests::spine::guest_status;
use phoenix_tests::wait_for;
use std::sync::Arc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// The etcd value at `key` (empty when absent).
fn etcd_get(cluster: &EtcdCluster, key: &str) -> String {
    cluster
        .etcdctl(&["get", key, "--print-value-only"])
        .trim()
        .to_string()
}

/// Opens a session of `agent`'s identity on `addr`: the session, or the status it was
/// refused with.
async fn open(agent: &Enrolled, addr: &str) -> Result<Session, tonic::Status> {
    let mut client = agent
        .client(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    match sim::open_session(&mut client, agent.guest).await {
        Ok(s) => Ok(s),
        Err(e) => Err(match e.downcast::<tonic::Status>() {
            Ok(s) => *s,
            Err(other) => tonic::Status::unknown(other.to_string()),
        }),
    }
}

#[test]
fn a_copied_identity_holds_one_session_across_replicas_and_moves_when_its_replica_dies() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let Some(cluster) = EtcdCluster::start(&tmp.path().join("etcd")) else {
        return;
    };
    let mut reps = [
        replica(&cluster, tmp.path(), "r0"),
        replica(&cluster, tmp.path(), "r1"),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // Several guests, so the two replicas really race for some of them: each identity
    // opens on r0 and r1 at the same moment.
    let guests: Vec<u32> = (461..=465).collect();
    let agents: Vec<Arc<Enrolled>> = guests
        .iter()
        .map(|g| {
            let token = reps[0].token(*g);
            Arc::new(
                rt.block_on(sim::enroll(*g, &token, &reps[0].addr))
                    .expect("enroll"),
            )
        })
        .collect();
    let (a0, a1) = (reps[0].addr.clone(), reps[1].addr.clone());
    let t0 = Instant::now();
    let outcomes = rt.block_on(async {
        let opens: Vec<_> = agents
            .iter()
            .map(|a| {
                let (a, a0, a1) = (a.clone(), a0.clone(), a1.clone());
                tokio::spawn(async move { tokio::join!(open(&a, &a0), open(&a, &a1)) })
            })
            .collect();
        let mut out = Vec::new();
        for o in opens {
            out.push(o.await.expect("open task"));
        }
        out
    });
    eprintln!("both opens answered within {:?}", t0.elapsed());
    let mut held = Vec::new();
    for (g, (s0, s1)) in guests.iter().zip(outcomes) {
        let (session, winner, refused) = match (s0, s1) {
            (Ok(s), Err(e)) => (s, "r0", e),
            (Err(e), Ok(s)) => (s, "r1", e),
            (Ok(_), Ok(_)) => panic!("guest {g}: two live sessions of one identity, on r0 and r1"),
            (Err(e0), Err(e1)) => panic!("guest {g}: both sessions refused: {e0}; {e1}"),
        };
        assert_eq!(
            refused.code(),
            tonic::Code::AlreadyExists,
            "guest {g}: {refused}"
        );
        assert!(
            refused.message().contains(&format!(
                "guest {g} already has a live session on coordinator replica {winner}"
            )),
            "guest {g}: the refusal names the replica holding the session: {}",
            refused.message()
        );
        assert_eq!(
            etcd_get(&cluster, &format!("/phoenix/holders/{g:010}")),
            winner,
            "guest {g}: etcd names the holder"
        );
        held.push((*g, winner, session));
    }
    // Every replica agrees where each guest is, and only there.
    wait_for(T, "both replicas show each guest at its holder", || {
        held.iter()
            .all(|(g, winner, _)| {
                reps.iter().all(|r| {
                    guest_status(&r.status(), *g).is_some_and(|row| row["replica"] == *winner)
                })
            })
            .then_some(())
    });
    for (g, winner, _) in &held {
        let loser = if *winner == "r0" { "r1" } else { "r0" };
        let key = format!("/phoenix/sessions/{loser}/{g:010}");
        assert_eq!(
            etcd_get(&cluster, &key),
            "",
            "guest {g}: no session at {loser}"
        );
    }
    // A refusal is still one while the holder lives: past the lease and the grace. Which
    // replica won each race is up to etcd's ordering, so the first guest is followed
    // wherever it is held.
    let (g, winner, _) = &held[0];
    let (won, lost) = if *winner == "r0" { (0, 1) } else { (1, 0) };
    let other = format!("r{lost}");
    let other_addr = reps[lost].addr.clone();
    let agent = agents.iter().find(|a| a.guest == *g).expect("agent");
    let t = Instant::now();
    let again = rt.block_on(open(agent, &other_addr));
    assert!(
        matches!(&again, Err(e) if e.code() == tonic::Code::AlreadyExists),
        "guest {g}: a second session on {other} while {winner} holds it: {:?}",
        again.as_ref().err()
    );
    eprintln!("a second session refused after {:?}", t.elapsed());
    assert!(
        reps[lost].log().contains("second session refused"),
        "{other} logs the refusal"
    );

    // The holder dies: its lease expires and with it its holder keys; the identity moves.
    reps[won].kill9();
    let killed = Instant::now();
    let moved = rt.block_on(async {
        loop {
            match open(agent, &other_addr).await {
                Ok(s) => return s,
                Err(e) if killed.elapsed() < T => {
                    eprintln!("guest {g} on {other} after the kill: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("guest {g} never opened on {other} after {winner} died: {e}"),
            }
        }
    });
    let took = killed.elapsed();
    eprintln!("guest {g} held on {other} {took:?} after the kill -9 of {winner} (lease {LEASE:?})");
    assert_eq!(
        etcd_get(&cluster, &format!("/phoenix/holders/{g:010}")),
        other
    );
    wait_for(T, "the survivor shows the guest at itself", || {
        guest_status(&reps[lost].status(), *g)
            .filter(|row| row["connected"] == true && row["replica"] == other.as_str())
    });
    drop(moved);
    drop(held);
}
