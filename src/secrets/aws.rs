//! AWS Secrets Manager source. (Being implemented.)

use super::{SecretRef, SecretSource, SecretValue, SourceError};

/// AWS Secrets Manager.
#[derive(Debug)]
pub struct AwsSecretsManager {}

impl SecretSource for AwsSecretsManager {
    fn kind(&self) -> &'static str {
        "aws_secrets_manager"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        Err(SourceError::Unavailable {
            id: secret.id.clone(),
            message: "not implemented".into(),
        })
    }
}

impl AwsSecretsManager {
    /// Wraps a client.
    pub fn from_client(_client: aws_sdk_secretsmanager::Client) -> Self {
        AwsSecretsManager {}
    }
}
