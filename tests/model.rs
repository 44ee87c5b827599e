//! Whole models through the library: training, weights in PyTorch
//! layouts, and concurrent use.

mod common;

#[path = "model/data_parallel.rs"]
mod data_parallel;
#[path = "model/graphs.rs"]
mod graphs;
#[path = "model/smoke_cnn.rs"]
mod smoke_cnn;
#[path = "model/stress.rs"]
mod stress;
#[path = "model/text.rs"]
mod text;
#[path = "model/train_mnist.rs"]
mod train_mnist;
#[path = "model/weights.rs"]
mod weights;
