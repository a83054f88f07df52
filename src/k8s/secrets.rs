//! Reading Secrets without asking the apiserver every round.
//!
//! Secrets are watched as metadata only, so their data never sits in a watch
//! cache. The few Secrets streamq reads (a broker URL, the passwords it
//! generated) are read with a GET once and kept with their resourceVersion;
//! they are read again only when the metadata watch shows a newer one. A
//! rotated URL is therefore picked up as soon as the watch delivers it.

use std::{collections::HashMap, sync::Arc};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::sync::Mutex;

pub struct SecretReader {
    metadata: Store<PartialObjectMeta<Secret>>,
    /// `namespace/name` → the Secret as last read.
    read: Mutex<HashMap<String, Arc<Secret>>>,
}

impl SecretReader {
    pub fn new(metadata: Store<PartialObjectMeta<Secret>>) -> Self {
        Self {
            metadata,
            read: Mutex::default(),
        }
    }

    /// Secret `ns/name`, or `None` when it does not exist.
    pub async fn get(&self, client: &Client, ns: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = format!("{ns}/{name}");
        let watched = self.watched(ns, name);
        if let Some(watched) = &watched
            && let Some(read) = self.read.lock().await.get(&key)
            && read.resource_version() == watched.resource_version()
        {
            return Ok(Some(read.clone()));
        }
        let secret = super::sent(Api::<Secret>::namespaced(client.clone(), ns).get_opt(name)).await?;
        let mut read = self.read.lock().await;
        match secret {
            Some(mut secret) => {
                super::cache::strip_metadata(&mut secret);
                let secret = Arc::new(secret);
                read.insert(key, secret.clone());
                Ok(Some(secret))
            }
            None => {
                read.remove(&key);
                Ok(None)
            }
        }
    }

    /// The watch's view of Secret `ns/name`: its metadata only.
    pub fn watched(&self, ns: &str, name: &str) -> Option<Arc<PartialObjectMeta<Secret>>> {
        self.metadata.get(&ObjectRef::new(name).within(ns))
    }
}
