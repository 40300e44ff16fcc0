//! Node totals on multi-card instances. Since VPC CNI v1.20 ipamd keeps one datastore per network card
//! and each sets the same global gauges (`TotalIPs.Set(ds.total)`, `AssignedIPs.Set(ds.assigned)`,
//! `Enis.Set(len(ds.eniPool))` in `pkg/ipamd/datastore/data_store.go`), so with several cards the page
//! shows whichever card changed last. When introspection (read in the same tick) reports more than one
//! card, [`correct`] replaces those three page values with the sums over cards before the page is
//! folded; what the page said stays visible in the agent's self-metrics, with the difference.

use crate::introspect::CardTotals;
use crate::parse::Page;

/// Reads one total of a card.
type CardField = fn(&CardTotals) -> f64;

/// The page families the cards' sums replace, with the card field each one sums.
pub const CORRECTED: [(&str, CardField); 3] = [
    ("awscni_total_ip_addresses", |c| c.total_ips),
    ("awscni_assigned_ip_addresses", |c| c.assigned_ips),
    ("awscni_eni_allocated", |c| f64::from(c.enis)),
];

/// One corrected value: what the page said and the cards' sum that replaced it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Corrected {
    pub name: &'static str,
    pub page: f64,
    pub cards: f64,
}

/// With more than one card, replace the page's unlabelled totals by the cards' sums; returns what was
/// replaced (empty with zero or one card, or when the page lacks the family).
pub fn correct(page: &mut Page<'_>, cards: &[CardTotals]) -> Vec<Corrected> {
    if cards.len() < 2 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (name, field) in CORRECTED {
        let sum: f64 = cards.iter().map(field).sum();
        for s in page.samples.iter_mut().filter(|s| s.name == name && s.labels.is_empty()) {
            out.push(Corrected { name, page: s.value, cards: sum });
            s.value = sum;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse;

    const PAGE: &str = "awscni_total_ip_addresses 14\nawscni_assigned_ip_addresses 9\nawscni_eni_allocated 1\nawscni_ip_max 58\n";

    #[test]
    fn two_cards_give_the_node_totals() {
        let cards = [
            CardTotals { total_ips: 28.0, assigned_ips: 20.0, enis: 2, cooldown_ips: 0.0 },
            CardTotals { total_ips: 14.0, assigned_ips: 9.0, enis: 1, cooldown_ips: 0.0 },
        ];
        let mut page = parse(PAGE);
        let fixed = correct(&mut page, &cards);
        assert_eq!(
            fixed,
            vec![
                Corrected { name: "awscni_total_ip_addresses", page: 14.0, cards: 42.0 },
                Corrected { name: "awscni_assigned_ip_addresses", page: 9.0, cards: 29.0 },
                Corrected { name: "awscni_eni_allocated", page: 1.0, cards: 3.0 },
            ]
        );
        let value = |n: &str| page.samples.iter().find(|s| s.name == n).map(|s| s.value);
        assert_eq!((value("awscni_total_ip_addresses"), value("awscni_assigned_ip_addresses")), (Some(42.0), Some(29.0)));
        assert_eq!(value("awscni_ip_max"), Some(58.0), "other families untouched");
    }

    #[test]
    fn one_card_or_none_changes_nothing() {
        for cards in [&[][..], &[CardTotals { total_ips: 99.0, assigned_ips: 1.0, enis: 5, cooldown_ips: 0.0 }][..]] {
            let mut page = parse(PAGE);
            assert!(correct(&mut page, cards).is_empty());
            assert_eq!(page.samples.iter().find(|s| s.name == "awscni_total_ip_addresses").map(|s| s.value), Some(14.0));
        }
    }
}
