pub mod cluster;
pub mod secantus;
