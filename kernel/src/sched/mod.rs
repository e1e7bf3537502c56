//! Kernel threads and their scheduler (in progress: only the locks so far).

pub mod lock;
