//! The one harness of the integration tests, a module per subject. Every
//! test binary compiles it whole (`mod support;`) and uses a part of it.
//!
//! The tests run against the real local control plane and redis-server that
//! `tests/cluster/up` starts; each test gets a namespace of its own
//! ([`TestEnv`]). A missing cluster is a failure, never a skip: `make test`
//! starts it, and `eval "$(tests/cluster/up)"` does so for a shell.
#![allow(dead_code)] // each test binary uses a different part of the harness

// What most tests use, also at the root: `use support::*`.
pub mod api;
pub mod env;
pub mod kubectl;
pub mod objects;
pub mod operator;
pub mod process;
pub mod redis_client;
pub mod wait;

// Tools of particular tests, by path.
pub mod apiserver;
pub mod audit;
pub mod chart;
pub mod closed_loop;
pub mod deliveries;
pub mod fake_redis;
pub mod kubelet;
pub mod load;
pub mod real_node;
pub mod redis_queue;
pub mod redis_server;
pub mod scale;

#[allow(unused_imports)] // a binary that uses none of a module's items
pub use {api::*, env::*, kubectl::*, objects::*, operator::*, process::*, redis_client::*, wait::*};
