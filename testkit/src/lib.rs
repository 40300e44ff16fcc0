//! Test fixtures shared by the demo, the benchmarks and the tests; never part of a production binary.
//!
//! - [`sim`]: an ipamd simulator (pods come and go, counters grow, ipamd restarts) rendering the pages
//!   of four ipamd generations and the introspection JSON, with the lifetime truth tests compare to.
//! - [`fake_ipamd`]: [`FakeIpamd`], a real HTTP server serving a simulator, with failure modes.
//! - [`issuer`]: a ServiceAccount token issuer (signing keys, agent tokens) and [`JwksServer`], the
//!   API server's key publication on loopback, for the agent-authentication tests.
//! - The `cni-metrics-fake-ipamd` binary: one fake ipamd as its own process, driven over stdin, so a
//!   fault test can run it inside a node's network namespace.
#![forbid(unsafe_code)]

pub mod fake_ipamd;
pub mod issuer;
pub mod sim;

pub use fake_ipamd::{FakeIpamd, Mode};
pub use issuer::{Issuer, JwksServer};
pub use sim::{PageStyle, SimIpamd};
