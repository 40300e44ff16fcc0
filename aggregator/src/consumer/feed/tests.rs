//! Table tests of the change feed's pure parts: pending changes and picture coverage.

use std::sync::Arc;

use cni_metrics_proto::v1::NodeView;

use super::*;

fn v(name: &str, headroom: f64) -> NodeView {
    NodeView { name: name.into(), ip_headroom: headroom, ..NodeView::default() }
}

#[test]
fn pending_keeps_each_nodes_latest_change() {
    let mut p = Pending::default();
    p.merge(&[v("a", 1.0), v("b", 2.0)], &[], |_| false);
    p.merge(&[v("a", 3.0)], &[Arc::from("b"), Arc::from("c")], |_| false);
    // Removed then back within one broadcast: the view wins (removals apply first).
    p.merge(&[v("c", 4.0)], &[Arc::from("c")], |_| false);
    p.merge(&[v("z", 9.0)], &[], |n| n == "z");
    let updates = p.drain(7, ClusterView::default());
    assert_eq!(updates.len(), 1);
    let u = &updates[0];
    let got: Vec<(&str, f64)> = u.nodes.iter().map(|n| (n.name.as_str(), n.ip_headroom)).collect();
    assert_eq!(got, vec![("a", 3.0), ("c", 4.0)]);
    assert_eq!(u.removed_nodes, vec!["b".to_owned()]);
    assert!(!u.more && u.cluster.is_some() && u.version == 7);
    assert!(p.drain(8, ClusterView::default())[0].nodes.is_empty(), "drained");
}

#[test]
fn a_large_change_set_is_split_and_the_cluster_goes_last() {
    let mut p = Pending::default();
    let views: Vec<NodeView> = (0..2500).map(|i| v(&format!("n{i:05}"), 1.0)).collect();
    let gone: Vec<Arc<str>> = (0..10).map(|i| Arc::from(format!("gone{i}"))).collect();
    p.merge(&views, &gone, |_| false);
    let updates = p.drain(3, ClusterView::default());
    assert_eq!(updates.len(), 3, "2,510 entries in pages of {PAGE_NODES}");
    assert!(updates[..2].iter().all(|u| u.more && u.cluster.is_none()));
    assert!(!updates[2].more && updates[2].cluster.is_some());
    let nodes: usize = updates.iter().map(|u| u.nodes.len()).sum();
    let removed: usize = updates.iter().map(|u| u.removed_nodes.len()).sum();
    assert_eq!((nodes, removed), (2500, 10));
}

#[test]
fn a_page_forgets_the_pending_changes_of_its_range() {
    let mut p = Pending::default();
    p.merge(&[v("a", 1.0), v("c", 1.0), v("e", 1.0)], &[Arc::from("d")], |_| false);
    p.forget(Some("a"), Some("d"));
    let names: Vec<String> = p.drain(1, ClusterView::default())[0].nodes.iter().map(|n| n.name.clone()).collect();
    assert_eq!(names, vec!["a".to_owned(), "e".to_owned()], "c and the removal of d are in the page");
    p.merge(&[v("x", 1.0)], &[], |_| false);
    p.forget(Some("e"), None);
    assert!(p.drain(2, ClusterView::default())[0].nodes.is_empty(), "the last page covers to the end");
}

#[test]
fn the_picture_covers_names_as_of_their_page() {
    let mut pic = Picture::default();
    assert!(!pic.covers("a", 1), "nothing paged yet");
    pic.paged(Some("m".into()), 10);
    // (.., m] at version 10; beyond m not yet paged.
    let cases = [("a", 9, true), ("m", 10, true), ("m", 11, false), ("n", 1, false)];
    for (name, version, want) in cases {
        assert_eq!(pic.covers(name, version), want, "{name} at {version}");
    }
    pic.paged(None, 20);
    assert!(pic.done);
    let cases = [("a", 10, true), ("a", 11, false), ("n", 20, true), ("zzz", 21, false)];
    for (name, version, want) in cases {
        assert_eq!(pic.covers(name, version), want, "{name} at {version}");
    }
}
