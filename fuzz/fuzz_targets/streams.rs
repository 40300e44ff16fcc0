//! Fuzz target `streams`: see `cni_metrics_e2e::invariants::streams` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_metrics_e2e::invariants::streams(data));
