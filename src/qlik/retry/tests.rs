//! The classifier and the delay sequence of the per-request retry policy, on paused tokio
//! time (the waits are asserted exactly or within the jitter bounds, never slept for real).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use super::*;
use crate::qlik::error::ApiProblem;

fn status(status: u16, retry_after: Option<u64>) -> QlikError {
    QlikError::Status {
        method: "PATCH",
        endpoint: "/api/v1/data-connections/{id}",
        status,
        problem: Box::new(ApiProblem::default()),
        retry_after: retry_after.map(Duration::from_secs),
    }
}

fn transport(timeout: bool) -> QlikError {
    QlikError::Transport {
        method: "GET",
        endpoint: "/api/v1/data-connections/{id}",
        message: "connection reset".into(),
        timeout,
    }
}

fn policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        ..RetryPolicy::default()
    }
}

const UNGATED: Request<'static> = Request {
    method: "GET",
    endpoint: "/api/v1/data-connections/{id}",
    gate: None,
    observer: None,
};

/// Runs the loop over `script` (one result per attempt; `Ok` once it runs out) and returns
/// the outcome, the attempts made and the virtual time taken.
async fn run_script(
    policy: &RetryPolicy,
    request: &Request<'_>,
    script: Vec<QlikError>,
) -> (Result<u32, QlikError>, u32, Duration) {
    let script = std::sync::Mutex::new(script.into_iter());
    let calls = AtomicU32::new(0);
    let start = Instant::now();
    let out = run(policy, request, || async {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(gate) = request.gate {
            gate.acquire().await;
        }
        match script.lock().unwrap().next() {
            Some(e) => Err(e),
            None => Ok(n),
        }
    })
    .await;
    (out, calls.load(Ordering::SeqCst), start.elapsed())
}

#[test]
fn the_classifier_retries_429_5xx_timeouts_and_dropped_connections_only() {
    let cases: Vec<(&str, QlikError, bool)> = vec![
        ("429", status(429, None), true),
        ("500", status(500, None), true),
        ("502", status(502, None), true),
        ("503 with Retry-After", status(503, Some(3)), true),
        ("504", status(504, None), true),
        ("599", status(599, None), true),
        ("timeout", transport(true), true),
        ("dropped connection", transport(false), true),
        ("400", status(400, None), false),
        ("401", status(401, None), false),
        ("403", status(403, None), false),
        ("404", status(404, None), false),
        ("409", status(409, None), false),
        ("422", status(422, None), false),
        ("304 as a status", status(304, None), false),
        ("600 (not 5xx)", status(600, None), false),
        (
            "redirect 307",
            QlikError::Redirect {
                method: "PATCH",
                endpoint: "/x",
                status: 307,
                location: None,
            },
            false,
        ),
        (
            "response_too_large",
            QlikError::TooLarge {
                method: "GET",
                endpoint: "/x",
                limit: 1,
            },
            false,
        ),
        (
            "decode",
            QlikError::Decode {
                method: "GET",
                endpoint: "/x",
                message: "invalid JSON".into(),
            },
            false,
        ),
        ("token", QlikError::Token("HTTP 401".into()), false),
        (
            "name not found",
            QlikError::NameNotFound {
                name: "n".into(),
                space: None,
            },
            false,
        ),
    ];
    println!("{} classifier cases", cases.len());
    for (name, err, retry) in &cases {
        assert_eq!(RetryPolicy::should_retry(err), *retry, "{name}");
        assert_eq!(err.is_retriable(), *retry, "{name}: is_retriable agrees");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_wins_over_the_backoff() {
    let (out, calls, elapsed) = run_script(
        &policy(5),
        &UNGATED,
        vec![status(503, Some(7)), status(429, Some(2))],
    )
    .await;
    assert_eq!(out.unwrap(), 3);
    assert_eq!(calls, 3);
    assert_eq!(elapsed, Duration::from_secs(9));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_above_max_retry_after_fails_at_once() {
    let p = policy(5);
    let over = p.max_retry_after.as_secs() + 1;
    let (out, calls, elapsed) = run_script(&p, &UNGATED, vec![status(429, Some(over))]).await;
    assert_eq!(
        out.unwrap_err().retry_after(),
        Some(Duration::from_secs(over))
    );
    assert_eq!((calls, elapsed), (1, Duration::ZERO));
    // Exactly the maximum is still waited for.
    let at = p.max_retry_after.as_secs();
    let (out, calls, elapsed) = run_script(&p, &UNGATED, vec![status(429, Some(at))]).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!((calls, elapsed), (2, p.max_retry_after));
}

#[tokio::test(start_paused = true)]
async fn a_429_without_retry_after_waits_one_second() {
    let (out, calls, elapsed) = run_script(
        &policy(5),
        &UNGATED,
        vec![status(429, None), status(429, None)],
    )
    .await;
    assert_eq!(out.unwrap(), 3);
    assert_eq!((calls, elapsed), (3, 2 * RATE_LIMITED_DEFAULT_WAIT));
}

#[test]
fn the_backoff_doubles_is_capped_and_jitters_within_half_to_full() {
    let p = RetryPolicy {
        max_attempts: 9,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(1000),
        max_retry_after: Duration::from_secs(120),
    };
    let full = [100u64, 200, 400, 800, 1000, 1000, 1000, 1000].map(Duration::from_millis);
    let mut seen = vec![Vec::new(); full.len()];
    for _ in 0..300 {
        let mut s = p.schedule();
        for (n, cap) in full.iter().enumerate() {
            let d = s.next_delay(&status(500, None)).expect("retry");
            assert!(
                d >= *cap / 2 && d <= *cap,
                "retry {}: {d:?} not in [{:?}, {cap:?}]",
                n + 1,
                *cap / 2
            );
            seen[n].push(d);
        }
        // The ninth failure uses up max_attempts.
        assert_eq!(s.next_delay(&status(500, None)), None);
        assert_eq!(s.attempt(), 9);
    }
    for (n, ds) in seen.iter().enumerate() {
        let (lo, hi) = (ds.iter().min().unwrap(), ds.iter().max().unwrap());
        assert!(hi > lo, "retry {}: no jitter ({lo:?})", n + 1);
    }
}

#[test]
fn a_retry_after_does_not_reset_the_backoff() {
    let p = RetryPolicy {
        max_attempts: 5,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_retry_after: Duration::from_secs(120),
    };
    let mut s = p.schedule();
    assert_eq!(
        s.next_delay(&status(503, Some(4))),
        Some(Duration::from_secs(4))
    );
    assert_eq!(s.next_delay(&status(503, Some(0))), Some(Duration::ZERO));
    // Third retry: base × 4, jittered.
    let d = s.next_delay(&transport(true)).unwrap();
    assert!(
        d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
        "{d:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn max_attempts_bounds_the_attempts_and_the_last_error_is_returned() {
    let p = RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        max_retry_after: Duration::from_secs(120),
    };
    let script = vec![
        status(500, None),
        transport(false),
        status(502, None),
        status(504, None),
    ];
    let (out, calls, elapsed) = run_script(&p, &UNGATED, script).await;
    assert_eq!(out.unwrap_err().status(), Some(504));
    assert_eq!(calls, 4);
    // Three backoffs: within half and all of 100 + 200 + 400 ms.
    assert!(
        elapsed >= Duration::from_millis(350) && elapsed <= Duration::from_millis(700),
        "{elapsed:?}"
    );
    for n in [0, 1] {
        let (out, calls, _) = run_script(&policy(n), &UNGATED, vec![status(503, None)]).await;
        assert_eq!(
            (out.unwrap_err().status(), calls),
            (Some(503), 1),
            "max_attempts {n}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn final_errors_are_not_retried() {
    for err in [
        status(400, None),
        status(401, Some(1)),
        status(404, None),
        QlikError::TooLarge {
            method: "GET",
            endpoint: "/x",
            limit: 1,
        },
    ] {
        let label = err.error_type();
        let (out, calls, elapsed) = run_script(&policy(5), &UNGATED, vec![err]).await;
        assert_eq!(out.unwrap_err().error_type(), label);
        assert_eq!((calls, elapsed), (1, Duration::ZERO), "{label}");
    }
}

#[derive(Default)]
struct Count429(AtomicU32);

impl RequestObserver for Count429 {
    fn request(&self, _: &'static str, _: &'static str, _: &str, _: Duration) {}
    fn rate_limited(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_on_a_gated_request_pauses_every_writer_instead_of_sleeping() {
    let gate = Arc::new(WriteGate::new(0));
    let observer = Count429::default();
    let request = Request {
        method: "PATCH",
        endpoint: "/api/v1/data-connections/{id}",
        gate: Some(&gate),
        observer: Some(&observer),
    };
    let start = Instant::now();
    // Another writer that starts while the first one is rate-limited waits too.
    let other = {
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            gate.acquire().await;
            Instant::now()
        })
    };
    let (out, calls, elapsed) = run_script(&p5(), &request, vec![status(429, Some(3))]).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!((calls, elapsed), (2, Duration::from_secs(3)));
    assert_eq!(gate.pauses(), 1);
    assert_eq!(observer.0.load(Ordering::SeqCst), 1);
    assert!(other.await.unwrap() - start >= Duration::from_secs(3));

    // A 5xx on the same gated request sleeps; the gate stays open for the others.
    let (out, _, elapsed) = run_script(&p5(), &request, vec![status(503, Some(2))]).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!(elapsed, Duration::from_secs(2));
    assert_eq!(gate.pauses(), 1);
    assert_eq!(observer.0.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_429_on_an_ungated_request_sleeps() {
    let observer = Count429::default();
    let request = Request {
        observer: Some(&observer),
        ..UNGATED
    };
    let (out, _, elapsed) = run_script(&p5(), &request, vec![status(429, Some(5))]).await;
    assert_eq!(out.unwrap(), 2);
    assert_eq!(elapsed, Duration::from_secs(5));
    assert_eq!(observer.0.load(Ordering::SeqCst), 1);
}

fn p5() -> RetryPolicy {
    policy(5)
}
