//! The SDK client: built from the shared AWS set-up ([`crate::aws::sdk_config`]), with the start-up
//! self-check log line.

use std::time::Duration;

use aws_sdk_cloudwatch::Client;
use tracing::{error, info};

/// Build the client from the SDK's default chain (env, IRSA web identity, EKS Pod Identity, profile,
/// IMDS) and log the start-up self-check: region, cluster id, credential source, endpoint.
pub(super) async fn build_client(region: Option<String>, cluster_id: &str, namespace: &str, attempt_timeout: Duration) -> Client {
    let sdk = crate::aws::sdk_config(region, attempt_timeout).await;
    let credentials = match sdk.credentials_provider() {
        Some(p) => match aws_credential_source(&p).await {
            Ok(source) => source,
            Err(e) => {
                error!(error = %e, "no AWS credentials yet (IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE; Pod Identity: AWS_CONTAINER_CREDENTIALS_FULL_URI); will retry at each attempt");
                "unresolved".to_owned()
            }
        },
        None => "none".to_owned(),
    };
    info!(
        region = sdk.region().map(|r| r.as_ref()).unwrap_or("unresolved"),
        cluster_id,
        namespace,
        credentials = %credentials,
        endpoint = std::env::var("AWS_ENDPOINT_URL").as_deref().unwrap_or("default"),
        "CloudWatch sink ready"
    );
    if sdk.region().is_none() {
        error!("no AWS region: set AWS_REGION (or --region); agents did not report one and the SDK chain found none");
    }
    Client::new(&sdk)
}

/// The name of the provider that supplied the credentials (from their redacted Debug form).
async fn aws_credential_source(p: &aws_credential_types::provider::SharedCredentialsProvider) -> Result<String, String> {
    use aws_credential_types::provider::ProvideCredentials;
    let creds = p.provide_credentials().await.map_err(|e| format!("{}", aws_sdk_cloudwatch::error::DisplayErrorContext(&e)))?;
    let dbg = format!("{creds:?}");
    Ok(dbg.split("provider_name: \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("unknown").to_owned())
}
