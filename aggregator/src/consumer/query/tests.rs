//! Table tests of ListNodes queries: orders, filters, pages cut by key, tokens.

use std::time::Instant;

use cni_metrics_proto::v1::{ListNodesRequest, NodeOrder, ScrapeStatus};

use super::*;
use crate::consumer::testing::{join, secs, set, state};

fn names(p: &Page) -> Vec<&str> {
    p.nodes.iter().map(|n| n.name.as_str()).collect()
}

/// Every page of `r`, following the tokens.
fn all_pages(st: &ClusterState, mut r: ListNodesRequest, now: Instant) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    loop {
        let q = NodeQuery::from_request(&r).expect("valid query");
        let p = q.page(st, now);
        pages.push(p.nodes.iter().map(|n| n.name.clone()).collect());
        match p.next {
            Some(k) => r.page_token = q.encode(&k),
            None => return pages,
        }
        assert!(pages.len() < 100, "pages end");
    }
}

#[test]
fn orders_and_filters() {
    let t0 = Instant::now();
    let mut st = state();
    // name, zone, assigned of max 30
    for (name, zone, assigned) in [("d", "a", 10.0), ("b", "b", 28.0), ("a", "a", 29.0), ("c", "b", 1.0), ("e", "a", 28.0)] {
        join(&mut st, name, zone, assigned, 30.0, t0);
    }
    let s = st.node("c").map(|n| n.session()).unwrap_or_default();
    set(&mut st, "c", s, 2, 1.0, ScrapeStatus::Timeout, t0 + secs(1));
    let now = t0 + secs(1);
    let page = |r: ListNodesRequest| NodeQuery::from_request(&r).expect("valid").page(&st, now);
    let cases: Vec<(&str, ListNodesRequest, Vec<&str>, usize)> = vec![
        ("by name", ListNodesRequest::default(), vec!["a", "b", "c", "d", "e"], 5),
        (
            "worst headroom first, ties by name",
            ListNodesRequest { order: NodeOrder::IpHeadroom as i32, ..Default::default() },
            vec!["a", "b", "e", "d", "c"],
            5,
        ),
        (
            "oldest report first",
            ListNodesRequest { order: NodeOrder::LastReport as i32, ..Default::default() },
            vec!["a", "b", "d", "e", "c"],
            5,
        ),
        ("one zone", ListNodesRequest { availability_zones: vec!["b".into()], ..Default::default() }, vec!["b", "c"], 2),
        (
            "headroom at most 2",
            ListNodesRequest { max_ip_headroom: Some(2.0), order: NodeOrder::IpHeadroom as i32, ..Default::default() },
            vec!["a", "b", "e"],
            3,
        ),
        ("stale only", ListNodesRequest { stale: true, ..Default::default() }, vec!["c"], 1),
        ("by status", ListNodesRequest { statuses: vec![ScrapeStatus::Timeout as i32], ..Default::default() }, vec!["c"], 1),
        ("named nodes", ListNodesRequest { nodes: vec!["e".into(), "zz".into(), "a".into()], ..Default::default() }, vec!["a", "e"], 2),
        (
            "filters together",
            ListNodesRequest { availability_zones: vec!["a".into()], max_ip_headroom: Some(5.0), ..Default::default() },
            vec!["a", "e"],
            2,
        ),
        ("page size", ListNodesRequest { page_size: 2, ..Default::default() }, vec!["a", "b"], 5),
    ];
    for (what, r, want, total) in cases {
        let p = page(r);
        assert_eq!(names(&p), want, "{what}");
        assert_eq!(p.total, total, "{what}: total");
    }
    let low = page(ListNodesRequest { low_on_ips: true, ..Default::default() });
    assert!(!low.nodes.is_empty() && low.nodes.iter().all(|n| n.low_on_ips), "low on IPs filter");
}

#[test]
fn pages_cover_every_node_once_while_nodes_change() {
    let t0 = Instant::now();
    let mut st = state();
    for i in 0..50 {
        join(&mut st, &format!("n{i:02}"), "a", f64::from(i % 7), 30.0, t0);
    }
    for order in [NodeOrder::Name, NodeOrder::IpHeadroom, NodeOrder::LastReport] {
        let r = ListNodesRequest { page_size: 7, order: order as i32, ..Default::default() };
        let pages = all_pages(&st, r.clone(), t0);
        assert_eq!(pages.len(), 8, "{order:?}: 50 nodes in pages of 7");
        let mut seen: Vec<String> = pages.concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 50, "{order:?}: every node once");

        // A node that moves ahead of the cursor between pages is not listed twice, none is skipped.
        let q = NodeQuery::from_request(&r).expect("valid");
        let first = q.page(&st, t0);
        let Some(next) = first.next else { panic!("more pages") };
        let mut r2 = r.clone();
        r2.page_token = q.encode(&next);
        let listed: Vec<String> = first.nodes.iter().map(|n| n.name.clone()).collect();
        let moved = &listed[0];
        let s = st.node(moved).map(|n| n.session()).unwrap_or_default();
        set(&mut st, moved, s, 2, 29.0, ScrapeStatus::Ok, t0 + secs(1));
        let rest = all_pages(&st, r2, t0 + secs(1)).concat();
        let mut all: Vec<String> = listed.iter().cloned().chain(rest).collect();
        let unique = {
            let mut u = all.clone();
            u.sort();
            u.dedup();
            u.len()
        };
        // The moved node may appear a second time only when its key moved past the cursor (it is then
        // a different position, as in any keyset pager); with order by name it never does.
        if order == NodeOrder::Name {
            assert_eq!(all.len(), 50, "{order:?}");
        }
        assert_eq!(unique, 50, "{order:?}: nobody skipped");
        all.clear();
        set(&mut st, moved, s, 3, 0.0, ScrapeStatus::Ok, t0 + secs(1));
    }
}

#[test]
fn pages_stay_under_the_byte_budget() {
    let t0 = Instant::now();
    let mut st = state();
    // 6,000 nodes with 200-character names: 5,000 of them would be about 1.2 MB.
    for i in 0..6000 {
        join(&mut st, &format!("{}-{i:05}", "x".repeat(194)), "a", 1.0, 30.0, t0);
    }
    let q = NodeQuery::from_request(&ListNodesRequest::default()).expect("valid");
    let p = q.page(&st, t0);
    let bytes: usize = p.nodes.iter().map(|n| n.encoded_len() + 8).sum();
    assert!(bytes <= PAGE_BYTES, "{bytes} bytes");
    assert!(p.nodes.len() > 3000 && p.nodes.len() < 5000, "{} nodes", p.nodes.len());
    assert!(p.next.is_some(), "more follow");
    assert_eq!(p.total, 6000);
}

#[test]
fn bad_requests_and_tokens_are_refused() {
    let q = NodeQuery::from_request(&ListNodesRequest { page_size: 2, ..Default::default() }).expect("valid");
    let good = q.encode(&Key { rank: 0, name: "ip-10-0-0-1".into() });
    let cases: Vec<(&str, ListNodesRequest, QueryError)> = vec![
        ("unknown order", ListNodesRequest { order: 9, ..Default::default() }, QueryError::UnknownOrder(9)),
        ("unknown status", ListNodesRequest { statuses: vec![42], ..Default::default() }, QueryError::UnknownStatus(42)),
        ("NaN headroom", ListNodesRequest { max_ip_headroom: Some(f64::NAN), ..Default::default() }, QueryError::BadHeadroom),
        ("garbage token", ListNodesRequest { page_token: "not a token".into(), ..Default::default() }, QueryError::BadToken),
        ("odd hex", ListNodesRequest { page_token: format!("{good}0"), page_size: 2, ..Default::default() }, QueryError::BadToken),
        (
            "not UTF-8",
            ListNodesRequest { page_token: format!("{}ff", &good[..32]), page_size: 2, ..Default::default() },
            QueryError::BadToken,
        ),
        ("too long", ListNodesRequest { page_token: "0".repeat(4096), ..Default::default() }, QueryError::BadToken),
        (
            "another order",
            ListNodesRequest { page_token: good.clone(), order: NodeOrder::IpHeadroom as i32, ..Default::default() },
            QueryError::TokenMismatch,
        ),
        ("another filter", ListNodesRequest { page_token: good.clone(), stale: true, ..Default::default() }, QueryError::TokenMismatch),
    ];
    for (what, r, want) in cases {
        assert_eq!(NodeQuery::from_request(&r).err(), Some(want), "{what}");
    }
    // The page size is not part of the query: a client may change it between pages.
    let again = NodeQuery::from_request(&ListNodesRequest { page_token: good, page_size: 9, ..Default::default() });
    assert_eq!(again.ok().and_then(|q| q.after).map(|k| k.name), Some("ip-10-0-0-1".to_owned()));
}

#[test]
fn ranks_order_as_numbers_with_unknown_last() {
    let vals = [Some(-3.5), Some(-0.0), Some(0.0), Some(1.0), Some(2.5), Some(1e9), None];
    let rank = |v: Option<f64>| v.map_or(u64::MAX, crate::state::order_key);
    let ranks: Vec<u64> = vals.iter().map(|v| rank(*v)).collect();
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    assert!(rank(Some(-1.0)) < rank(Some(-0.5)));
}

#[test]
fn nodes_that_leave_leave_the_name_order() {
    let t0 = Instant::now();
    let mut st = state();
    let mut sessions = Vec::new();
    for i in 0..10 {
        sessions.push(join(&mut st, &format!("n{i}"), "a", 1.0, 30.0, t0));
    }
    assert!(st.goodbye("n3", sessions[3]));
    // n7 goes silent past its TTL (3 × its 1 s interval); the others keep reporting.
    for (i, s) in sessions.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 7) {
        set(&mut st, &format!("n{i}"), *s, 2, 1.0, ScrapeStatus::Ok, t0 + secs(3));
    }
    st.expire(t0 + secs(4));
    let by_name: Vec<String> = all_pages(&st, ListNodesRequest { page_size: 3, ..Default::default() }, t0 + secs(4)).concat();
    assert_eq!(by_name, ["n0", "n1", "n2", "n4", "n5", "n6", "n8", "n9"]);
    join(&mut st, "n3", "a", 1.0, 30.0, t0 + secs(4));
    let q = NodeQuery::from_request(&ListNodesRequest::default()).expect("valid");
    assert_eq!(q.page(&st, t0 + secs(4)).nodes.len(), 9, "a node that comes back is listed again");
}
