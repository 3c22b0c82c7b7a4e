//! Integration tests of mainstay-lock against real servers (one test binary).
//! Run under `mainstay-testkit run -- …` to share servers; otherwise each test starts its own.

mod common;
mod conformance;
mod faults;
mod fence;
