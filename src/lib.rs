//! streamq: a Kubernetes operator that turns Redis Streams into managed work
//! queues and autoscales the workers that consume them.

pub mod api;
pub mod autoscale;
pub mod broker;
pub mod consumer;
pub mod context;
pub mod endpoints;
pub mod guard;
pub mod k8s;
pub mod leader;
pub mod metrics;
pub mod operator;
pub mod problem;
pub mod producer;
pub mod queue;
pub mod redis;
pub mod simulate;
pub mod status_writes;
pub mod telemetry;
pub mod watches;
pub mod worker;
