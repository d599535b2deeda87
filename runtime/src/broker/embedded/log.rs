//! Kafka-like topics of the embedded broker: partitioned logs that keep
//! every record, and consumer groups with committed positions.
//!
//! Differences from Kafka that a caller could notice:
//! - A group member takes every partition that no other member of its group
//!   holds when it subscribes or reads, and keeps it until it closes, so a
//!   second member only gets partitions once the first one leaves. There is
//!   no rebalance that moves partitions between running members.
//! - Nothing is ever deleted: retention and compaction settings are stored
//!   and reported but have no effect.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::broker::{BrokerError, Message, Record, SubscribeOptions, TopicReader};
use crate::topology::{TopicSpec, TopicState};

/// The topics of one embedded broker.
#[derive(Default)]
pub(super) struct Topics {
    state: Mutex<TopicsState>,
    /// Woken on every append and whenever a member releases partitions.
    changed: Notify,
}

#[derive(Default)]
struct TopicsState {
    topics: BTreeMap<String, Topic>,
    next_member: u64,
}

struct Topic {
    config: BTreeMap<String, String>,
    partitions: Vec<Vec<Message>>,
    /// Partition of the next record without a key.
    next_partition: usize,
    groups: HashMap<String, Group>,
}

#[derive(Default)]
struct Group {
    /// Position of the next record to read, by partition.
    committed: Vec<i64>,
    /// Member that owns each partition.
    owners: Vec<Option<u64>>,
}

impl Topics {
    fn lock(&self) -> MutexGuard<'_, TopicsState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn create(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        let mut state = self.lock();
        if state.topics.contains_key(&spec.name) {
            return Err(BrokerError::Conflict(format!(
                "topic `{}` exists already",
                spec.name
            )));
        }
        let count = usize::try_from(spec.partitions.max(1)).unwrap_or(1);
        state.topics.insert(
            spec.name.clone(),
            Topic {
                config: spec.config.clone(),
                partitions: vec![Vec::new(); count],
                next_partition: 0,
                groups: HashMap::new(),
            },
        );
        Ok(())
    }

    pub(super) fn add_partitions(&self, spec: &TopicSpec) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let topic = find(&mut state, &spec.name)?;
        let count = usize::try_from(spec.partitions).unwrap_or(0);
        if count > topic.partitions.len() {
            topic.partitions.resize(count, Vec::new());
        }
        Ok(())
    }

    pub(super) fn describe(&self, spec: &TopicSpec) -> Option<TopicState> {
        let state = self.lock();
        let topic = state.topics.get(&spec.name)?;
        Some(TopicState {
            partitions: i32::try_from(topic.partitions.len()).unwrap_or(i32::MAX),
            config: topic
                .config
                .iter()
                .filter(|(key, _)| spec.config.contains_key(*key))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
        })
    }

    /// Appends a record: a keyed record to the partition of its key's hash,
    /// one without a key to the partitions in turn.
    pub(super) fn append(&self, name: &str, message: Message) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let topic = find(&mut state, name)?;
        let count = topic.partitions.len();
        let partition = match &message.key {
            Some(key) => {
                let mut hasher = std::hash::DefaultHasher::new();
                key.hash(&mut hasher);
                (hasher.finish() % count as u64) as usize
            }
            None => {
                topic.next_partition = (topic.next_partition + 1) % count;
                topic.next_partition
            }
        };
        topic.partitions[partition].push(message);
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    pub(super) fn subscribe(
        self: &Arc<Self>,
        name: &str,
        options: &SubscribeOptions,
    ) -> Result<Box<dyn TopicReader>, BrokerError> {
        let mut state = self.lock();
        state.next_member += 1;
        let member = state.next_member;
        find(&mut state, name)?;
        Ok(Box::new(EmbeddedReader {
            topics: self.clone(),
            topic: name.to_owned(),
            group: options.group.clone(),
            member,
            positions: BTreeMap::new(),
            turn: 0,
        }))
    }
}

fn find<'a>(state: &'a mut TopicsState, name: &str) -> Result<&'a mut Topic, BrokerError> {
    state
        .topics
        .get_mut(name)
        .ok_or_else(|| BrokerError::NotFound {
            kind: "topic",
            name: name.to_owned(),
        })
}

/// A group member. It reads its partitions in turn, one record each.
struct EmbeddedReader {
    topics: Arc<Topics>,
    topic: String,
    group: String,
    member: u64,
    /// Position of the next record to read in each partition it holds.
    positions: BTreeMap<usize, i64>,
    /// Index into `positions` of the partition to read first next time.
    turn: usize,
}

impl EmbeddedReader {
    /// Takes free partitions, then returns the next record of a held
    /// partition, or `None` when all of them are read to the end.
    fn poll(&mut self) -> Result<Option<Record>, BrokerError> {
        let mut state = self.topics.lock();
        let topic = find(&mut state, &self.topic)?;
        let count = topic.partitions.len();
        let group = topic.groups.entry(self.group.clone()).or_default();
        group.committed.resize(count, 0);
        group.owners.resize(count, None);
        for (partition, owner) in group.owners.iter_mut().enumerate() {
            if owner.is_none() {
                *owner = Some(self.member);
                self.positions.insert(partition, group.committed[partition]);
            }
        }

        let held: Vec<usize> = self.positions.keys().copied().collect();
        for step in 0..held.len() {
            let partition = held[(self.turn + step) % held.len()];
            let position = self.positions[&partition];
            let log = &topic.partitions[partition];
            if let Some(message) = usize::try_from(position).ok().and_then(|i| log.get(i)) {
                self.turn = (self.turn + step + 1) % held.len();
                self.positions.insert(partition, position + 1);
                return Ok(Some(Record {
                    topic: self.topic.clone(),
                    partition: i32::try_from(partition).unwrap_or(i32::MAX),
                    offset: position,
                    message: message.clone(),
                }));
            }
        }
        Ok(None)
    }

    fn release(&mut self) {
        let mut state = self.topics.lock();
        if let Some(group) = state
            .topics
            .get_mut(&self.topic)
            .and_then(|topic| topic.groups.get_mut(&self.group))
        {
            for owner in &mut group.owners {
                if *owner == Some(self.member) {
                    *owner = None;
                }
            }
        }
        self.positions.clear();
        drop(state);
        self.topics.changed.notify_waiters();
    }
}

#[async_trait]
impl TopicReader for EmbeddedReader {
    async fn next(&mut self) -> Result<Record, BrokerError> {
        let topics = self.topics.clone();
        loop {
            let changed = topics.changed.notified();
            tokio::pin!(changed);
            // Registers for the wake-up before looking, so an append
            // between the look and the wait is not missed.
            changed.as_mut().enable();
            if let Some(record) = self.poll()? {
                return Ok(record);
            }
            changed.await;
        }
    }

    fn commit(&mut self, record: &Record) -> Result<(), BrokerError> {
        let mut state = self.topics.lock();
        let topic = find(&mut state, &self.topic)?;
        let group = topic.groups.entry(self.group.clone()).or_default();
        let partition = usize::try_from(record.partition).unwrap_or(usize::MAX);
        if let Some(committed) = group.committed.get_mut(partition) {
            *committed = (*committed).max(record.offset + 1);
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) {
        self.release();
    }
}

impl Drop for EmbeddedReader {
    fn drop(&mut self) {
        if !self.positions.is_empty() {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;

    fn spec(name: &str, partitions: i32) -> TopicSpec {
        TopicSpec {
            name: name.to_owned(),
            partitions,
            replication_factor: 1,
            config: BTreeMap::from([("retention.ms".to_owned(), "1000".to_owned())]),
        }
    }

    fn options(group: &str) -> SubscribeOptions {
        SubscribeOptions {
            group: group.to_owned(),
            client_id: "test".to_owned(),
            max_poll_interval: Duration::from_secs(300),
        }
    }

    fn record(key: Option<&str>, body: &str) -> Message {
        Message {
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            body: Bytes::copy_from_slice(body.as_bytes()),
            ..Message::default()
        }
    }

    async fn next(reader: &mut Box<dyn TopicReader>) -> Record {
        tokio::time::timeout(Duration::from_secs(1), reader.next())
            .await
            .expect("a record within a second")
            .expect("reading succeeds")
    }

    #[tokio::test]
    async fn same_key_same_partition_in_order() {
        let topics = Arc::new(Topics::default());
        topics.create(&spec("t", 4)).unwrap();
        for n in 0..6 {
            topics
                .append("t", record(Some("customer-1"), &n.to_string()))
                .unwrap();
        }
        let mut reader = topics.subscribe("t", &options("g")).unwrap();
        let mut partitions = BTreeSet::new();
        for n in 0..6 {
            let record = next(&mut reader).await;
            assert_eq!(record.message.body, n.to_string());
            assert_eq!(record.offset, n);
            partitions.insert(record.partition);
        }
        assert_eq!(partitions.len(), 1);
    }

    #[tokio::test]
    async fn uncommitted_records_read_again_after_close() {
        let topics = Arc::new(Topics::default());
        topics.create(&spec("t", 1)).unwrap();
        for body in ["a", "b", "c"] {
            topics.append("t", record(None, body)).unwrap();
        }
        let mut first = topics.subscribe("t", &options("g")).unwrap();
        let a = next(&mut first).await;
        first.commit(&a).unwrap();
        let _b = next(&mut first).await;
        first.close().await;

        let mut second = topics.subscribe("t", &options("g")).unwrap();
        assert_eq!(next(&mut second).await.message.body, "b");
        assert_eq!(next(&mut second).await.message.body, "c");

        // Another group starts from the beginning.
        let mut other = topics.subscribe("t", &options("other")).unwrap();
        assert_eq!(next(&mut other).await.message.body, "a");
    }

    #[tokio::test]
    async fn second_member_waits_for_partitions() {
        let topics = Arc::new(Topics::default());
        topics.create(&spec("t", 1)).unwrap();
        topics.append("t", record(None, "a")).unwrap();
        let mut first = topics.subscribe("t", &options("g")).unwrap();
        assert_eq!(next(&mut first).await.message.body, "a");
        let mut second = topics.subscribe("t", &options("g")).unwrap();
        topics.append("t", record(None, "b")).unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(100), second.next()).await;
        assert!(waited.is_err(), "the partition is held by the first member");
        assert_eq!(next(&mut first).await.message.body, "b");
    }

    #[tokio::test]
    async fn waiting_reader_wakes_on_append() {
        let topics = Arc::new(Topics::default());
        topics.create(&spec("t", 2)).unwrap();
        let mut reader = topics.subscribe("t", &options("g")).unwrap();
        let appender = topics.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            appender.append("t", record(None, "late")).unwrap();
        });
        assert_eq!(next(&mut reader).await.message.body, "late");
    }

    #[test]
    fn describe_reports_partitions_and_asked_config() {
        let topics = Topics::default();
        assert_eq!(topics.describe(&spec("t", 2)), None);
        topics.create(&spec("t", 2)).unwrap();
        topics.add_partitions(&spec("t", 5)).unwrap();
        let state = topics.describe(&spec("t", 5)).unwrap();
        assert_eq!(state.partitions, 5);
        assert_eq!(state.config["retention.ms"], "1000");
        assert!(matches!(
            topics.append("missing", record(None, "x")),
            Err(BrokerError::NotFound { kind: "topic", .. })
        ));
    }
}
