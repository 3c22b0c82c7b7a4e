//! Three-phase commit in deterministic simulation: the four cases the seed names, the
//! safety property over random crash schedules, and the partition hazard.

use mainstay_txn::threepc::sim::{Fault, Simulation, When};
use mainstay_txn::threepc::{Msg, Outcome, COORDINATOR};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(100);
use Outcome::{Aborted, Committed};

#[test]
fn no_failure_commits_everywhere() {
    let r = Simulation::new(1, &[true, true, true], TIMEOUT).run();
    assert_eq!(r.outcomes, vec![Some(Committed); 4], "{:#?}", r.trace);
}

#[test]
fn a_no_vote_aborts_everyone() {
    let r = Simulation::new(2, &[true, false, true], TIMEOUT).run();
    assert_eq!(r.outcomes, vec![Some(Aborted); 4], "{:#?}", r.trace);
}

#[test]
fn a_participant_that_fails_before_voting_makes_the_rest_abort() {
    let r = Simulation::new(3, &[true, true, true], TIMEOUT)
        .on(When::At(Duration::ZERO), vec![Fault::Crash(2)])
        .run();
    assert_eq!(r.outcomes[COORDINATOR], Some(Aborted), "{:#?}", r.trace);
    assert_eq!(r.live_participant_outcomes(), vec![Some(Aborted); 2]);
}

#[test]
fn coordinator_failure_after_precommit_participants_commit_on_timeout() {
    let r = Simulation::new(4, &[true, true, true], TIMEOUT)
        .on(
            When::AfterSend {
                from: COORDINATOR,
                to: 3,
                msg: Msg::PreCommit,
            },
            vec![Fault::Crash(COORDINATOR)],
        )
        .run();
    assert_eq!(r.outcomes[COORDINATOR], None, "it crashed before deciding");
    assert_eq!(
        r.live_participant_outcomes(),
        vec![Some(Committed); 3],
        "{:#?}",
        r.trace
    );
    // The non-blocking property: nobody waits for the coordinator to come back.
    assert!(r.trace.iter().any(|l| l.contains("decides Committed")));
}

#[test]
fn coordinator_failure_before_precommit_participants_abort_on_timeout() {
    let r = Simulation::new(5, &[true, true, true], TIMEOUT)
        .on(
            When::AfterSend {
                from: COORDINATOR,
                to: 3,
                msg: Msg::CanCommit,
            },
            vec![Fault::Crash(COORDINATOR)],
        )
        .run();
    assert_eq!(
        r.live_participant_outcomes(),
        vec![Some(Aborted); 3],
        "{:#?}",
        r.trace
    );
}

/// The hazard the seed warns about: the network splits after participant 1 got PreCommit
/// and before the others did. Participant 1 times out holding PreCommit and commits (the
/// coordinator's DoCommit also reaches it); 2 and 3 time out uncertain and abort.
#[test]
fn threepc_partition_splits_the_outcome() {
    let r = Simulation::new(6, &[true, true, true], TIMEOUT)
        .on(
            When::AfterSend {
                from: COORDINATOR,
                to: 1,
                msg: Msg::PreCommit,
            },
            vec![Fault::Partition(vec![COORDINATOR, 1], vec![2, 3])],
        )
        .run();
    assert_eq!(
        r.outcomes,
        vec![
            Some(Committed),
            Some(Committed),
            Some(Aborted),
            Some(Aborted)
        ],
        "{:#?}",
        r.trace
    );
    assert!(!r.consistent());
}

/// Safety under crash-stop failures and bounded delay (latency ≤ 10 ms ≪ 100 ms timeout):
/// over 500 seeded runs with random votes and up to two random crashes, every decision
/// agrees, and nobody commits unless everyone voted yes.
#[test]
fn random_crashes_never_split_the_outcome() {
    for seed in 0..500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.random_range(2..=5);
        let votes: Vec<bool> = (0..n).map(|_| rng.random_bool(0.85)).collect();
        let mut sim = Simulation::new(seed, &votes, TIMEOUT);
        for _ in 0..rng.random_range(0..=2) {
            let node = rng.random_range(0..=n);
            let at = Duration::from_micros(rng.random_range(0..250_000));
            sim = sim.on(When::At(at), vec![Fault::Crash(node)]);
        }
        let r = sim.run();
        assert!(
            r.consistent(),
            "seed {seed}: {:?}\n{:#?}",
            r.outcomes,
            r.trace
        );
        if r.outcomes.contains(&Some(Committed)) {
            assert!(
                votes.iter().all(|v| *v),
                "seed {seed}: committed despite a no vote"
            );
        }
        // Non-blocking: every live participant decides.
        assert!(
            r.live_participant_outcomes().iter().all(Option::is_some),
            "seed {seed}: a live participant never decided\n{:#?}",
            r.trace
        );
    }
}

/// With random partitions instead of crashes, the hazard is reachable: some seeds end
/// with a participant committed and another aborted. (A protocol that survived this would
/// contradict FLP; this test documents that 3PC does not.)
#[test]
fn random_partitions_can_split_the_outcome() {
    let mut split = 0;
    for seed in 0..500u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = 3;
        let at = Duration::from_micros(rng.random_range(0..40_000));
        let isolated = rng.random_range(1..=n);
        let others: Vec<usize> = (0..=n).filter(|x| *x != isolated).collect();
        let r = Simulation::new(seed, &[true; 3], TIMEOUT)
            .on(When::At(at), vec![Fault::Partition(vec![isolated], others)])
            .run();
        let live = r.live_participant_outcomes();
        if live.contains(&Some(Committed)) && live.contains(&Some(Aborted)) {
            split += 1;
        }
    }
    assert!(split > 0, "no partition schedule split the outcome");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let run = |seed| {
        Simulation::new(seed, &[true, true, true, true], TIMEOUT)
            .on(
                When::At(Duration::from_millis(7)),
                vec![Fault::Crash(COORDINATOR)],
            )
            .run()
            .trace
    };
    assert_eq!(run(42), run(42));
    assert_ne!(run(42), run(43));
}
