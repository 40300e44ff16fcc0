//! Retry classification of AWS errors, one table for every call (PutMetricData, DescribeSubnets): transient
//! (retry), healing (hold and retry slowly until credentials, permissions or the clock are fixed) or
//! rejected (the request names bad data: bisect, drop only what is refused). The kind of error is one
//! bounded label ([`ErrorKind`]) for logs and self-metrics.

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient: try again after the backoff.
    Retryable,
    /// Nothing is wrong with the request's data; credentials, permissions or the clock must be fixed.
    /// Hold the data, retry with the longer backoff, say what to fix.
    Heal,
    /// Refuses particular data (datums): bisect and drop only what the service refuses.
    Rejected,
}

cni_metrics_proto::label_enum! {
    /// What kind of error an AWS call met: the `error_type` of the self-metrics.
    pub enum ErrorKind {
        Throttling => "throttling",
        Server => "server",
        Network => "network",
        Timeout => "timeout",
        InvalidParameter => "invalid_parameter",
        AccessDenied => "access_denied",
        ExpiredCredentials => "expired_credentials",
        ClockSkew => "clock_skew",
        Other => "other",
    }
}

/// Classify an error from its HTTP status and error code.
pub fn classify(status: Option<u16>, code: Option<&str>) -> (Retry, ErrorKind) {
    match code {
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" | "RequestThrottled") => {
            return (Retry::Retryable, ErrorKind::Throttling)
        }
        Some("InternalServiceError" | "InternalServiceFault" | "InternalFailure" | "ServiceUnavailable") => {
            return (Retry::Retryable, ErrorKind::Server)
        }
        Some("RequestTimeout" | "RequestTimeoutException") => return (Retry::Retryable, ErrorKind::Timeout),
        Some("InvalidParameterValue" | "InvalidParameterCombination" | "MissingParameter" | "MissingRequiredParameter") => {
            return (Retry::Rejected, ErrorKind::InvalidParameter)
        }
        Some(
            "AccessDenied"
            | "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "NotAuthorized"
            | "MissingAuthenticationToken"
            | "IncompleteSignature"
            | "OptInRequired"
            // EC2's (DescribeSubnets, --subnet-metrics)
            | "UnauthorizedOperation"
            | "AuthFailure",
        ) => return (Retry::Heal, ErrorKind::AccessDenied),
        Some("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => return (Retry::Heal, ErrorKind::ExpiredCredentials),
        Some("RequestExpired" | "SignatureDoesNotMatch" | "InvalidSignatureException" | "RequestTimeTooSkewed") => {
            return (Retry::Heal, ErrorKind::ClockSkew)
        }
        _ => {}
    }
    match status {
        Some(429) => (Retry::Retryable, ErrorKind::Throttling),
        Some(408) => (Retry::Retryable, ErrorKind::Timeout),
        Some(s) if s >= 500 => (Retry::Retryable, ErrorKind::Server),
        Some(401 | 403) => (Retry::Heal, ErrorKind::AccessDenied),
        // An error that names no datum is not the data's fault: hold it rather than drop it.
        Some(_) => (Retry::Heal, ErrorKind::Other),
        // No response at all: network, timeout, credentials not yet available.
        None => (Retry::Retryable, ErrorKind::Network),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification_table() {
        let cases = [
            (Some(400), Some("Throttling"), Retry::Retryable, ErrorKind::Throttling),
            (Some(400), Some("ThrottlingException"), Retry::Retryable, ErrorKind::Throttling),
            (Some(500), Some("InternalServiceError"), Retry::Retryable, ErrorKind::Server),
            (Some(503), None, Retry::Retryable, ErrorKind::Server),
            (Some(429), None, Retry::Retryable, ErrorKind::Throttling),
            (None, None, Retry::Retryable, ErrorKind::Network),
            (Some(400), Some("InvalidParameterValue"), Retry::Rejected, ErrorKind::InvalidParameter),
            (Some(400), Some("MissingParameter"), Retry::Rejected, ErrorKind::InvalidParameter),
            (Some(400), Some("InvalidParameterCombination"), Retry::Rejected, ErrorKind::InvalidParameter),
            (Some(403), Some("AccessDenied"), Retry::Heal, ErrorKind::AccessDenied),
            (Some(400), Some("AccessDeniedException"), Retry::Heal, ErrorKind::AccessDenied),
            (Some(403), Some("InvalidClientTokenId"), Retry::Heal, ErrorKind::AccessDenied),
            (Some(403), None, Retry::Heal, ErrorKind::AccessDenied),
            (Some(401), None, Retry::Heal, ErrorKind::AccessDenied),
            (Some(403), Some("ExpiredToken"), Retry::Heal, ErrorKind::ExpiredCredentials),
            (Some(400), Some("ExpiredTokenException"), Retry::Heal, ErrorKind::ExpiredCredentials),
            (Some(400), Some("RequestExpired"), Retry::Heal, ErrorKind::ClockSkew),
            (Some(403), Some("SignatureDoesNotMatch"), Retry::Heal, ErrorKind::ClockSkew),
            (Some(400), Some("RequestTimeout"), Retry::Retryable, ErrorKind::Timeout),
            (Some(408), None, Retry::Retryable, ErrorKind::Timeout),
            (Some(404), None, Retry::Heal, ErrorKind::Other),
            (Some(400), Some("SomethingNew"), Retry::Heal, ErrorKind::Other),
        ];
        for (status, code, retry, kind) in cases {
            assert_eq!(classify(status, code), (retry, kind), "{status:?} {code:?}");
        }
    }
}
