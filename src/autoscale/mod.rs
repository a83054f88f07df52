//! The autoscaler: pure, no I/O, no clock reads. Samples in, `(desired
//! replicas, reason)` out. The operator and `streamq simulate` call this same code.
