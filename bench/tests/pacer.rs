//! The open loop's pacer: what is due when, that it releases no more than
//! is due and only until its deadline, that clients share its releases,
//! and that it stops once nobody takes them. No timing is asserted.

use std::time::{Duration, Instant};

use keel_bench::pacer::{OpenLoop, Pacer, due};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

#[test]
fn operation_k_is_due_at_k_over_the_rate() {
    assert_eq!(due(Duration::ZERO, 1000.0), 1, "the first one at once");
    assert_eq!(due(Duration::from_micros(999), 1000.0), 1);
    assert_eq!(due(Duration::from_millis(1), 1000.0), 2);
    assert_eq!(due(Duration::from_secs(1), 2000.0), 2001);
    assert_eq!(due(Duration::from_millis(250), 31_000.0), 7751);
    assert_eq!(due(Duration::from_secs(3600), 0.5), 1801);
}

#[test]
fn it_releases_what_is_due_in_order_until_its_deadline_to_every_client() {
    let runtime = rt();
    let rate = 50_000.0;
    let window = Duration::from_millis(30);
    let (took, began, deadline) = runtime.block_on(async {
        let began = Instant::now();
        let deadline = began + window;
        let (pacer, releases) = Pacer::start(OpenLoop::at(rate), began, Some(deadline)).expect("pacer");
        // Two clients share the releases; each runs until the pacer stops.
        let clients: Vec<_> = (0..2)
            .map(|_| {
                let releases = releases.clone();
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    while let Some(released) = releases.next().await {
                        took.push(released);
                        tokio::task::yield_now().await;
                    }
                    took
                })
            })
            .collect();
        drop(releases);
        let mut took = Vec::new();
        for client in clients {
            let mine = client.await.expect("client");
            assert!(mine.is_sorted(), "each client takes releases oldest first");
            took.push(mine);
        }
        pacer.join().await;
        (took, began, deadline)
    });
    let total: usize = took.iter().map(Vec::len).sum();
    let most = due(window, rate);
    assert!(total as u64 <= most, "{total} released, at most {most} were due by the deadline");
    assert!(took.iter().flatten().all(|&t| t >= began && t < deadline), "released within the phase");
}

#[test]
fn it_stops_once_no_client_is_left() {
    let runtime = rt();
    runtime.block_on(async {
        let (pacer, releases) = Pacer::start(OpenLoop::at(1000.0), Instant::now(), None).expect("pacer");
        // The first operation is due at once, the next ones in turn.
        for _ in 0..3 {
            assert!(releases.next().await.is_some());
        }
        drop(releases);
        // Without a deadline, only the clients leaving ends it.
        pacer.join().await;
    });
}
