//! C ABI (to do)
