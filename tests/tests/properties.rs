//! The fuzz targets' invariants (`cni_metrics_e2e::invariants`) as property tests in `cargo test`:
//! every committed corpus file (`fuzz/corpus/<target>/`: simulator pages, upstream-style pages, crashes
//! found and fixed), then random and mutated inputs from a seed printed on failure
//! (`PROPERTY_SEED=… cargo test -p cni-metrics-e2e --test properties` replays it).

use std::path::PathBuf;

use cni_metrics_e2e::invariants;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = cni_metrics_e2e::repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).filter_map(|p| Some((p.clone(), std::fs::read(&p).ok()?))).collect())
        .unwrap_or_default();
    files.sort();
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    files
}

fn seed() -> u64 {
    let seed = std::env::var("PROPERTY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| fastrand::u64(..));
    eprintln!("property seed {seed} (rerun with PROPERTY_SEED={seed})");
    seed
}

/// `base` with a few bytes flipped, inserted or removed.
fn mutate(rng: &mut fastrand::Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.usize(1..8) {
        let at = rng.usize(..=v.len());
        match rng.u8(..3) {
            0 if at < v.len() => v[at] = rng.u8(..),
            1 => v.insert(at, *b"{}\"\\\n=,# \x00\xff".get(rng.usize(..12)).unwrap_or(&b'x')),
            _ if at < v.len() => {
                v.remove(at);
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, check: fn(&[u8]), extra_seeds: Vec<Vec<u8>>) {
    let mut seeds: Vec<Vec<u8>> = corpus(target)
        .into_iter()
        .map(|(path, data)| {
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "corpus file {} breaks an invariant", path.display());
            data
        })
        .collect();
    seeds.extend(extra_seeds);
    let mut rng = fastrand::Rng::with_seed(seed());
    for _ in 0..2_000 {
        let input = if rng.bool() {
            let base = &seeds[rng.usize(..seeds.len())];
            mutate(&mut rng, base)
        } else {
            (0..rng.usize(..512)).map(|_| rng.u8(..)).collect()
        };
        let r = std::panic::catch_unwind(|| check(&input));
        assert!(r.is_ok(), "{target}: an input breaks an invariant (bytes: {input:?})");
    }
}

#[test]
fn ipamd_pages_and_the_delta_engine() {
    let pages = PageStyle::ALL
        .iter()
        .map(|s| {
            let mut sim = SimIpamd::new(*s, 3, 1_700_000_000.0);
            (0..5).for_each(|_| sim.step());
            sim.render().into_bytes()
        })
        .collect();
    run("page_delta", invariants::page_and_delta, pages);
}

#[test]
fn introspection_json() {
    let mut sim = SimIpamd::new(PageStyle::PrefixDelegation, 3, 1_700_000_000.0);
    (0..5).for_each(|_| sim.step());
    run("introspection", invariants::introspection, vec![sim.render_enis().into_bytes()]);
}

#[test]
fn agent_message_sequences_on_several_streams() {
    run("streams", invariants::streams, Vec::new());
    // The inputs reach state: over the corpus, reports are applied (not all refused at the door).
    let applied: usize = corpus("streams").iter().map(|(_, d)| invariants::streams_applied(d)).sum();
    assert!(applied > 0, "no corpus input applied a report");
}

#[test]
fn duration_and_switch_flags() {
    run("flags", invariants::flags, Vec::new());
}
