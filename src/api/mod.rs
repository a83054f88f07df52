//! The CRD types: the contract between users and streamq.

mod condition;
mod consumer;
pub mod crdgen;
mod duration;
mod pod_template;
mod queue;
mod refs;

pub use condition::{Condition, ConditionStatus, ConditionType, Reason, find_condition, is_true, merge_conditions};
pub use consumer::{Autoscaling, Consumer, ConsumerSpec, ConsumerStatus, StartFrom};
pub use duration::{Duration, ParseDurationError};
pub use queue::{
    AppendFsync, Broker, DeadLetter, DeletionPolicy, Delivery, ExternalBroker, ManagedBroker, Queue, QueueSpec,
    QueueStatus, Retention, Storage,
};
pub use refs::{LocalRef, SecretKeyRef};

/// The API group of every streamq resource.
pub const GROUP: &str = "streamq.dev";

/// Calls `f` on every JSON object in `value`, outermost first. The CRD
/// generator uses it to post-process generated schemas.
fn for_each_object(value: &mut serde_json::Value, f: &mut impl FnMut(&mut serde_json::Map<String, serde_json::Value>)) {
    match value {
        serde_json::Value::Object(map) => {
            f(map);
            map.values_mut().for_each(|v| for_each_object(v, f));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| for_each_object(v, f)),
        _ => {}
    }
}

/// Reads YAML the way the API server reads JSON: through a JSON value, so
/// enums are one-key maps (`external: {…}`) and numbers and strings convert as
/// they do there. Used for fixtures and files users write.
pub fn from_yaml<T: serde::de::DeserializeOwned>(yaml: &str) -> Result<T, serde_saphyr::Error> {
    let value: serde_json::Value = serde_saphyr::from_str(yaml)?;
    serde_json::from_value(value).map_err(serde::de::Error::custom)
}
