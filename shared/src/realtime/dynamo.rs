//! The connection registry in DynamoDB (`CONNECTIONS_TABLE`), as deployed by
//! `template.yaml`.
//!
//! One item per connection, keyed by `connectionId`, with two global secondary
//! indexes: `byDepartment` (partition `departmentKey` = `<business>#<department>`) and
//! `byAgent` (partition `agentKey` = `<business>#<agent>`). `expiresAt` holds epoch
//! seconds and is the table's TTL attribute. DynamoDB deletes expired items late and
//! index reads are eventually consistent, so every read filters on `expiresAtMs`.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::registry::{Connection, ConnectionRegistry, RegistryError};

/// The department index.
pub const BY_DEPARTMENT: &str = "byDepartment";
/// The agent index.
pub const BY_AGENT: &str = "byAgent";
/// The TTL attribute (epoch seconds).
pub const TTL_ATTRIBUTE: &str = "expiresAt";

/// Connections in a DynamoDB table.
#[derive(Clone)]
pub struct DynamoConnections {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoConnections {
    /// Connections in `table`, through `client`.
    pub fn new(client: Client, table: impl Into<String>) -> DynamoConnections {
        DynamoConnections {
            client,
            table: table.into(),
        }
    }

    /// A client from the standard AWS environment (region, credentials and
    /// `AWS_ENDPOINT_URL`).
    pub async fn from_env(table: impl Into<String>) -> DynamoConnections {
        let config = crate::aws::sdk_config().await;
        DynamoConnections::new(Client::new(&config), table)
    }

    /// Creates the table as `template.yaml` does, with its TTL. For tests and local
    /// emulators; a deployment gets its table from the template.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), RegistryError> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
            Projection, ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
        };
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(failed)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(failed)
        };
        let index = |name: &str, partition: &str| -> Result<GlobalSecondaryIndex, RegistryError> {
            GlobalSecondaryIndex::builder()
                .index_name(name)
                .key_schema(key(partition, KeyType::Hash)?)
                .key_schema(key("connectionId", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(failed)
        };
        client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("connectionId")?)
            .attribute_definitions(attribute("departmentKey")?)
            .attribute_definitions(attribute("agentKey")?)
            .key_schema(key("connectionId", KeyType::Hash)?)
            .global_secondary_indexes(index(BY_DEPARTMENT, "departmentKey")?)
            .global_secondary_indexes(index(BY_AGENT, "agentKey")?)
            .send()
            .await
            .map_err(failed)?;
        client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(TTL_ATTRIBUTE)
                    .enabled(true)
                    .build()
                    .map_err(failed)?,
            )
            .send()
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn query(
        &self,
        index: &str,
        partition: &str,
        value: String,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError> {
        let items: Vec<Item> = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(index)
            .key_condition_expression("#k = :k")
            .filter_expression("expiresAtMs > :now")
            .expression_attribute_names("#k", partition)
            .expression_attribute_values(":k", AttributeValue::S(value))
            .expression_attribute_values(":now", AttributeValue::N(now_ms.to_string()))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(failed)?;
        items.iter().map(from_item).collect()
    }
}

fn failed(err: impl std::error::Error) -> RegistryError {
    RegistryError(crate::error::chain(&err))
}

fn to_item(connection: &Connection) -> Item {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: i64| AttributeValue::N(v.to_string());
    HashMap::from([
        ("connectionId".into(), s(&connection.connection_id)),
        ("businessId".into(), s(&connection.business_id)),
        ("agentId".into(), s(&connection.agent_id)),
        ("department".into(), s(&connection.department)),
        ("credentialId".into(), s(&connection.credential_id)),
        (
            "departmentKey".into(),
            s(&format!(
                "{}#{}",
                connection.business_id, connection.department
            )),
        ),
        (
            "agentKey".into(),
            s(&format!(
                "{}#{}",
                connection.business_id, connection.agent_id
            )),
        ),
        ("connectedAt".into(), n(connection.connected_at_ms)),
        ("expiresAtMs".into(), n(connection.expires_at_ms)),
        (
            TTL_ATTRIBUTE.into(),
            n(connection.expires_at_ms.div_euclid(1000) + 1),
        ),
    ])
}

fn from_item(item: &Item) -> Result<Connection, RegistryError> {
    let s = |name: &str| match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(RegistryError(format!("an item lacks {name}"))),
    };
    let n = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map_err(|_| RegistryError(format!("an item's {name} is not a number"))),
        _ => Err(RegistryError(format!("an item lacks {name}"))),
    };
    Ok(Connection {
        connection_id: s("connectionId")?,
        business_id: s("businessId")?,
        agent_id: s("agentId")?,
        department: s("department")?,
        credential_id: s("credentialId")?,
        connected_at_ms: n("connectedAt")?,
        expires_at_ms: n("expiresAtMs")?,
    })
}

#[async_trait]
impl ConnectionRegistry for DynamoConnections {
    async fn register(&self, connection: &Connection) -> Result<(), RegistryError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(connection)))
            .send()
            .await
            .map_err(failed)?;
        Ok(())
    }

    async fn unregister(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("connectionId", AttributeValue::S(connection_id.to_owned()))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(failed)?;
        deleted.attributes.as_ref().map(from_item).transpose()
    }

    async fn get(
        &self,
        connection_id: &str,
        now_ms: i64,
    ) -> Result<Option<Connection>, RegistryError> {
        let found = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("connectionId", AttributeValue::S(connection_id.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(failed)?;
        Ok(found
            .item
            .as_ref()
            .map(from_item)
            .transpose()?
            .filter(|c| c.expires_at_ms > now_ms))
    }

    async fn renew(&self, connection_id: &str, expires_at_ms: i64) -> Result<bool, RegistryError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("connectionId", AttributeValue::S(connection_id.to_owned()))
            .update_expression("SET expiresAtMs = :ms, #ttl = :s")
            .condition_expression("attribute_exists(connectionId)")
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":ms", AttributeValue::N(expires_at_ms.to_string()))
            .expression_attribute_values(
                ":s",
                AttributeValue::N((expires_at_ms.div_euclid(1000) + 1).to_string()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(err) => Err(failed(err)),
        }
    }

    async fn in_department(
        &self,
        business_id: &str,
        department: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError> {
        self.query(
            BY_DEPARTMENT,
            "departmentKey",
            format!("{business_id}#{department}"),
            now_ms,
        )
        .await
    }

    async fn of_agent(
        &self,
        business_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError> {
        self.query(
            BY_AGENT,
            "agentKey",
            format!("{business_id}#{agent_id}"),
            now_ms,
        )
        .await
    }
}
