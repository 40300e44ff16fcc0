//! The label value of each ipamd scrape status (`scrape_status` and `status` labels on both binaries'
//! pages): short snake case, stable, bounded by the proto enum.

use crate::v1::ScrapeStatus;

/// The label value of scrape status `s`.
pub fn status_label(s: ScrapeStatus) -> &'static str {
    match s {
        ScrapeStatus::Ok => "ok",
        ScrapeStatus::Refused => "refused",
        ScrapeStatus::Timeout => "timeout",
        ScrapeStatus::HttpError => "http_error",
        ScrapeStatus::TooLarge => "too_large",
        ScrapeStatus::Garbage => "garbage",
        ScrapeStatus::Unreachable => "unreachable",
        ScrapeStatus::Pending => "pending",
    }
}
