//! Server-side apply of objects streamq owns, skipped when nothing changed.
//!
//! A reconcile rebuilds every object it owns each round. Applying an
//! unchanged object is a no-op for etcd but still a write request the
//! apiserver authorizes, admits and diffs, and at a thousand objects a resync
//! of them all is most of the apiserver's load. So each apply is remembered
//! (a hash of what was sent, and the object's version after it) and repeated
//! only when what would be sent differs, or the live object's version (from
//! the watch cache) moved since: someone else changed it, and it is repaired.

use std::{
    collections::HashMap,
    fmt::Debug,
    hash::{DefaultHasher, Hash, Hasher},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// The last apply of each object, by `kind/namespace/name`.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, Remembered>>);

struct Remembered {
    /// A hash of what the object was built from, when the caller gave it (see [`Applied::apply_built`]).
    inputs: Option<u64>,
    sent: [u8; 32],
    /// The object's version right after the apply.
    version: Option<String>,
}

/// Which field tells that someone else changed an object: for most kinds the
/// resourceVersion; for kinds whose status others write (a Deployment),
/// the generation, which only spec changes move.
#[derive(Clone, Copy, Debug)]
pub enum Version {
    ResourceVersion,
    Generation,
}

impl Version {
    pub fn of(self, meta: &ObjectMeta) -> Option<String> {
        match self {
            Self::ResourceVersion => meta.resource_version.clone(),
            Self::Generation => meta.generation.map(|g| g.to_string()),
        }
    }
}

impl Applied {
    /// Applies `obj` unless the same content was applied before and `live`
    /// (the cached object's metadata, if any) is still at the version that
    /// apply left. Returns the applied object, or `None` when skipped.
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        obj: &K,
        live: Option<&ObjectMeta>,
        version: Version,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let key = key::<K>(&obj.namespace().unwrap_or_default(), &obj.name_any());
        self.apply_keyed(api, key, obj, None, live, version).await
    }

    /// As [`Self::apply`], for the object `build` makes from `inputs`: when
    /// the same inputs were applied before and `live` is still at that
    /// version, it is skipped without building, serializing and hashing it.
    /// `inputs` must hold everything `build` reads.
    pub async fn apply_built<K>(
        &self,
        api: &Api<K>,
        (namespace, name): (&str, &str),
        inputs: impl Hash,
        live: Option<&ObjectMeta>,
        version: Version,
        build: impl FnOnce() -> K,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let key = key::<K>(namespace, name);
        let inputs = {
            let mut h = DefaultHasher::new();
            inputs.hash(&mut h);
            h.finish()
        };
        let live_version = live.and_then(|l| version.of(l));
        if let Some(r) = self.0.lock().await.get(&key)
            && r.inputs == Some(inputs)
            && live_version.is_some()
            && r.version == live_version
        {
            return Ok(None);
        }
        // Boxed (see `super::sent`): most calls return above.
        Box::pin(self.apply_keyed(api, key, &build(), Some(inputs), live, version)).await
    }

    async fn apply_keyed<K>(
        &self,
        api: &Api<K>,
        key: String,
        obj: &K,
        inputs: Option<u64>,
        live: Option<&ObjectMeta>,
        version: Version,
    ) -> Result<Option<K>, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + Debug,
    {
        let sent = digest(obj);
        let live_version = live.and_then(|l| version.of(l));
        if let Some(r) = self.0.lock().await.get_mut(&key)
            && r.sent == sent
            && live_version.is_some()
            && r.version == live_version
        {
            r.inputs = inputs;
            return Ok(None);
        }
        let applied = super::apply(api, &obj.name_any(), obj).await?;
        let remembered = Remembered {
            inputs,
            sent,
            version: version.of(applied.meta()),
        };
        self.0.lock().await.insert(key, remembered);
        Ok(Some(applied))
    }
}

fn key<K: Resource<DynamicType = ()>>(namespace: &str, name: &str) -> String {
    format!("{}/{namespace}/{name}", K::kind(&()))
}

fn digest(obj: &impl Serialize) -> [u8; 32] {
    // Serializing a k8s-openapi object cannot fail; an empty digest would only cost one apply.
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    Sha256::digest(bytes).into()
}
