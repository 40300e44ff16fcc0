//! What an operator has to fix when CloudWatch keeps refusing the aggregator's requests (a healing error,
//! see [`crate::aws::retry`]): logged once per state change and shown by `/readyz`.

use crate::aws::ErrorKind;

/// What an operator has to fix for a healing error (logged and shown by `/readyz`).
pub fn heal_hint(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::AccessDenied => {
            "CloudWatch refuses the aggregator's credentials: grant cloudwatch:PutMetricData (deploy/iam-policy.json) to the role the \
             aggregator runs as, and check the IRSA annotation (eks.amazonaws.com/role-arn) on its ServiceAccount or its EKS Pod \
             Identity association"
        }
        ErrorKind::ExpiredCredentials => {
            "the aggregator's AWS credentials expired and were not refreshed: check the projected IRSA token or the Pod Identity \
             agent, and the role's trust policy"
        }
        ErrorKind::ClockSkew => {
            "CloudWatch says the request is expired or its signature does not match: check the node's clock (NTP) and the credentials"
        }
        _ => "CloudWatch refuses every request with an error that names no datum: see the error logged with it",
    }
}
