//! How many agent streams this process can hold. Every agent keeps one TCP connection, and every
//! connection is an open file, so the open-file limit is the real ceiling: at start the aggregator raises
//! its soft limit to the hard one (as Go programs do) and, unless `--max-streams` is set, allows that many
//! streams less [`RESERVED_FILES`] for everything else (listeners, the HTTP endpoint, AWS clients, logs).
//! [`derive`] is pure and table-tested; [`raise_open_file_limit`] is the one system call.

/// Open files kept for what is not an agent stream: a few listeners, log files, AWS and API-server
/// connections, `/metrics` scrapes and consumer clients need far fewer.
pub const RESERVED_FILES: u64 = 256;

/// The effective stream limit and where it came from, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimit {
    pub max_streams: usize,
    /// The open-file limit after raising it, when known.
    pub open_files: Option<u64>,
    /// True when `--max-streams` was set; false when derived.
    pub from_flag: bool,
}

impl StreamLimit {
    /// Set by the flag above what the open files allow: connections past it will fail to be accepted.
    pub fn exceeds_open_files(&self) -> bool {
        self.from_flag && self.open_files.is_some_and(|f| self.max_streams as u64 > f.saturating_sub(RESERVED_FILES))
    }
}

/// Streams allowed when the open-file limit is unknown (a platform without rlimits).
pub const UNKNOWN_LIMIT_STREAMS: usize = 100_000;

/// The stream limit from the flag, else from the open-file limit.
pub fn derive(flag: Option<usize>, open_files: Option<u64>) -> StreamLimit {
    let max_streams = match (flag, open_files) {
        (Some(n), _) => n,
        (None, Some(files)) => usize::try_from(files.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX).max(1),
        (None, None) => UNKNOWN_LIMIT_STREAMS,
    };
    StreamLimit { max_streams: max_streams.min(tokio::sync::Semaphore::MAX_PERMITS), open_files, from_flag: flag.is_some() }
}

/// Raise the soft open-file limit to the hard limit; the limit now in force, or the error.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_follows_the_flag_or_the_open_files() {
        let table = [
            // (flag, open files, max streams, from flag, exceeds)
            (None, Some(20_000), 19_744, false, false),
            (None, Some(1_048_576), 1_048_320, false, false),
            (None, Some(1_024), 768, false, false),
            (None, Some(256), 1, false, false),
            (None, Some(10), 1, false, false),
            (None, None, UNKNOWN_LIMIT_STREAMS, false, false),
            (Some(5_000), Some(20_000), 5_000, true, false),
            (Some(30_000), Some(20_000), 30_000, true, true),
            (Some(30_000), None, 30_000, true, false),
            (None, Some(u64::MAX), tokio::sync::Semaphore::MAX_PERMITS, false, false),
        ];
        for (flag, files, want, from_flag, exceeds) in table {
            let l = derive(flag, files);
            assert_eq!((l.max_streams, l.from_flag, l.exceeds_open_files()), (want, from_flag, exceeds), "{flag:?} {files:?}");
        }
    }

    #[test]
    fn raising_gives_at_least_the_soft_limit() {
        let before = rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft).unwrap_or(0);
        assert!(raise_open_file_limit().is_ok_and(|now| now >= before));
    }
}
