//! Guarantees every backend must give, run against each real engine.

use crate::common::Env;
use futures::StreamExt;
use mainstay_lock::{AcquireOptions, BackendKind, Election, LockError};
use mainstay_testkit::per_backend;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// 16 holders × 50 rounds increment a counter with a read–yield–write under the lock: no
/// lost update, never two inside at once, and tokens strictly increase in grant order.
async fn mutual_exclusion(kind: BackendKind) {
    let env = Env::new(kind).await;
    let counter = Arc::new(AtomicU64::new(0));
    let inside = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        // Separate clients: separate connections (and sessions) contend like processes do.
        let client = env.client().await;
        let (counter, inside, tokens) = (counter.clone(), inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                let opts = AcquireOptions::ttl(Duration::from_secs(30))
                    .wait(Duration::from_secs(120))
                    .owner(format!("w{worker}"));
                let lease = client.acquire("counter", &opts).await.expect("acquire");
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders inside the critical section"
                );
                tokens.lock().unwrap().push(lease.fencing_token);
                let v = counter.load(Ordering::SeqCst);
                tokio::task::yield_now().await;
                counter.store(v + 1, Ordering::SeqCst);
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(client
                    .release("counter", &lease.lease_id)
                    .await
                    .expect("release"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        800,
        "lost update under {kind:?}"
    );
    let tokens = tokens.lock().unwrap();
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens not strictly increasing in grant order: {tokens:?}"
    );
}
per_backend!(mutual_exclusion);

/// A busy lock names its holder; a non-owner cannot release or extend it; release is
/// owner-checked and idempotent; the next grant's token is higher.
async fn ownership(kind: BackendKind) {
    let env = Env::new(kind).await;
    let (a, b) = (env.client().await, env.client().await);
    let lease = a
        .try_acquire(
            "res",
            &AcquireOptions::ttl(Duration::from_secs(30)).owner("alice"),
        )
        .await
        .unwrap();
    assert_eq!(lease.lease_id.len(), 32);
    match b
        .try_acquire(
            "res",
            &AcquireOptions::ttl(Duration::from_secs(30)).owner("bob"),
        )
        .await
    {
        Err(LockError::Busy {
            holder: Some(h), ..
        }) => {
            assert_eq!(h.owner, "alice");
            assert_eq!(h.fencing_token, lease.fencing_token);
            assert!(h.expires_at_ms > mainstay_core::clock::now_ms());
        }
        other => panic!("expected Busy naming alice, got {other:?}"),
    }
    let forged = mainstay_core::id::unguessable();
    assert!(
        !b.release("res", &forged).await.unwrap(),
        "a non-owner released the lock"
    );
    assert!(matches!(
        b.extend("res", &forged, Duration::from_secs(30)).await,
        Err(LockError::NotHolder { .. })
    ));
    assert_eq!(
        b.holder("res").await.unwrap().map(|h| h.owner),
        Some("alice".into())
    );
    let extended = a
        .extend("res", &lease.lease_id, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(extended.fencing_token, lease.fencing_token);
    assert!(a.release("res", &lease.lease_id).await.unwrap());
    assert!(
        !a.release("res", &lease.lease_id).await.unwrap(),
        "second release must report not-held"
    );
    assert_eq!(b.holder("res").await.unwrap(), None);
    let next = b
        .try_acquire(
            "res",
            &AcquireOptions::ttl(Duration::from_secs(30)).owner("bob"),
        )
        .await
        .unwrap();
    assert!(next.fencing_token > lease.fencing_token);
}
per_backend!(ownership);

/// Redis: a lock in the layout earlier versions wrote (a string `{lease_id}\n{owner}`, as a
/// process not yet upgraded holds it during a rolling upgrade) still excludes: a grant is
/// refused naming its owner, it cannot be released or extended with another lease, and
/// once its holder deletes it the lock is granted again.
#[tokio::test]
async fn redis_respects_locks_in_the_earlier_layout() {
    let fresh = mainstay_testkit::FreshBackend::new(BackendKind::Redis)
        .await
        .unwrap();
    let client = crate::common::connect(BackendKind::Redis, &fresh.urls, &fresh.ns).await;
    let mut raw = redis::Client::open(fresh.urls[0].as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = format!("{}:lock:{{res}}", fresh.ns);
    let old_lease = mainstay_core::id::unguessable();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("{old_lease}\nold-version"))
        .arg("PX")
        .arg(30_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    match client
        .try_acquire("res", &AcquireOptions::ttl(Duration::from_secs(30)))
        .await
    {
        Err(LockError::Busy {
            holder: Some(h), ..
        }) => assert_eq!(h.owner, "old-version"),
        other => panic!("expected Busy naming the old holder, got {other:?}"),
    }
    assert_eq!(
        client.holder("res").await.unwrap().map(|h| h.owner),
        Some("old-version".into())
    );
    let forged = mainstay_core::id::unguessable();
    assert!(!client.release("res", &forged).await.unwrap());
    assert!(!client.release("res", &old_lease).await.unwrap());
    assert!(matches!(
        client.extend("res", &forged, Duration::from_secs(30)).await,
        Err(LockError::NotHolder { .. })
    ));
    let still: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(still, Some(format!("{old_lease}\nold-version")));
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut raw)
        .await
        .unwrap();
    let lease = client
        .try_acquire("res", &AcquireOptions::ttl(Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(client.release("res", &lease.lease_id).await.unwrap());
}

/// A lease that is not renewed expires at its ttl; a waiter then gets a higher token and the
/// old lease can no longer be extended.
async fn expiry(kind: BackendKind) {
    let env = Env::new(kind).await;
    let (a, b) = (env.client().await, env.client().await);
    let ttl = env.short_ttl();
    let first = a
        .try_acquire("exp", &AcquireOptions::ttl(ttl).owner("a"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let second = b
        .acquire(
            "exp",
            &AcquireOptions::ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(20))
                .owner("b"),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() >= ttl.mul_f64(0.8),
        "granted after {:?}, before the first lease's ttl {ttl:?}",
        started.elapsed()
    );
    assert!(second.fencing_token > first.fencing_token);
    assert!(matches!(
        a.extend("exp", &first.lease_id, ttl).await,
        Err(LockError::NotHolder { .. })
    ));
}
per_backend!(expiry);

/// Keep-alive renews past several ttls; release stops renewal first. Each renewal is
/// observed on the lease (not assumed after a sleep) and followed by a check that the lock
/// is still held; the 3 s ttl leaves a renewal (due every second) two seconds to be late on
/// a busy host before the lease could lapse.
async fn keep_alive(kind: BackendKind) {
    let env = Env::new(kind).await;
    let (a, b) = (env.client().await, env.client().await);
    let ttl = Duration::from_secs(3);
    let lease = a
        .try_acquire("ka", &AcquireOptions::ttl(ttl).owner("a"))
        .await
        .unwrap();
    let ka = a.keep_alive(lease.clone()).unwrap();
    let mut renewals = 0;
    let mut last = lease.expires_at_ms;
    // Until the first grant's own expiry is a second behind us.
    while mainstay_core::clock::now_ms() <= lease.expires_at_ms + 1000 {
        mainstay_testkit::eventually(ttl, "the next renewal", || {
            let renewed = ka.lease().expires_at_ms > last;
            async move { renewed }
        })
        .await
        .unwrap();
        last = ka.lease().expires_at_ms;
        renewals += 1;
        assert!(!ka.is_lost(), "{kind:?}: lost after {renewals} renewals");
        assert!(
            matches!(
                b.try_acquire("ka", &AcquireOptions::ttl(ttl)).await,
                Err(LockError::Busy { .. })
            ),
            "{kind:?}: lease lapsed despite keep-alive ({renewals} renewals)"
        );
    }
    assert!(renewals >= 3, "{kind:?}: only {renewals} renewals");
    assert!(ka.release().await.unwrap());
    let next = b
        .try_acquire("ka", &AcquireOptions::ttl(ttl))
        .await
        .unwrap();
    assert!(next.fencing_token > lease.fencing_token);
}
per_backend!(keep_alive);

/// Election: one leader at a time, epochs increase, observers see each term.
async fn election(kind: BackendKind) {
    let env = Env::new(kind).await;
    let (ea, eb) = (
        Election::new(env.client().await),
        Election::new(env.client().await),
    );
    let ttl = Duration::from_secs(10);
    let mut observed = Box::pin(eb.observe("primary", Duration::from_millis(20)));
    assert_eq!(observed.next().await.unwrap().unwrap(), None);
    let a = ea
        .campaign("primary", "node-a", ttl, Duration::from_secs(5))
        .await
        .unwrap();
    let seen = observed.next().await.unwrap().unwrap().expect("a leader");
    assert_eq!((seen.candidate.as_str(), seen.epoch), ("node-a", a.epoch()));
    match eb
        .campaign("primary", "node-b", ttl, Duration::from_millis(300))
        .await
    {
        Err(LockError::Busy {
            holder: Some(h), ..
        }) => assert_eq!(h.owner, "node-a"),
        other => panic!("second candidate should not win while the first leads: {other:?}"),
    }
    let epoch_a = a.epoch();
    let campaign_b = tokio::spawn(async move {
        eb.campaign("primary", "node-b", ttl, Duration::from_secs(20))
            .await
    });
    assert!(a.resign().await.unwrap());
    let b = campaign_b.await.unwrap().unwrap();
    assert!(b.epoch() > epoch_a);
    // The observer sees node-b (possibly after an empty gap).
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match observed.next().await.unwrap().unwrap() {
                Some(l) if l.candidate == "node-b" => {
                    assert_eq!(l.epoch, b.epoch());
                    break;
                }
                Some(l) => panic!("unexpected leader {l:?}"),
                None => continue,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{kind:?}: the observer never saw node-b lead"));
    assert_eq!(
        ea.leader("primary").await.unwrap().map(|l| l.candidate),
        Some("node-b".into())
    );
}
per_backend!(election);

/// Bad arguments are refused before reaching the backend.
#[tokio::test]
async fn invalid_arguments_are_refused() {
    let env = Env::new(BackendKind::Sqlite).await;
    let c = env.client().await;
    for (name, opts) in [
        ("", AcquireOptions::default()),
        ("a/b", AcquireOptions::default()),
        (&*"x".repeat(257), AcquireOptions::default()),
        ("ok", AcquireOptions::ttl(Duration::ZERO)),
        ("ok", AcquireOptions::ttl(Duration::from_secs(90_000))),
        (
            "ok",
            AcquireOptions::default().wait(Duration::from_secs(90_000)),
        ),
        ("ok", AcquireOptions::default().owner("x".repeat(300))),
    ] {
        let err = c.acquire(name, &opts).await.unwrap_err();
        assert!(
            matches!(
                err,
                LockError::InvalidName { .. } | LockError::InvalidArgument { .. }
            ),
            "{err:?}"
        );
    }
    assert_eq!(
        c.holder("ok").await.unwrap(),
        None,
        "a refused request must not take the lock"
    );
}
