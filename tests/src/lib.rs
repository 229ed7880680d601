pub mod bench;
pub mod chaos;
pub mod cluster;
pub mod docker;
pub mod harness;
pub mod secantus;
