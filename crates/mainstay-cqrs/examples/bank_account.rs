//! The seed's BankAccount as an aggregate: commands decide, events evolve the state, the
//! repository retries a command whose account changed under it, snapshots every 10
//! events, and answers "what was the balance at version N?".
//!
//! `cargo run -p mainstay-cqrs --example bank_account` (an embedded SQLite store in a
//! temp dir).

use mainstay_cqrs::{Aggregate, CqrsError, Repository};
use mainstay_eventstore::sqlite::SqliteEventStore;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct BankAccount {
    open: bool,
    owner: String,
    balance: i64,
}

enum Command {
    Open { owner: String },
    Deposit { amount: i64 },
    Withdraw { amount: i64 },
}

#[derive(Serialize, Deserialize)]
enum Event {
    Opened { owner: String },
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
}

#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("the account is already open")]
    AlreadyOpen,
    #[error("the account is not open")]
    NotOpen,
    #[error("amounts must be positive")]
    NotPositive,
    #[error("insufficient funds: balance {balance}, asked {amount}")]
    InsufficientFunds { balance: i64, amount: i64 },
}

impl Aggregate for BankAccount {
    const KIND: &'static str = "account";
    type Command = Command;
    type Event = Event;
    type Error = Refused;

    fn event_type(e: &Event) -> &'static str {
        match e {
            Event::Opened { .. } => "AccountOpened",
            Event::Deposited { .. } => "MoneyDeposited",
            Event::Withdrawn { .. } => "MoneyWithdrawn",
        }
    }

    fn handle(&self, c: &Command) -> Result<Vec<Event>, Refused> {
        match c {
            Command::Open { .. } if self.open => Err(Refused::AlreadyOpen),
            Command::Open { owner } => Ok(vec![Event::Opened {
                owner: owner.clone(),
            }]),
            _ if !self.open => Err(Refused::NotOpen),
            Command::Deposit { amount } | Command::Withdraw { amount } if *amount <= 0 => {
                Err(Refused::NotPositive)
            }
            Command::Deposit { amount } => Ok(vec![Event::Deposited { amount: *amount }]),
            Command::Withdraw { amount } if *amount > self.balance => {
                Err(Refused::InsufficientFunds {
                    balance: self.balance,
                    amount: *amount,
                })
            }
            Command::Withdraw { amount } => Ok(vec![Event::Withdrawn { amount: *amount }]),
        }
    }

    fn apply(&mut self, e: &Event) {
        match e {
            Event::Opened { owner } => {
                self.open = true;
                self.owner = owner.clone();
            }
            Event::Deposited { amount } => self.balance += amount,
            Event::Withdrawn { amount } => self.balance -= amount,
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(SqliteEventStore::open(dir.path().join("bank.db"))?);
    let accounts = Repository::<BankAccount>::new(store).with_snapshots_every(10);

    accounts
        .execute(
            "17",
            &Command::Open {
                owner: "ann".into(),
            },
        )
        .await?;
    accounts
        .execute("17", &Command::Deposit { amount: 100 })
        .await?;
    match accounts
        .execute("17", &Command::Withdraw { amount: 500 })
        .await
    {
        Err(CqrsError::Rejected(why)) => println!("refused: {why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // 8 tellers deposit 10 each, 5 times, at the same time: every deposit lands.
    let tellers: Vec<_> = (0..8)
        .map(|_| {
            let accounts = accounts.clone();
            tokio::spawn(async move {
                let mut retries = 0;
                for _ in 0..5 {
                    let done = accounts
                        .execute("17", &Command::Deposit { amount: 10 })
                        .await?;
                    retries += done.attempts - 1;
                }
                Ok::<u32, CqrsError<Refused>>(retries)
            })
        })
        .collect();
    let mut retries = 0;
    for t in tellers {
        retries += t.await??;
    }
    let now = accounts.load("17").await?;
    println!(
        "{} has {} at version {:?} ({retries} conflicting commands were retried)",
        now.state.owner, now.state.balance, now.version
    );
    assert_eq!(now.state.balance, 500);

    let then = accounts.load_at("17", 1).await?;
    println!("at version 1 the balance was {}", then.state.balance);
    assert_eq!(then.state.balance, 100);
    Ok(())
}
