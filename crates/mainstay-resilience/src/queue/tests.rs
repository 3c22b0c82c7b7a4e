use super::*;

fn drain<T>(q: &BackpressureQueue<T>) -> Vec<T> {
    std::iter::from_fn(|| q.try_get()).collect()
}

fn assert_accounted<T>(q: &BackpressureQueue<T>) {
    let m = q.metrics();
    assert_eq!(
        m.received,
        m.processed + m.dropped + m.queued as u64,
        "{m:?}"
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_hands_back_the_evicted() {
    let q = BackpressureQueue::new(3, Strategy::DropOldest);
    let mut evicted = Vec::new();
    for i in 1..=6 {
        if let Put::QueuedEvicting(old) = q.put(i).await.unwrap() {
            evicted.push(old);
        }
    }
    assert_eq!(evicted, vec![1, 2, 3]);
    assert_accounted(&q);
    assert_eq!(q.metrics().fill_ratio, 1.0);
    assert_eq!(drain(&q), vec![4, 5, 6]);
    assert_eq!((q.metrics().dropped, q.metrics().processed), (3, 3));
    assert_accounted(&q);
}

#[tokio::test]
async fn drop_newest_and_error_keep_the_oldest() {
    let q = BackpressureQueue::new(3, Strategy::DropNewest);
    let mut refused = Vec::new();
    for i in 1..=6 {
        if let Put::Dropped(x) = q.put(i).await.unwrap() {
            refused.push(x);
        }
    }
    assert_eq!((refused, drain(&q)), (vec![4, 5, 6], vec![1, 2, 3]));
    assert_accounted(&q);

    let q = BackpressureQueue::new(3, Strategy::Error);
    let mut failed = Vec::new();
    for i in 1..=6 {
        match q.put(i).await {
            Ok(Put::Queued) => {}
            Err(PutError::Full(x)) => failed.push(x),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((failed, drain(&q)), (vec![4, 5, 6], vec![1, 2, 3]));
    assert_accounted(&q);
}

#[tokio::test]
async fn sample_keeps_every_nth_under_pressure() {
    let q = BackpressureQueue::new(3, Strategy::Sample { every: 2 });
    let mut outcomes = Vec::new();
    for i in 1..=7 {
        outcomes.push(q.put(i).await.unwrap());
    }
    // Under pressure: 4 refused, 5 kept (evicts 1), 6 refused, 7 kept (evicts 2).
    assert_eq!(
        outcomes,
        vec![
            Put::Queued,
            Put::Queued,
            Put::Queued,
            Put::Dropped(4),
            Put::QueuedEvicting(1),
            Put::Dropped(6),
            Put::QueuedEvicting(2)
        ]
    );
    assert_eq!(drain(&q), vec![3, 5, 7]);
    assert_accounted(&q);
}

#[tokio::test(start_paused = true)]
async fn block_waits_for_room_until_its_timeout() {
    let q = BackpressureQueue::new(
        2,
        Strategy::Block {
            timeout: Some(Duration::from_secs(1)),
        },
    );
    q.put(1).await.unwrap();
    q.put(2).await.unwrap();
    let start = tokio::time::Instant::now();
    assert_eq!(q.put(3).await, Err(PutError::Timeout(3)));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // A consumer frees room within the timeout: the producer gets in.
    let consumer = {
        let q = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            q.get().await
        })
    };
    assert_eq!(q.put(4).await, Ok(Put::Queued));
    assert_eq!(consumer.await.unwrap(), Some(1));
    assert_eq!(drain(&q), vec![2, 4]);
    let m = q.metrics();
    assert_eq!((m.producer_blocked, m.dropped), (2, 1));
    assert_accounted(&q);
}

#[tokio::test]
async fn close_refuses_new_items_and_lets_consumers_drain() {
    let q = BackpressureQueue::new(4, Strategy::Block { timeout: None });
    q.put("a").await.unwrap();
    q.close();
    assert_eq!(q.put("b").await, Err(PutError::Closed("b")));
    assert_eq!(q.get().await, Some("a"));
    assert_eq!(q.get().await, None);
    assert_eq!(q.get_blocking(), None);
    assert_accounted(&q);
}

/// Four blocking producer threads, two async consumers and one blocking consumer share a
/// small BLOCK queue: every item arrives exactly once, each producer's items in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_producers_and_consumers_lose_and_duplicate_nothing() {
    let q = BackpressureQueue::new(8, Strategy::Block { timeout: None });
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..1000u64 {
                    assert_eq!(q.put_blocking(p * 10_000 + i).unwrap(), Put::Queued);
                }
            })
        })
        .collect();
    let async_consumers: Vec<_> = (0..2)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(x) = q.get().await {
                    got.push(x);
                }
                got
            })
        })
        .collect();
    let blocking_consumer = {
        let q = q.clone();
        std::thread::spawn(move || std::iter::from_fn(|| q.get_blocking()).collect::<Vec<u64>>())
    };
    for p in producers {
        p.join().unwrap();
    }
    q.close();
    let mut all: Vec<Vec<u64>> = Vec::new();
    for c in async_consumers {
        all.push(c.await.unwrap());
    }
    all.push(blocking_consumer.join().unwrap());
    for consumer in &all {
        for p in 0..4 {
            let mine: Vec<u64> = consumer
                .iter()
                .copied()
                .filter(|x| x / 10_000 == p)
                .collect();
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "producer {p}'s items out of order at one consumer"
            );
        }
    }
    let mut flat: Vec<u64> = all.into_iter().flatten().collect();
    flat.sort();
    let expected: Vec<u64> = (0..4)
        .flat_map(|p| (0..1000).map(move |i| p * 10_000 + i))
        .collect();
    assert_eq!(flat, expected, "lost or duplicated items");
    assert_accounted(&q);
}
