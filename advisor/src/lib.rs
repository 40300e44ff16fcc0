//! The warm-pool advisor's pure core: ipamd v1.23.1's pool manager as a deterministic model, with no I/O.
//!
//! - [`settings`]: the settings ipamd reads (`WARM_ENI_TARGET`, `WARM_IP_TARGET`, `MINIMUM_IP_TARGET`,
//!   `WARM_PREFIX_TARGET`, prefix delegation, `MAX_ENI`, `IP_COOLDOWN_PERIOD`), parsed with ipamd's own
//!   rules, and the instance's limits.
//! - [`calls`]: the EC2 APIs ipamd calls, named as `awscni_ec2api_req_count{fn}` names them.
//! - [`pool`]: one node's pool (ENIs, their /32 or /28 CIDRs, each address's cooldown), a 5 s tick that
//!   grows, shrinks and frees ENIs as ipamd does, and the EC2 calls each action makes.
//! - [`replay`]: settings replayed on a node's sampled history, next to what ipamd really held (the
//!   backtest).
//! - [`recommend`]: the grid of candidate settings and the rule that picks one, with its reason in words.
//!
//! docs/advisor.md describes the model and its limits; the oracles are upstream's two doc tables
//! and the pool tests of `ipamd_test.go`, table-tested in `pool/tests.rs`. Where upstream is not
//! deterministic (Go map order picks the ENI and address), the model packs: a new pod takes the
//! lowest-index ENI, CIDR and address that is free and out of cooldown; a leaving pod frees the
//! highest-index one. That reproduces the doc tables and is the lower bound of the ENIs a node holds.

#![forbid(unsafe_code)]

pub mod calls;
pub mod pool;
pub mod recommend;
pub mod replay;
pub mod settings;

pub use calls::{Calls, Ec2Api};
pub use pool::{Pool, Stats};
pub use recommend::{grid, recommend, Budget, Evaluated, Recommendation};
pub use replay::{observe, replay, Observed, Outcome, Sample};
pub use settings::{Limits, Settings, SettingsError};
