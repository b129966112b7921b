//! LockStock control plane.
