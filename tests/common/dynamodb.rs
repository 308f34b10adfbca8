//! DynamoDB on the moto server of `tests/common/moto.rs`: a client and the state table as
//! deploy/aws/state-table.yaml creates it (`pk`/`sk` string keys).

use aws_sdk_dynamodb::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType},
};
use qlik_rotator::state::dynamodb::{default_retry_config, default_timeout_config};

/// A DynamoDB client for any endpoint (moto, or a closed port), with static test credentials
/// and the backend's production timeouts and retry policy.
pub fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .timeout_config(default_timeout_config())
        .retry_config(default_retry_config())
        .build();
    Client::from_conf(config)
}

/// Creates `table` with the given (name, key type) key schema, all string attributes.
pub async fn create_table_with(client: &Client, table: &str, keys: &[(&str, KeyType)]) {
    let mut req = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest);
    for (name, kind) in keys {
        req = req
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(*name)
                    .key_type(kind.clone())
                    .build()
                    .expect("key schema element"),
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(*name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attribute definition"),
            );
    }
    req.send().await.expect("CreateTable");
}

/// Creates the state table (`pk` hash, `sk` range).
pub async fn create_state_table(client: &Client, table: &str) {
    create_table_with(
        client,
        table,
        &[("pk", KeyType::Hash), ("sk", KeyType::Range)],
    )
    .await;
}
