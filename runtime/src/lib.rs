//! switchyard: a declarative event runtime.

pub mod broker;
pub mod topology;
