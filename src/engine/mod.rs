//! The engine: models, tokenizers, data, sampling, algorithms and run store. No terminal UI
//! code lives here; the UI talks to the engine only through `events`.

pub mod agreement;
pub mod alerts;
pub mod algo;
pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod events;
pub mod export;
pub mod health;
pub mod judge;
pub mod label_store;
pub mod labels;
pub mod launch;
pub mod model;
pub mod optim;
pub mod reward;
pub mod run;
pub mod sample;
pub mod serve;
pub mod session;
pub mod system;
pub mod tasks;
pub mod tensorboard;
pub mod watch;
