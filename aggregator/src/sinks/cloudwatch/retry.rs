//! Retry classification of AWS errors (PutMetricData; DescribeSubnets uses the same table): transient (retry), healing (hold and retry slowly until
//! credentials, permissions or the clock are fixed) or rejected (bisect, drop only the refused datums).

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transient: try again after the backoff.
    Retryable,
    /// Nothing is wrong with the datums; credentials, permissions or the clock must be fixed. Hold the
    /// backlog, retry with the longer backoff, report not ready.
    Heal,
    /// Refuses particular datums: bisect and drop only what CloudWatch refuses.
    Rejected,
}

/// Classify an error from its HTTP status and error code (bounded label in the second field).
pub fn classify(status: Option<u16>, code: Option<&str>) -> (Retry, &'static str) {
    match code {
        Some("Throttling" | "ThrottlingException" | "RequestLimitExceeded" | "TooManyRequestsException" | "RequestThrottled") => {
            return (Retry::Retryable, "throttling")
        }
        Some("InternalServiceError" | "InternalServiceFault" | "InternalFailure" | "ServiceUnavailable") => {
            return (Retry::Retryable, "server")
        }
        Some("RequestTimeout" | "RequestTimeoutException") => return (Retry::Retryable, "timeout"),
        Some("InvalidParameterValue" | "InvalidParameterCombination" | "MissingParameter" | "MissingRequiredParameter") => {
            return (Retry::Rejected, "invalid_parameter")
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
        ) => return (Retry::Heal, "access_denied"),
        Some("ExpiredToken" | "ExpiredTokenException" | "TokenRefreshRequired") => return (Retry::Heal, "expired_credentials"),
        Some("RequestExpired" | "SignatureDoesNotMatch" | "InvalidSignatureException" | "RequestTimeTooSkewed") => {
            return (Retry::Heal, "clock_skew")
        }
        _ => {}
    }
    match status {
        Some(429) => (Retry::Retryable, "throttling"),
        Some(408) => (Retry::Retryable, "timeout"),
        Some(s) if s >= 500 => (Retry::Retryable, "server"),
        Some(401 | 403) => (Retry::Heal, "access_denied"),
        // An error that names no datum is not the data's fault: hold it rather than drop it.
        Some(_) => (Retry::Heal, "other"),
        // No response at all: network, timeout, credentials not yet available.
        None => (Retry::Retryable, "network"),
    }
}

/// What an operator has to fix for a healing error (logged and shown by `/readyz`).
pub fn heal_hint(kind: &str) -> &'static str {
    match kind {
        "access_denied" => {
            "CloudWatch refuses the aggregator's credentials: grant cloudwatch:PutMetricData (deploy/iam-policy.json) to the role the \
             aggregator runs as, and check the IRSA annotation (eks.amazonaws.com/role-arn) on its ServiceAccount or its EKS Pod \
             Identity association"
        }
        "expired_credentials" => {
            "the aggregator's AWS credentials expired and were not refreshed: check the projected IRSA token or the Pod Identity \
             agent, and the role's trust policy"
        }
        "clock_skew" => {
            "CloudWatch says the request is expired or its signature does not match: check the node's clock (NTP) and the credentials"
        }
        _ => "CloudWatch refuses every request with an error that names no datum: see the error logged with it",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_classification_table() {
        let cases = [
            (Some(400), Some("Throttling"), Retry::Retryable, "throttling"),
            (Some(400), Some("ThrottlingException"), Retry::Retryable, "throttling"),
            (Some(500), Some("InternalServiceError"), Retry::Retryable, "server"),
            (Some(503), None, Retry::Retryable, "server"),
            (Some(429), None, Retry::Retryable, "throttling"),
            (None, None, Retry::Retryable, "network"),
            (Some(400), Some("InvalidParameterValue"), Retry::Rejected, "invalid_parameter"),
            (Some(400), Some("MissingParameter"), Retry::Rejected, "invalid_parameter"),
            (Some(400), Some("InvalidParameterCombination"), Retry::Rejected, "invalid_parameter"),
            (Some(403), Some("AccessDenied"), Retry::Heal, "access_denied"),
            (Some(400), Some("AccessDeniedException"), Retry::Heal, "access_denied"),
            (Some(403), Some("InvalidClientTokenId"), Retry::Heal, "access_denied"),
            (Some(403), None, Retry::Heal, "access_denied"),
            (Some(401), None, Retry::Heal, "access_denied"),
            (Some(403), Some("ExpiredToken"), Retry::Heal, "expired_credentials"),
            (Some(400), Some("ExpiredTokenException"), Retry::Heal, "expired_credentials"),
            (Some(400), Some("RequestExpired"), Retry::Heal, "clock_skew"),
            (Some(403), Some("SignatureDoesNotMatch"), Retry::Heal, "clock_skew"),
            (Some(400), Some("RequestTimeout"), Retry::Retryable, "timeout"),
            (Some(408), None, Retry::Retryable, "timeout"),
            (Some(404), None, Retry::Heal, "other"),
            (Some(400), Some("SomethingNew"), Retry::Heal, "other"),
        ];
        for (status, code, retry, kind) in cases {
            assert_eq!(classify(status, code), (retry, kind), "{status:?} {code:?}");
        }
    }
}
