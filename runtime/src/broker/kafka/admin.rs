//! Topic administration: create, add partitions, read configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

use crate::broker::BrokerError;
use crate::topology::TopicSpec;

/// How long the cluster may take to apply an admin request.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

fn admin_options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(OPERATION_TIMEOUT))
        .request_timeout(Some(OPERATION_TIMEOUT))
}

/// Creates a topic; one that already exists counts as created, because
/// another replica may have created it a moment earlier.
pub(super) async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
) -> Result<(), BrokerError> {
    let mut topic = NewTopic::new(
        &spec.name,
        spec.partitions,
        TopicReplication::Fixed(spec.replication_factor),
    );
    for (key, value) in &spec.config {
        topic = topic.set(key, value);
    }
    let results = admin
        .create_topics([&topic], &admin_options())
        .await
        .map_err(|err| admin_error(&spec.name, "create", err.to_string()))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(admin_error(&spec.name, "create", code.to_string())),
        }
    }
    tracing::info!(topic = %spec.name, partitions = spec.partitions,
        replication_factor = spec.replication_factor, "topic created");
    Ok(())
}

/// Raises a topic's partition count to `spec.partitions`.
pub(super) async fn add_partitions(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
) -> Result<(), BrokerError> {
    let count = usize::try_from(spec.partitions).unwrap_or(1);
    let partitions = NewPartitions::new(&spec.name, count);
    let results = admin
        .create_partitions([&partitions], &admin_options())
        .await
        .map_err(|err| admin_error(&spec.name, "add partitions to", err.to_string()))?;
    for result in results {
        if let Err((_, code)) = result {
            return Err(admin_error(
                &spec.name,
                "add partitions to",
                code.to_string(),
            ));
        }
    }
    Ok(())
}

/// Returns the current values of the configuration keys named in `spec`;
/// a key the broker does not report is left out.
pub(super) async fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    spec: &TopicSpec,
) -> Result<BTreeMap<String, String>, BrokerError> {
    if spec.config.is_empty() {
        return Ok(BTreeMap::new());
    }
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &admin_options())
        .await
        .map_err(|err| admin_error(&spec.name, "read the configuration of", err.to_string()))?;
    let mut config = BTreeMap::new();
    for result in results {
        let resource = result.map_err(|code| {
            admin_error(&spec.name, "read the configuration of", code.to_string())
        })?;
        for entry in resource.entries {
            if spec.config.contains_key(&entry.name)
                && let Some(value) = entry.value
            {
                config.insert(entry.name, value);
            }
        }
    }
    Ok(config)
}

fn admin_error(topic: &str, action: &str, reason: String) -> BrokerError {
    BrokerError::Protocol(format!("cannot {action} topic `{topic}`: {reason}"))
}
