//! Server-side apply of objects streamq owns, skipped when nothing changed.
//!
//! A reconcile rebuilds every object it owns each round. Applying an
//! unchanged object is a no-op for etcd but still a write request the
//! apiserver authorizes, admits and diffs, and at a thousand objects a resync
//! of them all is most of the apiserver's load. So each apply is remembered
//! (a hash of what was sent, and the object's version after it) and repeated
//! only when what would be sent differs, or the live object's version (from
//! the watch cache) moved since: someone else changed it, and it is repaired.

use std::{collections::HashMap, fmt::Debug};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

/// The last apply of each object, by `kind/namespace/name`.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, Remembered>>);

struct Remembered {
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
        let name = obj.name_any();
        let key = format!("{}/{}/{name}", K::kind(&()), obj.namespace().unwrap_or_default());
        let sent = digest(obj);
        let live_version = live.and_then(|l| version.of(l));
        if let Some(r) = self.0.lock().await.get(&key)
            && r.sent == sent
            && live_version.is_some()
            && r.version == live_version
        {
            return Ok(None);
        }
        let applied = super::apply(api, &name, obj).await?;
        let remembered = Remembered {
            sent,
            version: version.of(applied.meta()),
        };
        self.0.lock().await.insert(key, remembered);
        Ok(Some(applied))
    }
}

fn digest(obj: &impl Serialize) -> [u8; 32] {
    // Serializing a k8s-openapi object cannot fail; an empty digest would only cost one apply.
    let bytes = serde_json::to_vec(obj).unwrap_or_default();
    Sha256::digest(bytes).into()
}
