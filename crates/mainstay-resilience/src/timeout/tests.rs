use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tower::{service_fn, ServiceExt};

/// Sets a flag when dropped: shows the timed-out operation was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn times_out_and_cancels_the_operation() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let start = tokio::time::Instant::now();
    let r = timeout(Duration::from_secs(2), async move {
        let _flag = flag;
        tokio::time::sleep(Duration::from_secs(10)).await;
        "late"
    })
    .await;
    assert_eq!(
        r,
        Err(Elapsed {
            after: Duration::from_secs(2)
        })
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the timed-out operation must be dropped"
    );
    assert_eq!(timeout(Duration::from_secs(2), async { 7 }).await, Ok(7));
}

#[tokio::test(start_paused = true)]
async fn as_a_tower_layer() {
    let svc = tower::ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(100)))
        .service(service_fn(|d: u64| async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            Ok::<_, &str>(d)
        }));
    assert_eq!(svc.oneshot(50).await.unwrap(), 50);
    assert!(matches!(
        svc.oneshot(150).await,
        Err(TimeoutError::Elapsed(_))
    ));
    let failing = Timeout::new(
        service_fn(|_: ()| async { Err::<(), _>("boom") }),
        Duration::from_secs(1),
    );
    assert!(matches!(
        failing.oneshot(()).await,
        Err(TimeoutError::Inner("boom"))
    ));
}
