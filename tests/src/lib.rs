pub mod chaos;
pub mod cluster;
pub mod secantus;
