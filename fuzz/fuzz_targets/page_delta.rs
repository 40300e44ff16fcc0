//! Fuzz target `page_delta`: see `cni_metrics_e2e::invariants::page_and_delta` for the invariants it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cni_metrics_e2e::invariants::page_and_delta(data));
