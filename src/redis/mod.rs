//! All Redis I/O of streamq lives under this module: the operator's
//! provisioning and sampling, and the worker runtime's and producer's stream
//! commands.

pub mod acl;
pub mod admin;
pub mod keys;
pub mod pool;
pub mod sampler;
pub mod stream;
