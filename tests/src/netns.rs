//! The namespaces the tests run in: connwatch's own (the demo uses the same).

pub use connwatch::demo::netns::{Netns, Topology, ip};
