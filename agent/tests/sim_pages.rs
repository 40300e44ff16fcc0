//! The simulator's pages read cleanly with the agent's own parser and introspection reader, so every
//! test and benchmark built on them starts from pages the agent accepts.

use cni_metrics_agent::introspect::{parse_enis, Cooldown};
use cni_metrics_agent::parse::parse;
use cni_metrics_testkit::sim::{PageStyle, SimIpamd};

#[test]
fn every_style_renders_a_clean_realistic_page() {
    for style in PageStyle::ALL {
        let mut sim = SimIpamd::new(style, 7, 1_700_000_000.0);
        for _ in 0..20 {
            sim.step();
        }
        let text = sim.render();
        let page = parse(&text);
        assert_eq!(page.bad_lines, 0, "{style:?}: {:?}", page.first_errors);
        assert!((6_000..20_000).contains(&text.len()), "{style:?}: {} bytes", text.len());
        let assigned = page.samples.iter().find(|s| s.name == "awscni_assigned_ip_addresses").map(|s| s.value);
        assert_eq!(assigned, Some(sim.assigned as f64));
    }
}

#[test]
fn introspection_page_matches_the_node() {
    for style in [PageStyle::Modern, PageStyle::PrefixDelegation] {
        let mut sim = SimIpamd::new(style, 3, 1_700_000_000.0);
        for _ in 0..10 {
            sim.step();
        }
        sim.cooling = 3;
        let v: serde_json::Value = serde_json::from_str(&sim.render_enis()).unwrap_or_default();
        let usage = parse_enis(&v, &Cooldown::now(std::time::Duration::from_secs(30))).unwrap_or_default();
        assert_eq!(usage.len(), 1, "{style:?}");
        assert_eq!((usage[0].total_ips, usage[0].assigned_ips), (sim.total_ips() as f64, sim.assigned as f64), "{style:?}");
        // The addresses the last departures freed, cooling as the simulator says.
        assert!(sim.cooling_ips() > 0, "{style:?}: no free slot for cooling addresses");
        assert_eq!(usage[0].cooldown_ips, sim.cooling_ips() as f64, "{style:?}");
    }
}
