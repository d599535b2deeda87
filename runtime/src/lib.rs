//! switchyard: a declarative event runtime. Manifests describe brokers,
//! exchanges, queues, events, producers and consumers. The runtime
//! provisions the topology, validates events against JSON Schemas and
//! dispatches them to WebAssembly handler components.

pub mod asyncapi;
pub mod broker;
pub mod cases;
pub mod cli;
pub mod dispatch;
pub mod event;
pub mod explain;
pub mod handler;
pub mod ingress;
pub mod manifest;
pub mod reload;
pub mod schema;
pub mod system;
pub mod telemetry;
pub mod topology;
pub mod trace;
