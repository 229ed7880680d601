pub mod election;
pub mod store;
