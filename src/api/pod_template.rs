//! The schema of `Consumer.spec.template`.
//!
//! The full PodTemplateSpec schema, with its descriptions, is far larger than
//! the 256 KiB that client-side `kubectl apply` can store in its
//! last-applied annotation. We keep the full structure, so the API server
//! still validates and prunes the template like a Deployment's, and drop the
//! descriptions below the template itself (`kubectl explain pod.spec` has them).

use schemars::{Schema, SchemaGenerator};
use serde_json::Value;

pub(crate) fn schema(generator: &mut SchemaGenerator) -> Schema {
    let mut value = Value::from(generator.subschema_for::<k8s_openapi::api::core::v1::PodTemplateSpec>());
    // A property may itself be called "description" (a string field in some
    // API type); only the keyword, a string value, is dropped.
    super::for_each_object(&mut value, &mut |map| {
        if map.get("description").is_some_and(Value::is_string) {
            map.remove("description");
        }
    });
    let mut schema = Schema::try_from(value).expect("a schema object stays a schema object");
    schema.insert(
        "description".into(),
        "The worker pods, as in a Deployment's template. streamq adds the labels it selects on \
         and the STREAMQ_* environment variables to every container that does not set them; \
         it changes nothing else. See `kubectl explain pod.spec` for the fields."
            .into(),
    );
    schema
}
