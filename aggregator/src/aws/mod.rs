//! What both AWS callers share (the CloudWatch sink and the subnet refresher): the SDK configuration
//! (default credential chain, the SDK's own retries off so every attempt is ours and counted, bounded
//! timeouts), and one classification of failed calls ([`retry`]) into what to do next and a bounded kind.

pub mod retry;

use std::time::Duration;

use aws_sdk_cloudwatch::config::http::HttpResponse;
use aws_sdk_cloudwatch::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

pub use retry::{classify, ErrorKind, Retry};

/// `serve`'s AWS flag, shared by CloudWatch and the EC2 refreshers.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "AWS")]
pub struct AwsArgs {
    /// AWS region of CloudWatch and EC2 (blank: unset; then the agents' region, else the SDK chain).
    #[arg(long, env = "AWS_REGION", default_value = "", hide_default_value = true, value_parser = cni_metrics_proto::flags::non_blank::<String>)]
    pub region: cni_metrics_proto::flags::NonBlank<String>,
}

/// The SDK configuration from the default chain (env, IRSA web identity, EKS Pod Identity, profile,
/// IMDS), with the SDK's retries off and each attempt bounded by `attempt_timeout`.
pub async fn sdk_config(region: Option<String>, attempt_timeout: Duration) -> aws_config::SdkConfig {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    let timeouts = TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).operation_attempt_timeout(attempt_timeout).build();
    let mut loader =
        aws_config::defaults(aws_config::BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(timeouts);
    if let Some(r) = region {
        loader = loader.region(aws_config::Region::new(r));
    }
    loader.load().await
}

/// A failed AWS call, classified: what to do next, the kind of error, and the words for the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {code}: {message}")]
pub struct AwsError {
    pub retry: Retry,
    pub kind: ErrorKind,
    pub operation: &'static str,
    /// The service's error code, else `HTTP <status>`, else `no response`.
    pub code: String,
    pub message: String,
}

impl AwsError {
    /// Classify an SDK error of `operation` (any AWS service: they share the SDK's error type).
    pub fn of<E>(operation: &'static str, e: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (status, code, message) = match e {
            SdkError::ServiceError(s) => {
                (Some(s.raw().status().as_u16()), s.err().code().map(str::to_owned), s.err().message().unwrap_or("").to_owned())
            }
            SdkError::ResponseError(r) => (Some(r.raw().status().as_u16()), None, "unreadable response".to_owned()),
            other => (None, None, DisplayErrorContext(other).to_string()),
        };
        let (retry, kind) = classify(status, code.as_deref());
        let kind = if matches!(e, SdkError::TimeoutError(_)) { ErrorKind::Timeout } else { kind };
        let code = code.unwrap_or_else(|| status.map_or_else(|| "no response".to_owned(), |s| format!("HTTP {s}")));
        Self { retry, kind, operation, code, message }
    }

    /// The attempt took longer than its bound (our own timeout around the SDK call).
    pub fn timed_out(operation: &'static str) -> Self {
        Self {
            retry: Retry::Retryable,
            kind: ErrorKind::Timeout,
            operation,
            code: "no response".to_owned(),
            message: "attempt timed out".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudwatch::error::ErrorMetadata;
    use aws_sdk_cloudwatch::operation::put_metric_data::PutMetricDataError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    use super::*;

    fn service(status: u16, code: Option<&str>) -> SdkError<PutMetricDataError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message("refused");
        if let Some(c) = code {
            meta = meta.code(c);
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).expect("a status code"), SdkBody::empty());
        SdkError::service_error(PutMetricDataError::generic(meta.build()), raw)
    }

    #[test]
    fn sdk_errors_are_classified_and_said_in_words() {
        // (error, retry, kind, as logged)
        let cases: [(SdkError<PutMetricDataError, HttpResponse>, Retry, ErrorKind, &str); 4] = [
            (service(400, Some("Throttling")), Retry::Retryable, ErrorKind::Throttling, "PutMetricData: Throttling: refused"),
            (service(403, None), Retry::Heal, ErrorKind::AccessDenied, "PutMetricData: HTTP 403: refused"),
            (
                service(400, Some("InvalidParameterValue")),
                Retry::Rejected,
                ErrorKind::InvalidParameter,
                "PutMetricData: InvalidParameterValue: refused",
            ),
            (SdkError::timeout_error("slow"), Retry::Retryable, ErrorKind::Timeout, "PutMetricData: no response: "),
        ];
        for (e, retry, kind, said) in cases {
            let got = AwsError::of("PutMetricData", &e);
            assert_eq!((got.retry, got.kind), (retry, kind), "{said}");
            assert!(got.to_string().starts_with(said), "{got} vs {said}");
        }
        let t = AwsError::timed_out("DescribeSubnets");
        assert_eq!(
            (t.retry, t.kind, t.to_string().as_str()),
            (Retry::Retryable, ErrorKind::Timeout, "DescribeSubnets: no response: attempt timed out")
        );
    }
}
