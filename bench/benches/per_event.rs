//! Per-event cost of the consume pipeline for a 1 KiB `order.placed` event
//! and the no-op guest: decode, schema validation, the handler call, the
//! metrics bookkeeping that dispatch does around each event, and all four in
//! sequence. Task spawning, the concurrency semaphore and the broker's ack
//! are not included. `handler_call` runs on a kept instance, as most calls
//! in dispatch do. `handler_call_fresh` makes a store and instance for each
//! call (`calls_per_instance = 1`).
//!
//! Run with `cargo bench -p switchyard-bench --bench per_event`.

// The fixture's unit tests compile here too but never run, because this
// target has no test harness, so their imports are unused.
#[allow(unused_imports)]
#[path = "../src/fixture.rs"]
mod fixture;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::broker::Message;
use switchyard::event::{self, Event};
use switchyard::handler::{CallContext, HandlerHost, Limits, LoadedHandler};
use switchyard::schema::Schemas;
use switchyard::{system, telemetry};

const CONSUMER: &str = "pipeline";

struct Fixture {
    message: Message,
    event: Event,
    schemas: Schemas,
    host: HandlerHost,
    handler: LoadedHandler,
    context: CallContext,
    fresh_context: CallContext,
}

fn fixture() -> Fixture {
    let root: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = root.join("bench/manifests/pipeline.toml");
    let (_, schemas) = system::load_for_run(&[manifest]).expect("pipeline.toml loads");
    let host = HandlerHost::new().expect("the wasm engine starts");
    let handler = host
        .load_file(&root.join("bench/guests/noop.wasm"))
        .expect("the no-op guest loads");
    let context = CallContext {
        consumer: Arc::from(CONSUMER),
        config: Arc::new(BTreeMap::new()),
        schemas: schemas.clone(),
        limits: Limits {
            timeout: Duration::from_secs(2),
            memory: 64 * 1024 * 1024,
            emit_size: 1024 * 1024,
            calls_per_instance: u32::MAX,
        },
        grants: Arc::default(),
    };
    let mut fresh_context = context.clone();
    fresh_context.consumer = Arc::from("pipeline-fresh");
    fresh_context.limits.calls_per_instance = 1;
    let message = Message {
        routing_key: CONSUMER.to_owned(),
        content_type: Some("application/json".to_owned()),
        body: bytes::Bytes::from(fixture::legacy_order_event(1024)),
        ..Message::default()
    };
    let event = event::decode(&message).expect("the fixture decodes");
    Fixture {
        message,
        event,
        schemas,
        host,
        handler,
        context,
        fresh_context,
    }
}

/// The metrics dispatch records for one event: the in-flight gauge, the
/// handler duration histogram and the outcome counter.
fn bookkeeping(started: Instant) {
    metrics::gauge!(telemetry::EVENTS_IN_FLIGHT, "consumer" => CONSUMER.to_string()).increment(1.0);
    metrics::histogram!(telemetry::HANDLER_DURATION, "consumer" => CONSUMER.to_string())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(telemetry::EVENTS_HANDLED, "consumer" => CONSUMER.to_string(), "outcome" => "ok")
        .increment(1);
    metrics::gauge!(telemetry::EVENTS_IN_FLIGHT, "consumer" => CONSUMER.to_string()).decrement(1.0);
}

fn per_event(c: &mut Criterion) {
    let _recorder = telemetry::init_metrics().expect("the metrics recorder installs");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    let f = fixture();
    let mut group = c.benchmark_group("per_event");

    group.bench_function("decode", |b| {
        b.iter(|| event::decode(black_box(&f.message)).expect("decodes"))
    });
    group.bench_function("validate", |b| {
        b.iter(|| {
            f.schemas
                .validate(black_box("order.placed"), black_box(&f.event.data))
                .expect("valid")
        })
    });
    group.bench_function("handler_call", |b| {
        b.to_async(&runtime).iter(|| async {
            f.host
                .call(&f.handler, &f.context, black_box(&f.event), 1)
                .await
                .expect("the no-op guest returns ok")
        })
    });
    group.bench_function("handler_call_fresh", |b| {
        b.to_async(&runtime).iter(|| async {
            f.host
                .call(&f.handler, &f.fresh_context, black_box(&f.event), 1)
                .await
                .expect("the no-op guest returns ok")
        })
    });
    group.bench_function("bookkeeping", |b| b.iter(|| bookkeeping(Instant::now())));
    group.bench_function("total", |b| {
        b.to_async(&runtime).iter(|| async {
            let event = event::decode(black_box(&f.message)).expect("decodes");
            f.schemas
                .validate(&event.event_type, &event.data)
                .expect("valid");
            let started = Instant::now();
            let emitted = f
                .host
                .call(&f.handler, &f.context, &event, 1)
                .await
                .expect("the no-op guest returns ok");
            bookkeeping(started);
            emitted
        })
    });
    group.finish();
}

criterion_group!(benches, per_event);
criterion_main!(benches);
