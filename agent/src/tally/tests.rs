//! Table tests of the counting core: what each scrape folds in, the status and detail it leaves, what it
//! tells a person, and the report bookkeeping (numbering, pending, commits, resume).

use std::time::Duration;

use cni_metrics_proto::v1::{Resume, ResumePoint};

use super::*;

const START: f64 = 1_700_000_000.0;
const NOW_MS: i64 = 1_700_000_100_000;

fn page(start: f64, add: u64, assigned: u64) -> String {
    format!(
        "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n\
         # TYPE awscni_add_ip_req_count counter\nawscni_add_ip_req_count {add}\n\
         # TYPE awscni_assigned_ip_addresses gauge\nawscni_assigned_ip_addresses {assigned}\n"
    )
}

fn tally() -> Tally {
    Tally::new(DeltaConfig::default(), 1_000, std::time::Duration::from_secs(86_400), NOW_MS)
}

/// One scrape of a sequence and what it must leave.
struct Step {
    what: &'static str,
    fetched: Result<String, ScrapeError>,
    status: ScrapeStatus,
    /// The detail starts with this.
    detail: &'static str,
    notes: Vec<Note>,
    /// Whether the next delta carries a status/detail change.
    detail_changed: bool,
}

fn step(what: &'static str, fetched: Result<String, ScrapeError>, status: ScrapeStatus, detail: &'static str) -> Step {
    Step { what, fetched, status, detail, notes: Vec::new(), detail_changed: true }
}

#[test]
fn each_scrape_leaves_its_status_detail_and_notes() {
    let garbage = "this is not a metrics page\n".to_owned();
    let bad_line = format!("{}awscni_broken{{ 1\n", page(START, 5, 3));
    let steps = [
        Step {
            notes: vec![Note::Recovered(ScrapeStatus::Pending)],
            ..step("first good page", Ok(page(START, 5, 3)), ScrapeStatus::Ok, "")
        },
        Step { detail_changed: false, ..step("the same status again", Ok(page(START, 6, 3)), ScrapeStatus::Ok, "") },
        Step {
            notes: vec![Note::Failing(ScrapeStatus::Refused, "connection refused (ipamd not ready, or DISABLE_METRICS=true)".into())],
            ..step("ipamd refuses", Err(ScrapeError::Refused), ScrapeStatus::Refused, "connection refused")
        },
        Step {
            detail_changed: false,
            ..step("refused again: nothing new to tell", Err(ScrapeError::Refused), ScrapeStatus::Refused, "connection")
        },
        Step {
            notes: vec![Note::Failing(ScrapeStatus::Timeout, "no complete answer within 2s".into())],
            ..step("a timeout", Err(ScrapeError::Timeout(Duration::from_secs(2))), ScrapeStatus::Timeout, "no complete answer")
        },
        Step {
            notes: vec![
                Note::BadLines(1, String::new()),
                Note::Failing(
                    ScrapeStatus::Garbage,
                    format!("no usable awscni_ metric in {} bytes (1 bad lines, first at line 1: invalid sample value)", garbage.len()),
                ),
            ],
            ..step("garbage", Ok(garbage.clone()), ScrapeStatus::Garbage, "no usable awscni_ metric in 27 bytes")
        },
        Step {
            notes: vec![Note::BadLines(1, String::new()), Note::Recovered(ScrapeStatus::Garbage)],
            ..step("a good page with a bad line", Ok(bad_line), ScrapeStatus::Ok, "1 bad lines (line 7")
        },
        Step {
            notes: vec![Note::IpamdRestarted(START + 600.0)],
            ..step("ipamd restarted", Ok(page(START + 600.0, 1, 3)), ScrapeStatus::Ok, "")
        },
    ];
    let mut t = tally();
    for (i, s) in steps.into_iter().enumerate() {
        t.pending.clear();
        let folded = t.fold(s.fetched, &[], NOW_MS + i as i64 * 1000);
        assert_eq!(folded.status, s.status, "{}", s.what);
        assert!(folded.detail.starts_with(s.detail), "{}: {}", s.what, folded.detail);
        // A bad-lines note's description is the parser's; here only that it says something.
        let notes: Vec<Note> = folded
            .notes
            .into_iter()
            .map(|n| match n {
                Note::BadLines(n, first) if !first.is_empty() => Note::BadLines(n, String::new()),
                other => other,
            })
            .collect();
        assert_eq!(notes, s.notes, "{}", s.what);
        assert_eq!(t.pending.status_detail_changed, s.detail_changed, "{}", s.what);
        assert_eq!(t.scrape.status, s.status, "{}: the reports carry it", s.what);
    }
}

#[test]
fn a_failed_scrape_keeps_the_counts_and_the_next_good_one_counts_on() {
    let mut t = tally();
    t.fold(Ok(page(START, 10, 3)), &[], NOW_MS);
    // ipamd started 100 s before the first scrape (within the initial window): counted from its start.
    // (scrape, the add counter's running total after it)
    let steps: [(Result<String, ScrapeError>, f64); 4] = [
        (Err(ScrapeError::HttpStatus(500)), 10.0),
        (Ok("garbage\n".into()), 10.0),
        (Ok(page(START, 14, 3)), 14.0),
        (Err(ScrapeError::TooLarge(10)), 14.0),
    ];
    for (i, (fetched, want)) in steps.into_iter().enumerate() {
        let folded = t.fold(fetched, &[], NOW_MS + 1000 * (i as i64 + 1));
        let e = t.engine();
        let add = e.live_ids().into_iter().find(|id| e.info(*id).is_some_and(|s| s.key.name == "awscni_add_ip_req_count"));
        assert_eq!(add.and_then(|id| e.value(id)), Some(want), "step {i}: {:?}", folded.status);
        assert_eq!(folded.multi_card.is_some(), i == 1 || i == 2, "step {i}: a page was read");
    }
}

#[test]
fn reports_are_numbered_once_queued_and_commits_advance_once() {
    let mut t = tally();
    t.fold(Ok(page(START, 10, 3)), &[], NOW_MS);
    let snapshot = t.next_report(true);
    assert_eq!((snapshot.seq, snapshot.snapshot), (1, true));
    // A full queue: not numbered, still pending.
    assert!(!t.queue(snapshot.clone(), |_| false));
    assert_eq!(t.next_report(false).seq, 1, "the refused report's number is used again");
    assert!(!t.pending.defs.is_empty(), "what it carried is still pending");
    assert!(t.queue(snapshot, |_| true));
    assert!(t.pending.defs.is_empty() && t.pending.changed.is_empty(), "queued: nothing pending");
    assert_eq!(t.commits().backlog(), 1, "its counter total waits for a commit");
    t.fold(Ok(page(START, 12, 3)), &[], NOW_MS + 1000);
    let delta = t.next_report(false);
    assert_eq!((delta.seq, delta.snapshot, delta.ids.len()), (2, false, 1), "only the changed counter");
    assert!(t.queue(delta, |_| true));
    // (commit seq, advanced, committed seq after)
    for (seq, advanced, after) in [(1, true, 1), (1, false, 1), (0, false, 1), (2, true, 2), (9, true, 9)] {
        assert_eq!(t.commit(seq), advanced, "commit {seq}");
        assert_eq!(t.commits().committed_seq(), after, "commit {seq}");
    }
}

#[test]
fn subnets_are_pending_only_when_they_change() {
    let mut t = tally();
    let usage = vec![SubnetUsage { subnet_id: "subnet-1".into(), total_ips: 10.0, ..SubnetUsage::default() }];
    // (subnets, pending after)
    for (i, (subnets, pending)) in [(usage.clone(), true), (usage.clone(), false), (Vec::new(), true)].into_iter().enumerate() {
        t.pending.subnets_changed = false;
        t.set_subnets(subnets);
        assert_eq!(t.pending.subnets_changed, pending, "step {i}");
    }
}

#[test]
fn the_aggregators_resume_point_wins_over_the_state_files() {
    let point = |raw: f64| Resume {
        ipamd_start_time_seconds: START,
        points: vec![ResumePoint { name: "awscni_add_ip_req_count".into(), labels: Vec::new(), raw }],
    };
    let file = || {
        let key = crate::delta::SeriesKey { name: "awscni_add_ip_req_count".into(), labels: Vec::new() };
        Some(ResumePoints { ipamd_start_time: START, raw: [(key, 4.0)].into_iter().collect() })
    };
    // (the Welcome's resume, the file's, where counting resumed, the raw value it resumed from)
    let cases = [
        (Some(point(7.0)), file(), ResumeSource::Aggregator, Some(7.0)),
        (Some(point(7.0)), None, ResumeSource::Aggregator, Some(7.0)),
        (None, file(), ResumeSource::StateFile, Some(4.0)),
        (None, None, ResumeSource::Nowhere, None),
    ];
    for (i, (resume, from_file, from, raw)) in cases.into_iter().enumerate() {
        let mut t = tally();
        let welcome = Welcome { resume, started_unix_ms: NOW_MS, ..Welcome::default() };
        let resumed = t.resume(&welcome, from_file);
        assert_eq!(resumed.from, from, "case {i}");
        assert_eq!(resumed.points.and_then(|p| p.raw.values().next().copied()), raw, "case {i}");
    }
}

#[test]
fn status_details_are_plain_and_bounded() {
    assert_eq!(plain_detail("a\nb\tc"), "a b c");
    let long = "é".repeat(400);
    let d = plain_detail(&long);
    assert!(d.len() <= 512 && d.ends_with("..."), "{}", d.len());
}
