//! Crash failpoints for fault-injection tests: abort the process at a named persistence
//! point, the way `kill -9` would, but at an exact place.
//!
//! Set `MAINSTAY_FAILPOINTS=name=N[,name=N...]` before the process starts: the `N`th time
//! (1-based) [`hit`] is called with `name`, the process aborts without unwinding, flushing
//! or running destructors. Unset (the normal case), [`hit`] costs one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Armed {
    after: u64,
    hits: AtomicU64,
}

fn table() -> &'static HashMap<String, Armed> {
    static TABLE: OnceLock<HashMap<String, Armed>> = OnceLock::new();
    TABLE.get_or_init(|| {
        std::env::var("MAINSTAY_FAILPOINTS")
            .map(|spec| parse(&spec))
            .unwrap_or_default()
    })
}

fn parse(spec: &str) -> HashMap<String, Armed> {
    spec.split(',')
        .filter_map(|part| {
            let (name, n) = part.trim().split_once('=')?;
            let after = n.trim().parse().ok().filter(|n| *n > 0)?;
            Some((
                name.trim().to_string(),
                Armed {
                    after,
                    hits: AtomicU64::new(0),
                },
            ))
        })
        .collect()
}

/// Counts a pass through the failpoint `name`; aborts the process on the armed pass.
pub fn hit(name: &str) {
    let table = table();
    if table.is_empty() {
        return;
    }
    if let Some(armed) = table.get(name) {
        if armed.hits.fetch_add(1, Ordering::SeqCst) + 1 == armed.after {
            eprintln!(
                "mainstay: failpoint {name} reached on pass {}: aborting",
                armed.after
            );
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_counts_and_skips_garbage() {
        let t = parse("saga.before_write=3, saga.after_write=1,bad,zero=0,x=y");
        assert_eq!(t.len(), 2);
        assert_eq!(t["saga.before_write"].after, 3);
        assert_eq!(t["saga.after_write"].after, 1);
    }
}
