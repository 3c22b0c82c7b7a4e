//! Prometheus text exposition of every policy's metrics, without a metrics dependency: a
//! service serves the rendered text on its own `/metrics`. (`mainstay serve` does not run
//! resilience policies and does not render these.)
//!
//! ```
//! use mainstay_resilience::{circuit_breaker::CircuitBreaker, metrics::Exposition};
//! let breaker = CircuitBreaker::builder().build().unwrap();
//! let text = Exposition::new().circuit_breaker("users", &breaker).render();
//! assert!(text.contains(r#"mainstay_circuit_breaker_state{name="users",state="closed"} 1"#));
//! ```

#[cfg(test)]
mod tests;

use crate::adaptive::AdaptiveLimit;
use crate::bulkhead::Bulkhead;
use crate::circuit_breaker::{CircuitBreaker, State};
use crate::queue::BackpressureQueue;
use std::collections::BTreeMap;
use std::fmt::Write;

struct Family {
    help: &'static str,
    kind: &'static str,
    samples: Vec<String>,
}

/// Collects samples from policies and renders them; each metric family gets its HELP and
/// TYPE lines once, however many instances are added.
#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<&'static str, Family>,
}

/// Escapes a label value (backslash, quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    fn sample(
        &mut self,
        family: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let f = self.families.entry(family).or_insert_with(|| Family {
            help,
            kind,
            samples: Vec::new(),
        });
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        f.samples
            .push(format!("{family}{{{}}} {value}", labels.join(",")));
    }

    /// Adds a circuit breaker's state, counters and window failure rate.
    pub fn circuit_breaker(&mut self, name: &str, breaker: &CircuitBreaker) -> &mut Self {
        let current = breaker.state();
        for (state, label) in [
            (State::Closed, "closed"),
            (State::Open, "open"),
            (State::HalfOpen, "half_open"),
            (State::Disabled, "disabled"),
            (State::ForcedOpen, "forced_open"),
        ] {
            let v = if state == current { 1.0 } else { 0.0 };
            self.sample(
                "mainstay_circuit_breaker_state",
                "1 for the breaker's current state",
                "gauge",
                &[("name", name), ("state", label)],
                v,
            );
        }
        let m = breaker.metrics();
        for (outcome, v) in [
            ("successful", m.successful),
            ("failed", m.failed),
            ("rejected", m.rejected),
            ("ignored", m.ignored),
        ] {
            self.sample(
                "mainstay_circuit_breaker_calls_total",
                "Calls by outcome",
                "counter",
                &[("name", name), ("outcome", outcome)],
                v as f64,
            );
        }
        self.sample(
            "mainstay_circuit_breaker_slow_calls_total",
            "Calls slower than the slow-call duration",
            "counter",
            &[("name", name)],
            m.slow as f64,
        );
        let rate = if m.window_calls == 0 {
            0.0
        } else {
            m.window_failures as f64 / m.window_calls as f64
        };
        self.sample(
            "mainstay_circuit_breaker_failure_rate",
            "Failure rate over the current window (0-1)",
            "gauge",
            &[("name", name)],
            rate,
        );
        self
    }

    /// Adds a bulkhead's active, waiting and rejected counts (labelled with its name).
    pub fn bulkhead(&mut self, bulkhead: &Bulkhead) -> &mut Self {
        let m = bulkhead.metrics();
        let name = bulkhead.name().to_string();
        let l = [("name", name.as_str())];
        self.sample(
            "mainstay_bulkhead_active",
            "Calls running in the compartment",
            "gauge",
            &l,
            m.active as f64,
        );
        self.sample(
            "mainstay_bulkhead_waiting",
            "Callers waiting for a slot",
            "gauge",
            &l,
            m.waiting as f64,
        );
        self.sample(
            "mainstay_bulkhead_max_concurrent",
            "Compartment capacity",
            "gauge",
            &l,
            m.max_concurrent as f64,
        );
        self.sample(
            "mainstay_bulkhead_rejected_total",
            "Callers refused",
            "counter",
            &l,
            m.rejected as f64,
        );
        self
    }

    /// Adds a backpressure queue's item counts and fill.
    pub fn queue<T>(&mut self, name: &str, queue: &BackpressureQueue<T>) -> &mut Self {
        let m = queue.metrics();
        for (event, v) in [
            ("received", m.received),
            ("processed", m.processed),
            ("dropped", m.dropped),
        ] {
            self.sample(
                "mainstay_queue_items_total",
                "Items by what happened to them",
                "counter",
                &[("name", name), ("event", event)],
                v as f64,
            );
        }
        self.sample(
            "mainstay_queue_producer_blocked_total",
            "Puts that waited for room",
            "counter",
            &[("name", name)],
            m.producer_blocked as f64,
        );
        self.sample(
            "mainstay_queue_fill_ratio",
            "Queued items over capacity (0-1)",
            "gauge",
            &[("name", name)],
            m.fill_ratio,
        );
        self
    }

    /// Adds an adaptive concurrency limit and its in-flight count.
    pub fn adaptive_limit(&mut self, name: &str, limit: &AdaptiveLimit) -> &mut Self {
        self.sample(
            "mainstay_adaptive_limit",
            "Current adaptive concurrency limit",
            "gauge",
            &[("name", name)],
            limit.limit() as f64,
        );
        self.sample(
            "mainstay_adaptive_in_flight",
            "Calls in flight under the adaptive limit",
            "gauge",
            &[("name", name)],
            limit.in_flight() as f64,
        );
        self
    }

    /// The text exposition (Prometheus format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for s in &f.samples {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}
