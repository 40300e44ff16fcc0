//! Fuzz target `flags`: see `cni_metrics_e2e::invariants::flags` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_metrics_e2e::invariants::flags(data));
